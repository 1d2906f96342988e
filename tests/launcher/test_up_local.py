"""`sftlaunch up --local recipes/tiny-local.yaml` end to end — the README's first command on the
shipped recipe, unshortened (about a minute on 2 cores): train, eval, publish on this CPU, tracked
in the registry like a cloud run, ending with the results table and the output paths, with no
secret in anything it wrote."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.runs import Registry, run_dir
from tests.tiny_run import CANARY


@pytest.mark.slow
def test_up_local_tiny_end_to_end(tiny_local_run, monkeypatch):
    """Reads the session's shared run (tests/tiny_run.py: the README's command, started from a
    shell holding HF_TOKEN and SFTLAUNCH_BUCKET)."""
    run = tiny_local_run
    for name in ("HOME", "SFTLAUNCH_HOME"):
        monkeypatch.setenv(name, run.env[name])  # this test's commands see the run's registry
    assert run.returncode == 0, run.output[-4000:]
    run_id = run.run_id
    # The end of the output: the results table, then where the model, card and plot are.
    tail = run.output[run.output.rindex(f"{run_id}: succeeded"):]
    assert "| Model | Average | tiny_mc (acc) | tiny_gen (exact_match) |" in tail
    out = run_dir(run_id)
    assert out == run.run_dir
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
    assert CANARY not in run.output + status.output + logs.output
    for dirpath, _dirs, files in os.walk(run.env["SFTLAUNCH_HOME"]):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                assert CANARY.encode() not in fh.read(), os.path.join(dirpath, name)
    # The shell's SFTLAUNCH_BUCKET is up's default for cloud runs: a local run writes nothing there.
    assert not run.shell_bucket.exists(), sorted(p.name for p in run.shell_bucket.rglob("*"))
