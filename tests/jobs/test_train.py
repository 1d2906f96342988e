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


@pytest.mark.slow
def test_full_run_writes_the_contract(tiny, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    rc, recipe = _run(tiny, out, learning_rate=1e-4)
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
    assert trained.keys() == base.keys()
    assert any(not trained[k].equal(base[k]) for k in base)  # it trained...
    for k in base:  # ...starting from the base: 4 Adam steps at lr 1e-4 move a weight by <= ~4e-4,
        # a fresh random init (std 0.02) would differ by ~140% of the tensor's norm.
        delta = (trained[k].float() - base[k].float()).norm() / base[k].float().norm()
        assert delta < 0.05, (k, float(delta))
    # The launcher parses "step N/M" out of the log.
    from launcher.run_outputs import _STEP_RE

    printed = capsys.readouterr().out
    assert _STEP_RE.findall(printed)[-1] == ("4", "4")
    assert re.search(r"step 4/4 \[#{20}\] 100% loss \d+\.\d{4} tokens/s \d+ ETA \d+:\d\d:\d\d", printed)
    # A checkpoint at the end, complete.
    from jobs.checkpoint_manifest import verify

    assert verify(out / "checkpoints" / "step-4") is None


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_progress_line_has_a_bar_and_stays_parseable():
    from jobs.callbacks import progress_line
    from launcher.run_outputs import _STEP_RE, parse_progress

    line = progress_line(60, 100, 1.23456, 1234.4, 3725)
    assert line == "step 60/100 [############--------]  60% loss 1.2346 tokens/s 1234 ETA 1:02:05"
    assert parse_progress(line) == (60, 100) and _STEP_RE.search(line)
    assert "[--------------------]   0%" in progress_line(0, 7, 9.0, 0, 0)
    assert "[####################] 100%" in progress_line(7, 7, 0.1, 5, 0)


@pytest.mark.slow
def test_budget_stop_checkpoints_writes_stopped_and_exits_0(tiny, tmp_path, monkeypatch, capsys):
    """Exit 0, not an error: a managed job that fails is restarted by SkyPilot and spends again."""
    from jobs.checkpoint_manifest import verify
    from sftcore.contract import STOPPED_MARKER

    monkeypatch.setenv("SFTLAUNCH_USD_PER_HOUR", "1000000")
    out = tmp_path / "budget"
    rc, _ = _run(tiny, out, max_steps=50, max_usd=0.01)
    assert rc == 0
    ckpts = list((out / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and verify(ckpts[0]) is None
    step = int(ckpts[0].name.split("-")[1])
    assert step < 50
    assert not (out / "final").exists()
    stopped = json.loads((out / STOPPED_MARKER).read_text())
    assert stopped["reason"] == "budget" and stopped["step"] == step
    assert stopped["checkpoint"] == str(ckpts[0]) and "max_usd $0.01" in stopped["detail"]
    assert "budget guard" in capsys.readouterr().out


@pytest.mark.slow
def test_budget_guard_charges_the_launched_choice_and_the_final_record_names_it(tiny, tmp_path, monkeypatch, capsys):
    """Two rendered choices: the dearest ($3.6M/h) would stop at once; SkyPilot says it launched
    the GCP one in us-central1 ($0.36/h there), so training runs to the end and DIR/final/
    sftlaunch.json names that offer (the model card and run record read it)."""
    rates = [{"cloud": "lambda", "region": None, "accelerator": "H100", "count": 1, "nodes": 1, "spot": False,
              "usd_per_hour": 3.6e6, "usd_per_hour_max": 3.6e6, "region_usd_per_hour": {"us-east-1": 3.6e6}},
             {"cloud": "gcp", "region": None, "accelerator": "L4", "count": 1, "nodes": 1, "spot": False,
              "usd_per_hour": 0.36, "usd_per_hour_max": 0.9, "region_usd_per_hour": {"us-central1": 0.36, "asia-east1": 0.9}}]
    monkeypatch.setenv("SFTLAUNCH_RATES", json.dumps(rates))
    monkeypatch.setenv("SKYPILOT_CLUSTER_INFO", json.dumps({"cluster_name": "sftl-t-0000", "cloud": "GCP",
                                                            "region": "us-central1", "zone": "us-central1-a"}))
    out = tmp_path / "rates"
    rc, _ = _run(tiny, out, max_usd=1)
    assert rc == 0 and (out / "final").is_dir() and not (out / "STOPPED").exists()
    offer = json.loads((out / "final" / "sftlaunch.json").read_text())["offer"]
    assert {k: offer[k] for k in ("cloud", "region", "accelerator", "count", "usd_per_hour")} == {
        "cloud": "gcp", "region": "us-central1", "accelerator": "L4", "count": 1, "usd_per_hour": 0.36}
    assert "budget guard: gcp us-central1 1×L4 $0.36/h (the price in us-central1)" in capsys.readouterr().out


def _drive(tiny_root, out, env=None, **overrides):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    return subprocess.Popen([sys.executable, "-m", "tests.jobs.test_train_support", str(tiny_root), str(out),
                             json.dumps(overrides)], cwd=repo, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_budget_clock_counts_from_the_saved_elapsed_time_after_a_kill(tiny, tmp_path):
    """A restarted attempt starts its clock where the last checkpoint left it: with max_usd equal
    to what the killed attempt had spent at its checkpoint, the resumed run stops at its first step."""
    import signal
    import time

    root = tiny[0].parent
    settings = {"max_steps": 200, "micro_batch_size": 2, "grad_accum": 1, "checkpoint_minutes": 0.0001,
                "keep_checkpoints": 5}
    out = tmp_path / "run"
    victim = _drive(root, out, **settings)
    deadline = time.time() + 180
    while time.time() < deadline and not list((out / "checkpoints").glob("step-*/MANIFEST.json")):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    from jobs import checkpoint as ck

    done = ck.local_complete_steps(out / "checkpoints")
    assert done, "no complete checkpoint before the kill"
    saved = ck.read_state(out / "checkpoints" / f"step-{done[0]}")
    assert saved["step"] == done[0] and saved["elapsed_s"] > 0 and saved["attempts"] == 1
    spent = saved["elapsed_s"]  # at $3600/h: one dollar per second
    again = _drive(root, out, env={"SFTLAUNCH_USD_PER_HOUR": "3600"}, max_usd=round(spent, 3), **settings)
    log, _ = again.communicate(timeout=300)
    assert again.returncode == 0, log
    stopped = json.loads((out / "STOPPED").read_text())
    assert stopped["reason"] == "budget" and stopped["step"] == done[0] + 1, (stopped, log[-2000:])
    after = ck.read_state(out / "checkpoints" / f"step-{done[0] + 1}")
    assert after["elapsed_s"] > spent and after["attempts"] == 2


@pytest.mark.slow
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
    assert stopped["reason"] == "control"
    assert json.loads((out / "STOPPED").read_text())["reason"] == "control"
    assert not (out / "final").exists()


@pytest.mark.slow
def test_metrics_after_a_resume_do_not_repeat_steps(tiny, tmp_path):
    """A run killed after logging steps past its last checkpoint resumes from that checkpoint;
    the rows of the lost steps go, so every step appears once."""
    from jobs.modelcard import read_metrics

    out = tmp_path / "resume"
    rc, _ = _run(tiny, out, max_steps=3)
    assert rc == 0
    # As if the first attempt had logged steps 4 and 5 (and an eval) before it was killed.
    with open(out / "metrics.jsonl", "a") as fh:
        for step in (4, 5):
            fh.write(json.dumps({"step": step, "total_steps": 6, "loss": 99.0, "elapsed_s": 1.0}) + "\n")
        fh.write(json.dumps({"step": 5, "eval_loss": 99.0, "elapsed_s": 1.0}) + "\n")
        fh.write('{"step": 5, "lo')  # cut mid-line
    rc, _ = _run(tiny, out, max_steps=6)
    assert rc == 0
    rows = _metrics(out)
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6] and 99.0 not in [r.get("loss") for r in rows]
    assert 99.0 not in [r.get("eval_loss") for r in rows]
    # Reading dedupes too (a file written by an older version).
    (out / "old.jsonl").write_text("".join(json.dumps({"step": s, "loss": float(v)}) + "\n"
                                           for s, v in ((1, 5), (2, 4), (1, 3), (2, 2), (3, 1))))
    assert [(r["step"], r["loss"]) for r in read_metrics(out / "old.jsonl")] == [(1, 3.0), (2, 2.0), (3, 1.0)]


def test_cli_bad_input_is_exit_2(tmp_path, capsys):
    from jobs.__main__ import main

    assert main(["train", "--recipe", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert main(["train", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_wandb_offline_run_is_recorded_and_the_key_is_written_nowhere(tiny, tmp_path):
    """WANDB_API_KEY turns W&B reporting on (wandb is a train-extra dependency); offline it writes
    a local run. The key must not land in any file the run wrote."""
    canary = "canary" + "c0ffee" * 5 + "7e57"  # 40 characters, the shape of a real key
    wandb_dir, home = tmp_path / "wandb", tmp_path / "home"
    wandb_dir.mkdir()
    home.mkdir(exist_ok=True)  # conftest made it the HOME already
    env = {"WANDB_API_KEY": canary, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "HOME": str(home),
           "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"), "WANDB_CACHE_DIR": str(home / ".cache" / "wandb")}
    out = tmp_path / "run"
    proc = _drive(tiny[0].parent, out, env=env, max_steps=2)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    assert (out / "final" / "sftlaunch.json").is_file()
    runs = list(wandb_dir.glob("wandb/offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), log[-3000:]
    assert canary not in log
    written = [p for root in (out, wandb_dir, home) for p in root.rglob("*") if p.is_file()]
    assert written
    for p in written:
        assert canary.encode() not in p.read_bytes(), p


@pytest.mark.slow
def test_row_counts_per_source_type_reach_sftlaunch_json_and_the_card(tiny, tmp_path, monkeypatch):
    import datasets as hf_datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs import train as jt
    from jobs.modelcard import render_card
    from sftcore.recipe import recipe_from_dict
    from tests.jobs.test_train_support import recipe_dict

    def rows(n, start=0):
        return [{"instruction": f"w{(start + i) % 10}", "input": "", "output": f"w{(start + i + 1) % 10}"}
                for i in range(n)]

    d = tmp_path / "data"
    (d / "dir").mkdir(parents=True)
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(9)))
    (d / "b.json").write_text(json.dumps(rows(6, 3)))
    pq.write_table(pa.Table.from_pylist(rows(5, 5)), d / "c.parquet")
    (d / "dir" / "1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(3, 1)))
    (d / "dir" / "2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(4, 2)))
    def load_dataset(path, config, split):  # the Hub is unreachable here; a hub source's rows
        assert (path, config, split) == ("org/hub-ds", "main", "train")
        return rows(7, 4)

    monkeypatch.setattr(hf_datasets, "load_dataset", load_dataset)
    spec = recipe_dict(*tiny, max_steps=1)
    spec["data"]["sources"] = [
        {"path": str(d / "a.jsonl"), "format": "alpaca", "max_samples": 5},
        {"path": str(d / "b.json"), "format": "alpaca"},
        {"path": str(d / "c.parquet"), "format": "alpaca"},
        {"path": str(d / "dir"), "format": "alpaca"},
        {"path": "org/hub-ds", "config": "main", "format": "alpaca", "split": "train"},
    ]
    spec["data"]["eval_fraction"] = 0.2
    recipe = recipe_from_dict(spec)
    out = tmp_path / "run"
    assert jt.train(recipe, out, run_id="sftl-t-rows") == 0
    meta = json.loads((out / "final" / "sftlaunch.json").read_text())
    assert [s["rows"] for s in meta["data_rows"]] == [5, 6, 5, 7, 7]
    assert meta["data_rows"][4] == {"path": "org/hub-ds", "config": "main", "split": "train", "format": "alpaca",
                                    "max_samples": None, "rows": 7}
    assert meta["train_rows"] + meta["eval_rows"] == 30 and meta["eval_rows"] == 6
    assert meta["train_sequences"] >= 1
    card = render_card(recipe=recipe.resolved_dict(), meta=meta, results=[], metrics=[], repo_id="me/x",
                       is_adapter=False, hardware=None, usd_per_hour=None, has_plot=False)
    assert f"| {d / 'a.jsonl'} | train | alpaca | 5 (used in training) |" in card
    assert "| org/hub-ds | train | alpaca | 7 (used in training) |" in card
    assert f"| {d / 'dir'} | train | alpaca | 7 (used in training) |" in card
    assert "Rows: 24 trained on" in card and "6 held out for the eval loss" in card


@pytest.mark.slow
def test_full_zero3_builds_the_model_under_deepspeed_zero_init(tmp_path, monkeypatch):
    """Full fine-tuning with a ZeRO-3 config: when from_pretrained runs, transformers' own
    is_deepspeed_zero3_enabled() is already true (the TrainingArguments holding HfDeepSpeedConfig
    exist), so transformers builds the model under deepspeed.zero.Init and no rank materialises
    all fp32 weights. Fails when the model is loaded before the arguments."""
    import socket

    from transformers import AutoModelForCausalLM

    from jobs import train as jt
    from tests.jobs.test_train_support import build_tiny_model, make_recipe, write_data

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    recipe = make_recipe(build_tiny_model(tmp_path / "m"), write_data(tmp_path / "d.jsonl"), deepspeed="zero3")
    seen = {}

    def capture(path, **kwargs):
        from transformers.integrations import is_deepspeed_zero3_enabled

        seen["zero3"] = is_deepspeed_zero3_enabled()
        raise RuntimeError("stop here")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", capture)
    with pytest.raises(RuntimeError, match="stop here"):
        jt.train(recipe, tmp_path / "out", max_steps=1)
    assert seen == {"zero3": True}


@pytest.mark.slow
def test_a_finished_run_run_again_neither_trains_past_max_steps_nor_overwrites_final(tiny, tmp_path, capsys):
    """a rerun resumed from the checkpoint at max_steps, trained step 5/4 (the Trainer
    checks the limit only after a step) and overwrote final/. Now a finished run is left as it is,
    and a checkpoint at max_steps without final/ (killed in between) becomes final/ untrained."""
    from safetensors.torch import load_file

    out = tmp_path / "again"
    settings = {"max_steps": 4, "micro_batch_size": 2, "grad_accum": 1}  # 8 steps/epoch: max_steps mid-epoch
    assert _run(tiny, out, **settings)[0] == 0
    meta = out / "final" / "sftlaunch.json"
    first, mtime = json.loads(meta.read_text()), meta.stat().st_mtime_ns
    capsys.readouterr()
    assert _run(tiny, out, **settings)[0] == 0
    log = capsys.readouterr().out
    assert "training already finished" in log and "step 5/4" not in log, log
    assert meta.stat().st_mtime_ns == mtime and json.loads(meta.read_text()) == first
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4"]
    import shutil

    shutil.rmtree(out / "final")
    assert _run(tiny, out, **settings)[0] == 0
    log = capsys.readouterr().out
    assert "nothing left to train" in log and "step 5/4" not in log, log
    assert json.loads(meta.read_text())["steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4"]
    saved, final = load_file(out / "checkpoints" / "step-4" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert saved.keys() == final.keys() and all(saved[k].equal(final[k]) for k in saved)


@pytest.mark.slow
def test_another_runs_final_model_is_never_overwritten(tiny, tmp_path):
    from jobs.resume import finished_steps
    from sftcore.errors import UserError

    out = tmp_path / "theirs"
    (out / "final").mkdir(parents=True)
    (out / "final" / "sftlaunch.json").write_text(json.dumps({"run_id": "sftl-other-0001", "steps": 9}))
    with pytest.raises(UserError, match="sftl-other-0001.*own --out"):
        _run(tiny, out)
    assert finished_steps(out, "sftl-other-0001") == 9 and finished_steps(tmp_path / "none", None) is None
