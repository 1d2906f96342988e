"""`sftlaunch up --local recipes/tiny-local.yaml` end to end: train, eval, publish on this CPU,
tracked in the registry like a cloud run, with no secret in anything it wrote."""

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


def _quick_tiny(tmp_path: Path) -> Path:
    """The shipped tiny recipe, shortened (few steps, few eval examples): this tests the
    lifecycle, not the model's quality (tests/jobs covers that)."""
    import yaml

    data = yaml.safe_load(TINY.read_text())
    for src in data["data"]["sources"]:
        src["path"] = str((TINY.parent / src["path"]).resolve())
    data["eval"]["tasks_dir"] = str((TINY.parent / data["eval"]["tasks_dir"]).resolve())
    data["eval"]["limit"] = 8
    data["train"]["max_steps"] = 10
    path = tmp_path / "tiny-quick.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_up_local_tiny_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setenv("SFTLAUNCH_LOCAL_DOCKER", "0")  # directly, with this venv's train/eval extras
    monkeypatch.setenv("HF_TOKEN", CANARY)
    res = CliRunner().invoke(cli, ["up", "--local", str(_quick_tiny(tmp_path)), "--yes"])
    assert res.exit_code == 0, res.output[-4000:]
    run_id = res.output.strip().splitlines()[-1]
    rec = Registry().get(run_id)
    assert rec["state"] == "succeeded" and rec["backend"] == "local"
    assert rec["progress_total"] and rec["progress_step"] == rec["progress_total"]
    assert rec["eval_average"] is not None and rec["eval"]["scores"]
    out = run_dir(run_id)
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
