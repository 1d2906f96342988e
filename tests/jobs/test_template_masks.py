"""Exact loss masks for `template: tokenizer`, checked against transformers' own apply_chat_template.

The official templates are the ones the tiny families carry (jobs/tiny.py: transcribed from
Qwen/Qwen2.5-*-Instruct's tokenizer_config.json, google/gemma-2-*-it's, Qwen/Qwen3-30B-A3B's and
Mistral-Small-24B-Instruct-2501's, tool branches left out; hand-checked against the published
ones, 24/24 identical renders). For every family and many conversations:
(a) each sample's text and ids are `tokenizer.apply_chat_template` of the conversation up to the
    answer it trains (byte for byte; one sample with every answer where the template renders
    prefix-consistently);
(b) the trained characters are exactly the answer as the template writes it plus the end-of-turn
    token (<|im_end|>, <end_of_turn>, </s>) — not the "\\n" after it, not Qwen3's empty think block;
    and what precedes them is apply_chat_template's generation prompt for that turn;
(c) the mask equals transformers' own `return_assistant_tokens_mask` over a generation-marked copy
    of the official template, which renders byte for byte what the official one renders.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.requires("transformers")

from jobs import tiny  # noqa: E402

SYSTEM = {"role": "system", "content": "You are terse."}
EMPTY_SYSTEM = {"role": "system", "content": "  "}
T = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "  And 3+3?\nQuick.  "},
    {"role": "assistant", "content": " Six, of course. \n"},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "Kiwi — ünïcode."},
]
REASONED = {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nIt is 4."}
CONVERSATIONS = {
    "one turn": T[:2], "two turns": T[:4], "three turns": T,
    "system one turn": [SYSTEM, *T[:2]], "system three turns": [SYSTEM, *T],
    "empty system": [EMPTY_SYSTEM, *T[:4]],
    "reasoning last": [T[0], REASONED], "reasoning first": [T[0], REASONED, *T[2:4]],
}
EOT = {"qwen2": "<|im_end|>", "gemma2": "<end_of_turn>", "mistral": "</s>", "qwen3_moe": "<|im_end|>", "llama": "</s>"}

# Generation-marked copies of the official templates: the same output, with the trained part marked.
MARKED = {
    "qwen2": (
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
        "{%- endif %}{%- for message in messages %}{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
        "{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
        "{%- elif (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
        "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    ),
    "gemma2": tiny.GEMMA2_TEMPLATE.replace(
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}",
        "{{ '<start_of_turn>' + role + '\\n' }}{% if role == 'model' %}{% generation %}"
        "{{ message['content'] | trim + '<end_of_turn>' }}{% endgeneration %}{% else %}"
        "{{ message['content'] | trim + '<end_of_turn>' }}{% endif %}{{ '\\n' }}"),
    "mistral": tiny.MISTRAL_TEMPLATE.replace(
        "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}",
        "{%- elif message['role'] == 'assistant' %}{% generation %}{{- message['content'] + eos_token }}{% endgeneration %}"),
    "llama": tiny.CHAT_TEMPLATE.replace(
        "{{ '<|' + m['role'] + '|>\\n' + m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}",
        "{{ '<|' + m['role'] + '|>\\n' }}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}"
        "{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}"),
    # Only the last answer is a generation: earlier ones appear as Qwen3 rewrites them (no <think>).
    "qwen3_moe": tiny.QWEN3_TEMPLATE.replace(
        "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' "
        "+ content.lstrip('\\n') }}",
        "{{- '<|im_start|>' + message.role + '\\n' }}{%- if reasoning_content.strip('\\n') %}{% generation %}"
        "{{- '<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') + '<|im_end|>' }}"
        "{% endgeneration %}{%- else %}{{- '<think>\\n\\n</think>\\n\\n' }}{% generation %}"
        "{{- content.lstrip('\\n') + '<|im_end|>' }}{% endgeneration %}{%- endif %}{{- '\\n' }}"
    ).replace(
        "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
        "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}{{- '<|im_end|>\\n' }}",
        "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}{%- endif %}"
        "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}{%- endif %}"),
}


@pytest.fixture(scope="module")
def toks(shared_cache):
    from transformers import AutoTokenizer

    return {f: AutoTokenizer.from_pretrained(tiny.ensure_tiny(shared_cache, family=f))
            for f in EOT}


def _accepts(family: str, conv: list[dict]) -> bool:
    return not (family == "gemma2" and conv[0]["role"] == "system" and conv[0]["content"].strip())


def _written(family: str, content: str, last: bool) -> str:
    """The answer as the official template writes it (independent of jobs.templates)."""
    if family == "gemma2":
        return content.strip()
    if family == "qwen3_moe" and "</think>" in content:
        reasoning, answer = content.split("</think>")
        return f"<think>\n{reasoning.split('<think>')[-1].strip(chr(10))}\n</think>\n\n{answer.lstrip(chr(10))}" if last \
            else answer.lstrip("\n")
    return content


def _ids(tok, conv, **kw) -> list[int]:
    out = tok.apply_chat_template(conv, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_marked_copies_render_byte_for_byte_as_the_official_templates(toks):
    from jobs.templates import drop_empty_system

    checked = 0
    for family, tok in toks.items():
        assert MARKED[family] != tok.chat_template and "{% generation %}" in MARKED[family]
        for conv in map(drop_empty_system, CONVERSATIONS.values()):
            if not _accepts(family, conv):
                continue
            for end in range(1, len(conv) + 1):
                for gen in (False, True):
                    official = tok.apply_chat_template(conv[:end], tokenize=False, add_generation_prompt=gen)
                    assert tok.apply_chat_template(conv[:end], chat_template=MARKED[family], tokenize=False,
                                                   add_generation_prompt=gen) == official, (family, end, gen)
                    checked += 1
    assert checked == 300  # 5 families, 8 conversations (Gemma: 6), every prefix, with and without the prompt


@pytest.mark.parametrize("family", list(EOT))
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_each_answer_and_its_end_of_turn_token_is_trained_exactly(toks, family, name):
    from jobs import templates

    tok, conv = toks[family], CONVERSATIONS[name]
    if not _accepts(family, conv):  # Gemma 2 has no system role: a bad row (see the build_datasets test below)
        with pytest.raises(templates.BadConversation, match="System role not supported"):
            templates.render_turns(conv, "tokenizer", tok)
        return
    served = templates.drop_empty_system(conv)
    answers = [i for i, m in enumerate(served) if m["role"] == "assistant"]
    turns = templates.render_turns(conv, "tokenizer", tok)
    rewrites = family == "qwen3_moe" and len(answers) > 1
    assert len(turns) == (len(answers) if rewrites else 1)
    # Which turns each sample trains: every answer in one sample, or one answer per sample.
    per_sample = [[i] for i in answers] if rewrites else [answers]
    samples = templates.render_samples(conv, "tokenizer", tok)
    for (text, spans), (ids, mask), trained_turns in zip(turns, samples, per_sample, strict=True):
        end = trained_turns[-1] + 1
        assert text == tok.apply_chat_template(served[:end], tokenize=False)  # (a)
        assert ids == _ids(tok, served[:end])
        assert len(spans) == len(trained_turns)
        for (a, b), i in zip(spans, trained_turns, strict=True):  # (b)
            assert text[a:b] == _written(family, served[i]["content"], i == end - 1) + EOT[family]
            thinking = {} if "<think>" in served[i]["content"] else {"enable_thinking": False}
            assert text[:a] == tok.apply_chat_template(served[:i], tokenize=False, add_generation_prompt=True, **thinking)
        # (c) transformers' own assistant mask over the generation-marked copy
        marked = tok.apply_chat_template(served[:end], chat_template=MARKED[family], tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=True)
        assert list(marked["input_ids"]) == ids
        assert [bool(m) for m in marked["assistant_masks"]] == mask
        trained = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
        assert trained.endswith(EOT[family]) and not trained.endswith("\n" + EOT[family] + "\n")


def test_qwen3_answers_without_reasoning_leave_the_empty_think_block_untrained(toks):
    from jobs import templates

    tok = toks["qwen3_moe"]
    ids, mask = templates.render(T[:2], "tokenizer", tok)
    text = tok.apply_chat_template(T[:2], tokenize=False)
    assert "<think>\n\n</think>\n\n4<|im_end|>\n" in text
    assert tok.decode([t for t, m in zip(ids, mask, strict=True) if m]) == "4<|im_end|>"
    # The untrained prefix is what Qwen3 is served with thinking switched off.
    first = mask.index(True)
    assert tok.decode(ids[:first]) == tok.apply_chat_template(T[:1], tokenize=False, add_generation_prompt=True,
                                                              enable_thinking=False)
    # With reasoning, the think block is the model's own output: trained.
    ids, mask = templates.render([T[0], REASONED], "tokenizer", tok)
    assert tok.decode([t for t, m in zip(ids, mask, strict=True) if m]) == "<think>\nAdd them.\n</think>\n\nIt is 4.<|im_end|>"


def test_an_empty_system_message_is_dropped_so_the_default_system_prompt_applies(toks):
    from jobs import templates
    from jobs.rows import check_row

    row = check_row("messages", {"messages": [EMPTY_SYSTEM, *T[:2]]})
    assert row["messages"] == T[:2]  # as dolphin's empty instruction gives no system message
    tok = toks["qwen2"]
    text, _ = templates.render_spans([EMPTY_SYSTEM, *T[:2]], "tokenizer", tok)
    assert text == tok.apply_chat_template(T[:2], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert templates.prompt_text([EMPTY_SYSTEM, T[0]], "tokenizer", tok) == tok.apply_chat_template(
        T[:1], tokenize=False, add_generation_prompt=True)


def _recipe(path, model_dir, bad_rows: str, seq_len: int = 512):
    from sftcore.recipe import recipe_from_dict

    return recipe_from_dict({
        "name": "t", "model": {"id": str(model_dir)}, "method": "full",
        "data": {"sources": [{"path": str(path), "format": "messages"}], "template": "tokenizer", "seq_len": seq_len,
                 "packing": False, "eval_fraction": 0.0, "bad_rows": bad_rows},
        "resources": {"clouds": ["local"]}, "eval": None})


def _write(path, convs):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    return path


def test_a_row_the_template_refuses_stops_naming_source_and_row_or_is_skipped(toks, tmp_path):
    from jobs.data import build_datasets
    from sftcore.errors import UserError

    path = _write(tmp_path / "gemma.jsonl", [T[:2], [SYSTEM, *T[:2]], T[:4]])
    model = tiny.ensure_tiny(family="gemma2")
    with pytest.raises(UserError, match=r"gemma\.jsonl: row 2: .*System role not supported.*data\.bad_rows: skip"):
        build_datasets(_recipe(path, model, "error"), toks["gemma2"])
    info: dict = {}
    train, _ = build_datasets(_recipe(path, model, "skip"), toks["gemma2"], info)
    assert info["skipped"] == {"template refused": 1} and info["train_rows"] == 2 and len(train) == 2


def test_multi_turn_qwen3_rows_train_one_sample_per_answer(toks, tmp_path):
    from jobs.data import IGNORE, build_datasets

    path = _write(tmp_path / "qwen3.jsonl", [T, T[:2]])
    info: dict = {}
    train, _ = build_datasets(_recipe(path, tiny.ensure_tiny(family="qwen3_moe"), "error"), toks["qwen3_moe"], info)
    assert info["train_rows"] == 2 and not info["skipped"] and len(train) == 3 + 1
    tok = toks["qwen3_moe"]
    trained = sorted(tok.decode([t for t, lab in zip(s["input_ids"], s["labels"], strict=True) if lab != IGNORE])
                     for s in train)
    assert trained == sorted(["4<|im_end|>", "4<|im_end|>", " Six, of course. \n<|im_end|>", "Kiwi — ünïcode.<|im_end|>"])


def test_without_an_end_of_turn_token_the_trailing_newline_stays_trained(toks):
    """Only whitespace after an end-of-turn token is cut: with none, the newline is the model's stop."""
    import copy

    from jobs import templates

    tok = copy.deepcopy(toks["llama"])
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    (text, spans), = templates.render_turns(T[:4], "tokenizer", tok)
    assert text == tok.apply_chat_template(T[:4], tokenize=False)
    assert [text[a:b] for a, b in spans] == ["4\n", " Six, of course. \n\n"]


