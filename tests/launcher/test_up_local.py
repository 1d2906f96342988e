"""`sftlaunch up --local recipes/tiny-local.yaml` end to end — the README's first command on the
shipped recipe, unshortened (about a minute on 2 cores): train, eval, publish on this CPU, tracked
in the registry like a cloud run, ending with the results table and the output paths, with no
secret in anything it wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from launcher.cli import cli
from launcher.runs import Registry, run_dir

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny-local.yaml"
CANARY = "hf_CANARYlocalRUN0123456789abcdefZ"


def test_up_local_tiny_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setenv("SFTLAUNCH_LOCAL_DOCKER", "0")  # directly, with this venv's train/eval extras
    monkeypatch.setenv("HF_TOKEN", CANARY)
    res = CliRunner().invoke(cli, ["up", "--local", str(TINY), "--yes"])
    assert res.exit_code == 0, res.output[-4000:]
    run_id = res.output.strip().splitlines()[-1]
    # The end of the output: the results table, then where the model, card and plot are.
    tail = res.output[res.output.rindex(f"{run_id}: succeeded"):]
    assert "| Model | Average | tiny_mc (acc) | tiny_gen (exact_match) |" in tail
    out = run_dir(run_id)
    for label, path in (("model:", out / "publish"), ("model card:", out / "publish" / "README.md"),
                        ("loss plot:", out / "publish" / "training_loss.png"),
                        ("eval results:", out / "eval" / "results.json")):
        assert f"{label:14}{path}" in tail and path.exists(), label
    rec = Registry().get(run_id)
    assert rec["state"] == "succeeded" and rec["backend"] == "local"
    assert rec["progress_total"] and rec["progress_step"] == rec["progress_total"]
    assert rec["eval_average"] is not None and rec["eval"]["scores"]
    meta = json.loads((out / "final" / "sftlaunch.json").read_text())
    assert meta["run_id"] == run_id and meta["recipe_sha256"] == rec["recipe_sha256"]
    assert (out / "metrics.jsonl").exists() and (out / "run.log").exists()
    status = CliRunner().invoke(cli, ["status", "--json", run_id])
    assert json.loads(status.output)["state"] == "succeeded"
    logs = CliRunner().invoke(cli, ["logs", run_id])
    assert logs.exit_code == 0 and logs.output.strip()
    assert CANARY not in res.output + status.output + logs.output
    for dirpath, _dirs, files in os.walk(os.environ["SFTLAUNCH_HOME"]):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                assert CANARY.encode() not in fh.read(), os.path.join(dirpath, name)
