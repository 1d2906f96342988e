"""`sftlaunch eval`: --local through the real harness on the tiny model, scores into the run record."""

from __future__ import annotations

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


@pytest.mark.slow
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
    assert record.eval_average == pytest.approx(saved["average"])
    # A second, quick look never overwrites the run's scores: a new dir, the record keeps the full score.
    first = (run / "eval" / "results.json").read_text()
    stored = []
    monkeypatch.setattr(Registry, "set_eval", lambda self, run_id, results: stored.append(run_id))
    again = CliRunner(mix_stderr=False).invoke(cli, ["eval", RUN, "--local", "--limit", "2", "--batch-size", "4"])
    assert again.exit_code == 0, again.output
    assert (run / "eval" / "results.json").read_text() == first
    newer = [d for d in run.iterdir() if d.name.startswith("eval-2")]
    assert len(newer) == 1 and json.loads((newer[0] / "results.json").read_text())["tasks"][0]["samples"] == 2
    assert stored == []


@pytest.mark.slow
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


@pytest.mark.slow
def test_unknown_hub_model_is_one_line_and_exit_2():
    result = CliRunner(mix_stderr=False).invoke(cli, ["eval", "nosuch/model", "--local", "--tasks", "tiny_mc"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model nosuch/model: not found on the Hub or not reachable offline; check the id, revision and HF_TOKEN")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture()
def remote_run(tmp_path, monkeypatch):
    """A finished cloud run in the registry, a planner that picks one H100, a fake SkyPilot."""
    import launcher.backends.sky as sky_mod
    from launcher.estimate import candidates
    from sftcore.recipe import load_recipe
    from tests.launcher.fake_backend import FakeCandidate, FakePlan, FakeSky, write_recipe

    recipe = load_recipe(write_recipe(tmp_path / "r", name="demo", bucket="gs://sftl-test/runs"))
    chosen = FakeCandidate(cloud="runpod", gpu="H100", usd_per_hour=2.5)
    monkeypatch.setattr(candidates, "plan", lambda r, **kw: FakePlan([chosen], chosen=chosen))
    fake = FakeSky()
    monkeypatch.setattr(sky_mod, "_backend_factory", lambda: fake)
    # The record's bucket is a local dir standing in for the recipe's gs:// one, readable here.
    Registry().create("sftl-demo-0002", recipe, state="succeeded", bucket=str(tmp_path / "r" / "bucket"), cloud="runpod")
    return fake, recipe


def test_remote_eval_renders_an_eval_only_task(remote_run):
    fake, _ = remote_run
    result = CliRunner(mix_stderr=False).invoke(cli, ["eval", "sftl-demo-0002", "--limit", "50", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    import yaml

    task = yaml.safe_load(result.stdout)
    assert task["envs"]["SFTLAUNCH_STEPS"] == "eval" and task["run"].endswith("entrypoint.sh all\n")
    assert task["resources"]["labels"] == {"sftlaunch-run": "sftl-demo-0002"}
    assert task["resources"]["accelerators"] == "H100:1"
    assert fake.launched == []  # a dry run launches nothing


def test_remote_eval_launches_tears_down_and_stores_scores(remote_run, tmp_path):
    fake, recipe = remote_run
    results = {"model": {"id": "sftl-demo-0002"}, "average": 0.42, "scores": {"tiny_mc": 0.42},
               "tasks": [{"task": "tiny_mc", "name": "tiny_mc", "metric": "acc", "filter": "none", "value": 0.42,
                          "stderr": 0.05, "shots": 0, "samples": 100}]}
    out = tmp_path / "r" / "bucket" / "sftl-demo-0002" / "eval"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(results))  # what the remote job writes to the bucket
    result = CliRunner(mix_stderr=False).invoke(cli, ["eval", "sftl-demo-0002"])
    assert result.exit_code == 0, result.stderr
    assert [c[0] for c in fake.calls if c[0] in ("launch", "down")] == ["launch", "down"]
    assert Registry().get("sftl-demo-0002").eval_average == pytest.approx(0.42)
    assert "| sftl-demo-0002 | 42.00 | 42.00 |" in result.stdout


def test_remote_eval_with_base_asks_the_job_for_both_rows(remote_run, tmp_path):
    fake, recipe = remote_run
    result = CliRunner(mix_stderr=False).invoke(cli, ["eval", "sftl-demo-0002", "--with-base", "--parallel", "model",
                                                      "--dry-run"])
    assert result.exit_code == 0, result.stderr
    import yaml

    envs = yaml.safe_load(result.stdout)["envs"]
    assert envs["SFTLAUNCH_EVAL_WITH_BASE"] == "1" and envs["SFTLAUNCH_EVAL_PARALLEL"] == "model"
    bucket = tmp_path / "r" / "bucket" / "sftl-demo-0002"
    for name, model, value in (("eval", {"id": "sftl-demo-0002", "base_model": "org/base"}, 0.6),
                               ("eval-base", {"id": "org/base"}, 0.3)):
        (bucket / name).mkdir(parents=True)
        (bucket / name / "results.json").write_text(json.dumps({"model": model, "average": value, "tasks": [
            {"task": "tiny_mc", "name": "tiny_mc", "metric": "acc", "filter": "none", "value": value,
             "stderr": 0.05, "shots": 0, "samples": 100}]}))
    result = CliRunner(mix_stderr=False).invoke(cli, ["eval", "sftl-demo-0002", "--with-base"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines.index("| org/base | 30.00 | 30.00 |") < lines.index("| sftl-demo-0002 | 60.00 | 60.00 |")
    assert Registry().get("sftl-demo-0002").eval_average == pytest.approx(0.6)


@pytest.mark.slow
def test_base_results_in_an_unreadable_bucket_are_unknown_not_a_failed_eval(tmp_path, monkeypatch, capfd):
    """Credentials that cannot be refreshed (here: a made-up ADC token, offline) make the base row
    unknown; the eval that already succeeded stays a success, with no traceback."""
    from launcher import run_outputs
    from launcher.commands.eval import _bucket_base_results
    from launcher.run_record import RunRecord
    from launcher.run_state import RunState

    adc = tmp_path / "adc.json"
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "x.apps.googleusercontent.com",
                               "client_secret": "s", "refresh_token": "r"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setattr(run_outputs, "BUCKET_READ_TIMEOUT_S", 2)
    record = RunRecord(run_id="sftl-demo-0002", name="demo", state=RunState.SUCCEEDED, created_at=0.0, updated_at=0.0,
                       bucket="gs://sftl-test-no-such-bucket")
    assert _bucket_base_results(record) is None
    assert "Traceback" not in capfd.readouterr().err


def test_backend_flag_reaches_the_job(remote_run):
    """--backend: remote, into the eval task's mounted recipe (the job reads eval.backend there);
    --local, as the job's --backend flag, else the run recipe's eval.backend."""
    import yaml

    from launcher.commands.eval import eval_args
    from launcher.run_record import RunRecord
    from launcher.run_state import RunState
    from sftcore.contract import CONTAINER_RECIPE

    result = CliRunner(mix_stderr=False).invoke(cli, ["eval", "sftl-demo-0002", "--backend", "hf", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    mounted = yaml.safe_load(open(yaml.safe_load(result.stdout)["file_mounts"][CONTAINER_RECIPE]).read())
    assert mounted["eval"]["backend"] == "hf"
    record = RunRecord(run_id="sftl-demo-0002", name="demo", state=RunState.SUCCEEDED, created_at=0.0, updated_at=0.0,
                       recipe={"eval": {"preset": "leaderboard-v2", "backend": "vllm"}})
    assert eval_args(record, None, None, None, None, None, False)[-2:] == ["--backend", "vllm"]
    assert eval_args(record, None, None, None, None, None, False, "hf")[-2:] == ["--backend", "hf"]
    assert "--backend" not in eval_args(None, "leaderboard-v1", None, None, None, None, False)
