"""jobs.train: full / LoRA / QLoRA end to end on a tiny model, the run contract (metrics.jsonl,
progress line, final/ + sftlaunch.json, recipe.yaml), loss normalisation under gradient
accumulation, the in-job budget guard and the launcher's stop request."""

from __future__ import annotations

import json
import re

import pytest

from tests.jobs.test_train_support import PadCollator, build_tiny_model, make_recipe, token_rows, write_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return build_tiny_model(root / "model"), write_data(root / "d.jsonl")


def _run(tiny, out, method="full", rows=16, **train):
    from jobs import model as jm
    from jobs import train as jt

    recipe = make_recipe(*tiny, method=method, **train)
    tok = jm.load_tokenizer(recipe)
    rc = jt.train(recipe, out, run_id="sftl-t-0000", datasets=(token_rows(rows), token_rows(4, seed=1)),
                  collator=PadCollator(tok.pad_token_id))
    return rc, recipe


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_full_run_writes_the_contract(tiny, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    rc, recipe = _run(tiny, out, learning_rate=1e-2)
    assert rc == 0
    rows = _metrics(out)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    for r in train_rows:
        assert set(r) >= {"step", "total_steps", "loss", "lr", "tokens_per_s", "epoch", "elapsed_s"}
        assert r["total_steps"] == 4 and r["tokens_per_s"] > 0
    assert any("eval_loss" in r for r in rows)
    meta = json.loads((out / "final" / "sftlaunch.json").read_text())
    assert meta["run_id"] == "sftl-t-0000" and meta["recipe_sha256"] == recipe.sha256()
    assert meta["base_model"] == str(tiny[0]) and meta["method"] == "full" and meta["template"] == "plain"
    assert meta["seq_len"] == 32 and meta["train_rows"] == 16 and meta["wall_s"] > 0
    assert (out / "recipe.yaml").read_text() == recipe.to_yaml()
    trained = load_file(str(out / "final" / "model.safetensors"))
    base = load_file(str(tiny[0] / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert not trained[name].equal(base[name])  # it trained from the base...
    assert (trained[name] - base[name]).abs().max() < 0.2  # ...not from a fresh random init
    # The launcher parses "step N/M" out of the log.
    from launcher.lifecycle import _STEP_RE

    printed = capsys.readouterr().out
    assert _STEP_RE.findall(printed)[-1] == ("4", "4")
    assert re.search(r"tokens/s \d+ ETA \d+:\d\d:\d\d", printed)
    # A checkpoint at the end, complete.
    from jobs.checkpoint import verify

    assert verify(out / "checkpoints" / "step-4") is None


@pytest.mark.parametrize("method,optimizer", [("lora", "adamw_torch"), ("qlora", "paged_adamw_32bit")])
def test_adapter_methods_train_and_save_an_adapter(tiny, tmp_path, method, optimizer):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / method
    rc, _ = _run(tiny, out, method=method, optimizer=optimizer, gradient_checkpointing=True, learning_rate=1e-2)
    assert rc == 0
    final = out / "final"
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 4
    weights = load_file(str(final / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero = it trained
    base = AutoModelForCausalLM.from_pretrained(tiny[0])
    model = PeftModel.from_pretrained(base, final)
    assert sum(1 for n, _ in model.named_modules() if n.endswith("lora_A")) > 0


def test_grad_accum_matches_a_bigger_micro_batch(tiny, tmp_path):
    """micro 4 × accum 1 and micro 1 × accum 4 see the same rows per step; with the loss summed
    over the accumulated tokens and divided by their count, the curves match. (Averaging per
    micro-batch instead would weight short completions up and the curves would differ.)"""
    big, _ = _run(tiny, tmp_path / "big", micro_batch_size=4, grad_accum=1, max_steps=3, learning_rate=1e-2)
    small, _ = _run(tiny, tmp_path / "small", micro_batch_size=1, grad_accum=4, max_steps=3, learning_rate=1e-2)
    assert big == small == 0
    a = [r["loss"] for r in _metrics(tmp_path / "big") if "loss" in r]
    b = [r["loss"] for r in _metrics(tmp_path / "small") if "loss" in r]
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=2e-4)
    # Sanity: the per-micro-batch mean really differs for these rows, so the check has teeth.
    rows = token_rows(16)[:4]
    per_row = [sum(1 for x in r["labels"] if x != -100) for r in rows]
    assert len(set(per_row)) > 1


def test_budget_guard_saves_a_checkpoint_and_exits_3(tiny, tmp_path, monkeypatch, capsys):
    from jobs.checkpoint import verify
    from jobs.train import BUDGET_EXIT, STOPPED_MARKER

    monkeypatch.setenv("SFTLAUNCH_USD_PER_HOUR", "1000000")
    monkeypatch.setenv("SFTLAUNCH_MAX_USD", "0.01")
    out = tmp_path / "budget"
    rc, _ = _run(tiny, out, max_steps=50)
    assert rc == BUDGET_EXIT == 3
    ckpts = list((out / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and verify(ckpts[0]) is None
    assert int(ckpts[0].name.split("-")[1]) < 50
    assert not (out / "final").exists()
    assert json.loads((out / STOPPED_MARKER).read_text())["reason"] == "budget"
    assert "budget guard" in capsys.readouterr().out


def test_launcher_stop_request_checkpoints_and_reports_stopped(tiny, tmp_path, monkeypatch):
    control = tmp_path / "control"
    control.mkdir()
    (control / "stop").write_text(json.dumps({"reason": "max_usd"}))
    monkeypatch.setenv("SFTLAUNCH_CONTROL", str(control))
    out = tmp_path / "stop"
    rc, _ = _run(tiny, out, max_steps=50)
    assert rc == 0
    stopped = json.loads((control / "stopped").read_text())
    assert stopped["step"] < 50 and stopped["checkpoint"].endswith(f"step-{stopped['step']}")
    assert not (out / "final").exists()


def test_cli_bad_input_is_exit_2(tmp_path, capsys):
    from jobs.__main__ import main

    assert main(["train", "--recipe", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert main(["train", "--out", str(tmp_path)]) == 2
