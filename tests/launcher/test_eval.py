"""`sftlaunch eval`: --local through the real harness on the tiny model, scores into the run record."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.runs import Registry
from tests.jobs.eval_fixtures import eval_rows_env, tiny_model

RUN = "sftl-tiny-eval-0001"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("evalcmd"))


def test_local_eval_of_a_run_with_base_row_stores_scores(model_dir, tmp_path, monkeypatch):
    eval_rows_env(monkeypatch, tmp_path)
    run = tmp_path / "runs" / RUN
    shutil.copytree(model_dir, run / "final")
    (run / "final" / "sftlaunch.json").write_text(json.dumps(
        {"run_id": RUN, "base_model": str(model_dir), "recipe_sha256": "ef" * 32, "template": "plain"}))
    Registry().create(RUN, {"name": "tiny-eval", "eval": {"preset": None, "tasks": ["tiny_mc"], "limit": 4}},
                      state="succeeded", local_dir=str(run))
    result = CliRunner(mix_stderr=False).invoke(cli, ["eval", "sftl-tiny-eval", "--local", "--with-base", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "| Model | Average | tiny_mc (acc) |"
    assert lines[2].startswith(f"| {model_dir} |") and lines[3].startswith(f"| {RUN} |")  # base row first
    saved = json.loads((run / "eval" / "results.json").read_text())
    assert saved["run_id"] == RUN and saved["recipe_sha256"] == "ef" * 32
    assert saved["tasks"][0]["samples"] == 4  # the recipe's limit applied
    assert json.loads((run / "eval-base" / "results.json").read_text())["model"]["id"] == str(model_dir)
    record = Registry().get(RUN)
    assert record["eval_average"] == pytest.approx(saved["average"])


def test_json_output_and_bad_inputs(model_dir, tmp_path, monkeypatch):
    eval_rows_env(monkeypatch, tmp_path)
    runner = CliRunner(mix_stderr=False)
    result = runner.invoke(cli, ["eval", str(model_dir), "--local", "--tasks", "tiny_mc", "--limit", "2",
                                 "--batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["tasks"][0]["task"] == "tiny_mc" and data["limit"] == 2
    result = runner.invoke(cli, ["eval", str(tmp_path / "no" / "model"), "--local", "--tasks", "tiny_mc"])
    assert result.exit_code == 2 and "no such directory" in result.stderr
    result = runner.invoke(cli, ["eval", "sftl-none-0000", "--local"])
    assert result.exit_code == 2 and "no run" in result.stderr
    result = runner.invoke(cli, ["eval", str(model_dir)])
    assert result.exit_code == 2 and "remote eval takes a run id" in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("launcher.estimate") is not None, reason="the planner exists")
def test_remote_eval_without_the_planner_says_what_is_missing(tmp_path):
    Registry().create("sftl-tiny-rem-0001", {"name": "tiny-rem"}, state="succeeded")
    result = CliRunner().invoke(cli, ["eval", "sftl-tiny-rem-0001"])
    assert result.exit_code == 2 and "launcher.estimate" in result.output and "--local" in result.output
