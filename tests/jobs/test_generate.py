"""Inference: `sftlaunch generate` / `chat` and jobs.generate on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs import generate
from launcher.cli import cli
from tests.jobs.eval_fixtures import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("gen"))


def test_streamed_text_is_the_greedy_generation(model_dir):
    import torch

    loaded = generate.load(str(model_dir))
    messages = [{"role": "user", "content": "Reverse the words. apple fig plum"}]
    pieces = list(generate.stream(loaded, messages, max_new_tokens=12))
    ids = torch.tensor([generate.prompt_ids(loaded, messages)])
    with torch.no_grad():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert "".join(pieces) == loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_chat_keeps_the_conversation_as_context(model_dir, monkeypatch):
    seen = []
    real = generate.prompt_ids
    monkeypatch.setattr(generate, "prompt_ids", lambda loaded, messages: seen.append(list(messages)) or real(loaded, messages))
    result = CliRunner().invoke(cli, ["chat", str(model_dir), "--max-new-tokens", "4"],
                                input="apple fig\n\nplum kiwi\n/exit\nnever read\n")
    assert result.exit_code == 0, result.output
    assert [m["content"] for m in seen[0]] == ["apple fig"]
    assert [m["role"] for m in seen[-1]] == ["user", "assistant", "user"]
    assert seen[-1][2]["content"] == "plum kiwi" and all(m in (seen[0], seen[-1]) for m in seen)


def test_generate_resolves_a_run_id_and_uses_its_training_template(model_dir, tmp_path, monkeypatch):
    from launcher.runs import Registry

    run = tmp_path / "runs" / "sftl-tiny-gen-0001"
    shutil.copytree(model_dir, run / "final")
    Registry().create("sftl-tiny-gen-0001", {"name": "tiny-gen"}, state="succeeded", local_dir=str(run))
    result = CliRunner().invoke(cli, ["generate", "sftl-tiny-gen", "--prompt", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output  # a unique prefix of the run id names the run
    (run / "final" / "sftlaunch.json").write_text(json.dumps({"run_id": "sftl-tiny-gen-0001", "template": "plain"}))
    templates = pytest.importorskip("jobs.templates", reason="jobs.templates (data helper) not there yet")
    seen = {}
    real = generate.prompt_ids
    monkeypatch.setattr(generate, "prompt_ids", lambda loaded, m: seen.setdefault("ids", real(loaded, m)))
    result = CliRunner().invoke(cli, ["generate", "sftl-tiny-gen", "--prompt", "Reverse the words. fig plum",
                                      "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "final")
    ids, mask = templates.render([{"role": "user", "content": "Reverse the words. fig plum"},
                                  {"role": "assistant", "content": "plum fig"}], "plain", tok)
    first = list(mask).index(True) if True in list(mask) else len(ids)
    assert seen["ids"] == list(ids)[:first]


def test_bad_inputs_exit_2(model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["generate", str(model_dir), "--prompt", "hi", "--load-4bit"])
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.output
    result = runner.invoke(cli, ["generate", str(tmp_path / "no" / "model"), "--prompt", "hi"])
    assert result.exit_code == 2 and "no such directory" in result.output
    result = runner.invoke(cli, ["generate", "sftl-missing-0000", "--prompt", "hi"])
    assert result.exit_code == 2 and "no run" in result.output
    assert generate.main(["--model", str(model_dir)]) == 2


def test_unknown_hub_model_is_one_line_and_exit_2(capsys):
    message = "model nosuch/model: not found on the Hub or not reachable offline; check the id, revision and HF_TOKEN"
    assert generate.main(["--model", "nosuch/model", "--prompt", "hi"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    result = CliRunner(mix_stderr=False).invoke(cli, ["generate", "nosuch/model", "--prompt", "hi"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [f"error: {message}"]
    assert "Traceback" not in result.output + result.stderr


HISTORY = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]


@pytest.mark.parametrize("template", ["plain", "llama2-chat", "mistral-inst", "chatml"])
def test_prompt_keeps_the_whole_history(model_dir, template):
    """with [Q1, A1, Q2] the model must see all three, not only `<s>[INST] Q1 [/INST]`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = tok.decode(generate.prompt_ids(generate.Loaded(None, tok, template, "cpu"), HISTORY))
    assert "Q1" in text and "A1" in text and text.rstrip().endswith(
        {"plain": "Q2", "llama2-chat": "Q2 [/INST]", "mistral-inst": "Q2 [/INST]", "chatml": "assistant"}[template])


def test_full_context_drops_the_oldest_exchanges_and_says_so(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)

    class Config:
        max_position_embeddings = 64

    class Model:
        config = Config()

    loaded = generate.Loaded(Model(), tok, "plain", "cpu")
    history = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} apple fig plum"},
                    {"role": "assistant", "content": f"answer {i} plum fig apple"}]
    history.append({"role": "user", "content": "last question"})
    notes: list[str] = []
    kept = generate.fit_history(loaded, history, 8, notes.append)
    assert kept[0] == history[0] and kept[-1] == history[-1] and kept[1:] == history[len(history) - len(kept) + 1:]
    assert len(generate.prompt_ids(loaded, kept)) + 8 <= 64 < len(generate.prompt_ids(loaded, kept[:1] + history[len(history) - len(kept) - 1:]))
    dropped = (len(history) - len(kept)) // 2
    assert dropped >= 1 and notes == [f"[context full: dropped the oldest {dropped} exchanges to fit 64 tokens]\n"]
    assert generate.fit_history(loaded, history[:1] + history[-1:], 8, notes.append) == history[:1] + history[-1:]
    with pytest.raises(generate.GenerateInputError, match="do not fit the model's context of 64 tokens"):
        generate.fit_history(loaded, [{"role": "user", "content": "word " * 80}], 8, notes.append)
