"""Every template's exact text and its trained mask: only assistant text + EOS, in every turn."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a fruit"},
    {"role": "assistant", "content": "A plum."},
]


@pytest.fixture(scope="module")
def tok(shared_cache):
    from transformers import AutoTokenizer

    from jobs.tiny import ensure_tiny

    return AutoTokenizer.from_pretrained(ensure_tiny(shared_cache))


EXPECTED = {
    "plain": "Be brief. Hi there\nHello!</s>Name a fruit\nA plum.</s>",
    "llama2-chat": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! </s><s>[INST] Name a fruit [/INST] A plum. </s>",
    "mistral-inst": "<s>[INST] Be brief.\n\nHi there [/INST] Hello!</s>[INST] Name a fruit [/INST] A plum.</s>",
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    "Hello!<|im_end|></s>\n<|im_start|>user\nName a fruit<|im_end|>\n<|im_start|>assistant\nA plum.<|im_end|></s>\n",
}


@pytest.mark.parametrize("template", ["plain", "llama2-chat", "mistral-inst", "chatml", "tokenizer"])
def test_rendering_and_mask(tok, template):
    from jobs.templates import render

    ids, mask = render(CONV, template, tok)
    assert len(ids) == len(mask)
    text = tok.decode(ids)
    if template in EXPECTED:
        assert text == EXPECTED[template]
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    # Both assistant turns are trained, each closed by a trained EOS; nothing of the prompts is.
    assert "Hello!" in trained and "A plum." in trained
    assert trained.count("</s>") == 2
    assert "Hi there" not in trained and "Name a fruit" not in trained and "Be brief" not in trained
    eos_pos = [i for i, t in enumerate(ids) if t == tok.eos_token_id]
    assert len(eos_pos) == 2 and all(mask[i] for i in eos_pos)


def test_loss_all_trains_everything(tok):
    from jobs.templates import render

    _, mask = render(CONV, "plain", tok, loss="all")
    assert all(mask)


def test_plain_matches_reference_prompt_and_eval_rows(tok):
    """The plain prompt is the reference workflow's "{instruction} {input}\\n" and equals eval.jsonl's prompt."""
    import json
    from pathlib import Path

    from jobs.data import fmt_alpaca
    from jobs.templates import render

    root = Path(__file__).resolve().parents[2] / "recipes" / "data" / "tiny-task"
    row = json.loads((root / "eval.jsonl").read_text().splitlines()[0])
    instr, inp = row["prompt"].rstrip("\n").split(". ", 1)
    msgs = fmt_alpaca({"instruction": instr + ".", "input": inp, "output": row["answer"]})["messages"]
    ids, mask = render(msgs, "plain", tok)
    n_prompt = mask.index(True)
    assert tok.decode(ids[:n_prompt]) == row["prompt"]
    assert tok.decode(ids[n_prompt:]) == row["answer"] + tok.eos_token
    # Segment-wise tokens equal whole-string tokens, so inference sees what training saw.
    assert ids[:n_prompt] == tok(row["prompt"], add_special_tokens=False)["input_ids"]


def test_tokenizer_template_without_chat_template_is_a_clear_error(tok):
    import copy

    from jobs.templates import render
    from launcher.errors import UserError

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(UserError, match="no chat_template"):
        render(CONV, "tokenizer", bare)