@pytest.mark.slow
def test_every_shipped_conversation_masks_as_transformers_does_in_every_family(toks):
    """The 240 shipped sample conversations (multi-turn guanaco, SlimOrca, messages, dolphin rows)."""
    from jobs import templates
    from tests.jobs.test_templates import shipped_conversations

    convs = shipped_conversations()
    for family, tok in toks.items():
        for conv in convs:
            served = templates.drop_empty_system(conv)
            if not _accepts(family, served):
                with pytest.raises(templates.BadConversation):
                    templates.render_turns(conv, "tokenizer", tok)
                continue
            answers = [i for i, m in enumerate(served) if m["role"] == "assistant"]
            ends = [i + 1 for i in answers] if len(templates.render_turns(conv, "tokenizer", tok)) > 1 else [len(served)]
            for (ids, mask), end in zip(templates.render_samples(conv, "tokenizer", tok), ends, strict=True):
                marked = tok.apply_chat_template(served[:end], chat_template=MARKED[family], tokenize=True,
                                                 return_dict=True, return_assistant_tokens_mask=True)
                assert list(marked["input_ids"]) == ids == _ids(tok, served[:end]), (family, conv)
                assert [bool(m) for m in marked["assistant_masks"]] == mask, (family, conv)


def test_a_trained_qwen3_is_prompted_as_it_was_trained(toks):
    """trained_chat_kwargs: the switch training implied, recorded in final/sftlaunch.json; prompts
    rendered with it equal transformers' own apply_chat_template(enable_thinking=False), and
    `jobs generate` sends those ids. Reasoning in the data, or a family without the switch: none."""
    from jobs import generate, templates

    qwen3 = toks["qwen3_moe"]
    assert templates.trained_chat_kwargs("tokenizer", qwen3, reasoning_rows=0) == {"enable_thinking": False}
    assert templates.trained_chat_kwargs("tokenizer", qwen3, reasoning_rows=3) == {}
    assert templates.trained_chat_kwargs("tokenizer", toks["qwen2"], reasoning_rows=0) == {}
    assert templates.trained_chat_kwargs("chatml", qwen3, reasoning_rows=0) == {}
    assert templates.has_reasoning({"messages": [T[0], REASONED]}) and not templates.has_reasoning({"messages": T[:2]})
    want = qwen3.apply_chat_template(T[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert want.endswith("<think>\n\n</think>\n\n")
    assert templates.prompt_text(T[:1], "tokenizer", qwen3, {"enable_thinking": False}) == want
    loaded = generate.Loaded(None, qwen3, "tokenizer", "cpu", {"enable_thinking": False})
    assert generate.prompt_ids(loaded, T[:1]) == qwen3(want, add_special_tokens=False)["input_ids"]
    untouched = generate.Loaded(None, qwen3, "tokenizer", "cpu")  # a Hub model: its own default
    assert qwen3.decode(generate.prompt_ids(untouched, T[:1])) == qwen3.apply_chat_template(
        T[:1], tokenize=False, add_generation_prompt=True)
