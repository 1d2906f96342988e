"""`sftlaunch up` on a fake SkyPilot: the whole lifecycle without a cloud."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from launcher import run_outputs
from launcher.cli import cli
from launcher.runs import Registry
from tests.launcher.fake_backend import FakeCandidate, FakePlan
from tests.launcher.fake_backend import write_recipe as _write_recipe

CANARY = "hf_CANARYupTOKEN0123456789abcdefXYZ"
CLOUD_BUCKET = "gs://sftl-test/runs"


def write_recipe(dir_, bucket=CLOUD_BUCKET, **kwargs):
    """The fake's cloud recipe with its output in a gs:// bucket, as a cloud run's must be."""
    return _write_recipe(dir_, bucket=bucket, **kwargs)


@pytest.fixture(autouse=True)
def bucket_store(monkeypatch):
    """The bucket, in memory: the registry's refresh reads exit records and progress from it and
    the budget guard writes its stop flag there; nothing in these tests may reach a real bucket."""
    store: dict[str, str] = {}
    monkeypatch.setattr(run_outputs, "read_text", store.get)
    monkeypatch.setattr(run_outputs, "write_text", store.__setitem__)
    # preflight's bucket probe too (tests/launcher/test_preflight.py probes a moto bucket)
    monkeypatch.setattr("launcher.preflight.probe_bucket", lambda uri, timeout=None: ("pass", "in-memory bucket", ""))
    return store


@pytest.fixture
def plan(monkeypatch):
    """The planner's answer: runpod cheapest, gcp next (spot follows the recipe)."""
    state = {"total": 5.0}

    def fake_plan(recipe, cloud=None, gpu=None, spot=None):
        spot = recipe.resources.spot
        cands = [FakeCandidate("runpod", spot=spot, usd_per_hour=2.5, total_usd=state["total"]),
                 FakeCandidate("gcp", spot=spot, usd_per_hour=3.0, total_usd=state["total"] * 1.2, region="us-central1")]
        cands = [c for c in cands if cloud is None or c.cloud == cloud]
        return FakePlan(cands, cands[0] if cands else None, None if cands else "no GPU")

    monkeypatch.setattr("launcher.commands.up_cloud._candidates", fake_plan)
    return state


def up(*args, input=None):
    return CliRunner().invoke(cli, ["up", *map(str, args)], input=input)


def only_record():
    runs = Registry().list()
    assert len(runs) == 1
    return Registry().get(runs[0].run_id)


def test_on_demand_success_streams_records_and_downs_the_cluster(tmp_path, fake, plan):
    res = up(write_recipe(tmp_path / "r"), "--yes")
    assert res.exit_code == 0, res.output
    rec = only_record()
    rid = rec.run_id
    assert res.output.strip().splitlines()[-1] == rid
    for text in ("cloud     runpod", "H100×1", "$2.50/h", "ETA       2.0 h", "~$5.00", "checkpoints →"):
        assert text in res.output
    assert "progress: step 10/20 (50%)" in res.output
    kind, task, _secrets, autostop = fake.launched[0]
    assert kind == "cluster" and task["name"] == rid and task["resources"]["labels"] == {"sftlaunch-run": rid}
    assert autostop == {"idle_minutes": 30, "down": True}  # idle after its job: deleted, not stopped
    assert rec.state == "succeeded" and rec.backend == "cluster" and rec.cluster_name == rid
    assert (rec.progress_step, rec.progress_total) == (20, 20)
    assert [h["state"] for h in rec.history] == ["launching", "running", "succeeded"]
    assert ("down", rid) in fake.calls and rid not in fake.clusters  # the last step: cluster gone
    assert rec.usd_per_hour == 2.5 and rec.checkpoint_uri.endswith(f"{rid}/checkpoints/")


def test_job_failure_exits_1_and_still_downs(tmp_path, fake, plan):
    fake.outcome = "FAILED"
    res = up(write_recipe(tmp_path / "r"), "--yes")
    assert res.exit_code == 1, res.output
    rec = only_record()
    assert rec.state == "failed" and ("down", rec.run_id) in fake.calls


def test_launch_error_is_recorded_and_half_cluster_downed(tmp_path, fake, plan):
    fake.launch_error = RuntimeError("ResourcesUnavailableError: no H100 in any region")
    res = up(write_recipe(tmp_path / "r"), "--yes")
    assert res.exit_code == 1 and "no H100" in res.output
    rec = only_record()
    assert rec.state == "failed" and "launch failed" in rec.history[-1]["detail"]
    assert ("down", rec.run_id) in fake.calls


def test_spot_is_a_managed_job_that_recovers(tmp_path, fake, plan, monkeypatch):
    read = []
    monkeypatch.setattr(run_outputs, "read_text", lambda uri: read.append(uri))  # no network here: an empty bucket
    fake.preemptions = 1
    res = up(write_recipe(tmp_path / "r", spot=True, clouds=("gcp", "runpod"), bucket="gs://sftl-test/runs"), "--yes")
    assert res.exit_code == 0, res.output
    rec = only_record()
    kind, task, _, _ = fake.launched[0]
    assert kind == "managed" and "job_recovery" in task["resources"] and task["resources"]["use_spot"]
    assert rec.backend == "managed" and rec.job_id == "1" and rec.cluster_name is None
    states = [h["state"] for h in rec.history]
    assert "recovering" in states and states[-1] == "succeeded"
    assert rec.recovery_count == 1
    assert not any(c[0] == "down" for c in fake.calls)
    assert read[0] == f"gs://sftl-test/runs/{rec.run_id}/exit.json"  # a budget stop? no record: no


def test_detach_returns_after_submission(tmp_path, fake, plan):
    res = up(write_recipe(tmp_path / "r"), "--yes", "--detach")
    assert res.exit_code == 0, res.output
    rec = only_record()
    assert rec.state == "running" and res.output.strip().splitlines()[-1] == rec.run_id
    assert not any(c[0] == "tail_logs" for c in fake.calls)


def test_ctrl_c_while_streaming_leaves_the_run_alone(tmp_path, fake, plan):
    fake.interrupt_after = 2
    res = up(write_recipe(tmp_path / "r"), "--yes")
    assert res.exit_code == 130, res.output
    rec = only_record()
    rid = rec.run_id
    assert f"sftlaunch logs {rid} --follow" in res.output and f"sftlaunch teardown {rid}" in res.output
    assert not any(c[0] in ("down", "jobs_cancel") for c in fake.calls)
    assert rid in fake.clusters and rec.state == "running"


def test_no_credentials_refuses_with_what_each_cloud_needs(tmp_path, fake, plan):
    fake.enabled = set()
    res = up(write_recipe(tmp_path / "r"), "--yes")
    assert res.exit_code == 2
    assert "runpod config" in res.output and "~/.runpod/config.toml" in res.output
    assert "gcloud auth application-default login" in res.output
    assert Registry().list() == [] and not fake.launched


def test_dry_run_without_credentials_still_shows_the_cost(tmp_path, fake, plan):
    fake.enabled = set()
    res = up(write_recipe(tmp_path / "r"), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "~$5.00" in res.output and "~/.runpod/config.toml" in res.output and "nothing launched" in res.output
    assert "GCP: install the gcloud CLI" in res.output  # every cloud without credentials, and what it needs
    assert Registry().list() == [] and not fake.launched and not any(c[0] == "optimize" for c in fake.calls)


def test_dry_run_with_credentials_runs_the_optimizer_only(tmp_path, fake, plan):
    fake.enabled = {"gcp"}
    res = up(write_recipe(tmp_path / "r"), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "using gcp instead" in res.output
    assert "  gcp (chosen): H100×1, ~$6.00 planned\n    gcp(H100:1)" in res.output
    assert "RunPod: `pip install runpod && runpod config`" in res.output  # the cloud left out, and why
    # the check and the optimizer are asked without SkyPilot's API server (SkyBackend.offline)
    assert [c[0] for c in fake.calls] == ["offline", "check", "optimize"] and Registry().list() == []


def test_dry_run_asks_the_optimizer_on_every_cloud_with_credentials(tmp_path, fake, plan):
    res = up(write_recipe(tmp_path / "r", clouds=("runpod", "gcp", "lambda")), "--dry-run")
    assert res.exit_code == 0, res.output
    picks = res.output.split("SkyPilot optimizer (dry run)")[1]
    assert "runpod (chosen): H100×1, ~$5.00 planned\n    the launch task, in order: runpod H100:1 → gcp H100:1\n" \
           "    runpod(H100:1)" in picks
    assert "gcp: H100×1, ~$6.00 planned\n    gcp(H100:1)" in picks
    assert "lambda: no planned GPU fits there" in picks  # the planner offered nothing on lambda
    assert len([c for c in fake.calls if c[0] == "optimize"]) == 2 and Registry().list() == []


def _skypilot_without(fake, monkeypatch, *gone: str) -> list[dict]:
    """The fake optimizer as SkyPilot's behaves on an ordered list: the first choice on a cloud that
    has capacity, ResourcesUnavailableError when none has. Returns the tasks it was asked about."""
    asked: list[dict] = []

    def optimize(task):
        asked.append(task)
        res = task["resources"]
        for choice in [{**res, **o} for o in res["ordered"]] if "ordered" in res else [res]:
            if choice["cloud"] not in gone:
                return f"{choice['cloud']}({choice['accelerators']})"
        raise RuntimeError(f"ResourcesUnavailableError: no H100 on {', '.join(gone)}\ndetails")

    monkeypatch.setattr(fake, "optimize", optimize)
    return asked


def test_dry_run_asks_the_optimizer_about_the_launch_task_with_its_fallbacks(tmp_path, fake, plan, monkeypatch):
    asked = _skypilot_without(fake, monkeypatch, "runpod")
    res = up(write_recipe(tmp_path / "r"), "--dry-run")
    assert res.exit_code == 0, res.output
    picks = res.output.split("SkyPilot optimizer (dry run)")[1]
    # the chosen cloud has no capacity: SkyPilot would start the fallback, and the dry run says so
    assert "runpod (chosen): H100×1, ~$5.00 planned\n    the launch task, in order: runpod H100:1 → gcp H100:1\n" \
           "    gcp(H100:1)" in picks, picks
    assert [o["cloud"] for o in asked[0]["resources"]["ordered"]] == ["runpod", "gcp"]
    assert "ordered" not in asked[1]["resources"]  # other clouds: their own cheapest choice alone
    assert Registry().list() == [] and not fake.launched


def test_dry_run_refuses_when_skypilot_finds_nothing_for_the_launch_task(tmp_path, fake, plan, monkeypatch):
    _skypilot_without(fake, monkeypatch, "runpod")
    res = up(write_recipe(tmp_path / "r"), "--dry-run", "--fallbacks", "1")  # no fallback to fall to
    assert res.exit_code == 2
    assert "no H100 on runpod" in res.output and "details" not in res.output and "--cloud gcp" in res.output
    _skypilot_without(fake, monkeypatch, "runpod", "gcp")
    res = up(write_recipe(tmp_path / "r2"), "--dry-run")
    assert res.exit_code == 2 and "nor for its 1 fallback(s)" in res.output, res.output


def test_refusals_before_spending(tmp_path, fake, plan):
    plan["total"] = 500.0
    res = up(write_recipe(tmp_path / "a"), "--yes")
    assert res.exit_code == 2 and "max_usd" in res.output and "exceeds" in res.output
    plan["total"] = 5.0
    res = up(write_recipe(tmp_path / "b", spot=True, bucket=False, clouds=("gcp",)), "--yes")
    assert res.exit_code == 2 and "bucket" in res.output
    res = up(write_recipe(tmp_path / "b2", bucket=False, clouds=("gcp",)), "--yes", "--bucket", "gs://A")
    assert res.exit_code == 2 and "--bucket: output.bucket: " in res.output and "'gs://A'" in res.output
    assert "Traceback" not in res.output
    res = up(write_recipe(tmp_path / "c"), "--yes", "--cloud", "lambda")
    assert res.exit_code == 2 and "resources.clouds" in res.output
    res = up(write_recipe(tmp_path / "d", hub_repo="me/demo"), "--yes")
    assert res.exit_code == 2 and "HF_TOKEN" in res.output
    res = up(write_recipe(tmp_path / "e"))  # no --yes and no terminal
    assert res.exit_code == 2 and "--yes" in res.output
    assert not fake.launched and Registry().list() == []


def test_refuses_a_run_that_would_persist_nothing(tmp_path, fake, plan):
    path = write_recipe(tmp_path / "r", bucket=False)
    res = up(path, "--yes")
    assert res.exit_code == 2
    assert ("results would be lost when the cluster is torn down: set output.bucket (gs://, s3://) "
            "or output.hub_repo, or pass --bucket URI") in res.output
    assert not fake.launched and not fake.calls and Registry().list() == []  # refused before any SkyPilot call
    res = up(path, "--dry-run")  # the dry run warns and still shows the plan and cost
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "results would be lost" in res.output and "~$5.00" in res.output
    assert not fake.launched and Registry().list() == []
    res = up(path, "--yes", "--bucket", "/tmp/not-a-bucket")
    assert res.exit_code == 2 and "--bucket: output.bucket: " in res.output and "gs:// or s3://" in res.output
    assert not fake.launched


def _job_bucket(task) -> str | None:
    """The bucket the job will use: its mounted recipe's output.bucket (not an env variable)."""
    import yaml

    assert "SFTLAUNCH_BUCKET" not in task["envs"]
    with open(task["file_mounts"]["/sftlaunch/recipe.yaml"]) as fh:
        return yaml.safe_load(fh)["output"]["bucket"]


def test_bucket_flag_and_env_override_output_bucket(tmp_path, fake, plan, monkeypatch):
    res = up(write_recipe(tmp_path / "r", bucket=False), "--yes", "--detach", "--bucket", "gs://mine/sftl")
    assert res.exit_code == 0, res.output
    _, task, _, _ = fake.launched[0]
    rec = only_record()
    assert _job_bucket(task) == "gs://mine/sftl" and rec.bucket == "gs://mine/sftl"  # what the job reads
    assert rec.checkpoint_uri == f"gs://mine/sftl/{rec.run_id}/checkpoints/"
    monkeypatch.setenv("SFTLAUNCH_BUCKET", "s3://env-bucket/x")
    res = up(write_recipe(tmp_path / "s", name="demo2"), "--yes", "--detach")
    assert res.exit_code == 0, res.output
    assert _job_bucket(fake.launched[1][1]) == "s3://env-bucket/x"
    assert "replaces" in res.output  # the recipe named another bucket: said so


def test_hub_repo_alone_is_enough_to_launch(tmp_path, fake, plan, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", CANARY)
    res = up(write_recipe(tmp_path / "r", bucket=False, hub_repo="me/demo"), "--yes", "--detach")
    assert res.exit_code == 0, res.output
    assert "no output.bucket: checkpoints and logs are lost at teardown" in res.output


def test_a_budget_stop_in_the_job_is_recorded_as_stopped(tmp_path, fake, plan):
    # The entrypoint's line when the in-job guard stopped training; the job itself exits 0.
    fake.log_lines = fake.log_lines[:3] + [
        "(head, rank=0, pid=77) sftlaunch: run stopped before the end of training "
        '({"reason": "budget", "step": 10}); eval and publish skipped']
    res = up(write_recipe(tmp_path / "r"), "--yes")
    assert res.exit_code == 0, res.output
    rec = only_record()
    assert rec.state == "stopped" and "budget" in rec.history[-1]["detail"]
    assert ("down", rec.run_id) in fake.calls


def test_gpu_no_cloud_offers(tmp_path, fake, monkeypatch):
    monkeypatch.setattr("launcher.commands.up_cloud._candidates",
                        lambda r, cloud=None, gpu=None, spot=None: FakePlan([], None, "no allowed cloud offers TPU-v9"))
    res = up(write_recipe(tmp_path / "r"), "--yes", "--gpu", "TPU-v9:1")
    assert res.exit_code == 2 and "TPU-v9" in res.output and not fake.launched


def test_canary_secret_never_leaves_the_launch_call(tmp_path, fake, plan, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", CANARY)
    monkeypatch.setenv("WANDB_API_KEY", CANARY + "wandb")
    fake.log_lines = fake.log_lines + [f"debug: token={CANARY}", f"error: 401 for {CANARY}wandb"]
    res = up(write_recipe(tmp_path / "r", hub_repo="me/demo"), "--yes")
    assert res.exit_code == 0, res.output
    _, task, secrets, _ = fake.launched[0]
    assert secrets == {"HF_TOKEN": CANARY, "WANDB_API_KEY": CANARY + "wandb"}  # SkyPilot got them...
    assert task["secrets"] == {"HF_TOKEN": None, "WANDB_API_KEY": None}  # ...by name in the task
    assert CANARY not in res.output and "****" in res.output
    status = CliRunner().invoke(cli, ["status", "--json"])
    assert CANARY not in status.output
    assert json.loads(status.output)[0]["state"] == "succeeded"
    import os

    for root in (os.environ["SFTLAUNCH_HOME"], str(tmp_path)):
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    assert CANARY.encode() not in fh.read(), os.path.join(dirpath, f)


def test_real_planner_dry_run_and_unoffered_gpu(fake):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "llama2-70b-qlora.yaml"
    fake.enabled = set()
    res = up(recipe, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "Plan for" in res.output and "price" in res.output and "Lambda: put `api_key" in res.output
    fake.enabled = {"gcp"}  # only a cloud where the run costs more than max_usd: refused
    res = up(recipe, "--dry-run")
    assert res.exit_code == 2 and "on gcp the estimate" in res.output and "max_usd" in res.output
    fake.enabled = {"lambda", "gcp"}
    res = up(recipe, "--dry-run")
    assert res.exit_code == 0, res.output
    assert ("optimize", res.output.split("run id    ")[1].split()[0]) in fake.calls
    res = up(recipe, "--dry-run", "--gpu", "TPU-v9:1")
    assert res.exit_code == 2 and not fake.launched


def test_bucket_flag_satisfies_the_spot_rule(tmp_path, fake, plan):
    """A spot recipe without output.bucket is launchable with --bucket: the override is applied
    before the recipe's own rules run, not patched onto an already-rejected recipe."""
    path = write_recipe(tmp_path / "s", spot=True, bucket=False, clouds=("gcp",))
    res = up(path, "--yes", "--detach")
    assert res.exit_code == 2 and "spot" in res.output
    res = up(path, "--yes", "--detach", "--bucket", "gs://mine/sftl")
    assert res.exit_code == 0, res.output
    assert _job_bucket(fake.launched[-1][1]) == "gs://mine/sftl"
    res = up(path, "--yes", "--detach", "--bucket", "gs://Bad Bucket")
    assert res.exit_code == 2 and "--bucket: output.bucket: " in res.output and "'gs://Bad Bucket'" in res.output
    assert "Traceback" not in res.output


def test_a_cloud_run_never_writes_to_a_local_path(tmp_path, fake, plan):
    """A local output.bucket would be resolved here, handed to the VM, written to its disk, and
    deleted with it by autostop: refused before anything launches, from the file or the flag."""
    path = write_recipe(tmp_path / "r", bucket="./out", clouds=("gcp",))
    res = up(path, "--yes")
    assert res.exit_code == 2 and f"{path}:" in res.output and "output.bucket: './out' is a local path" in res.output
    assert "gs:// or s3://" in res.output and "Traceback" not in res.output
    res = up(path, "--yes", "--detach", "--bucket", "s3://mine/x")  # the flag replaces it: fine
    assert res.exit_code == 0, res.output
    assert _job_bucket(fake.launched[-1][1]) == "s3://mine/x"
    assert "note: --bucket s3://mine/x replaces" in res.output and "output.bucket ./out" in res.output


def test_the_environments_bucket_names_itself_and_skips_local_runs(tmp_path, fake, plan, monkeypatch):
    from launcher.commands.up import _load

    monkeypatch.setenv("SFTLAUNCH_BUCKET", "./somewhere")
    res = up(write_recipe(tmp_path / "r", bucket=False), "--yes")
    assert res.exit_code == 2 and "SFTLAUNCH_BUCKET: output.bucket: './somewhere' is a local path" in res.output
    assert not fake.launched
    local = write_recipe(tmp_path / "l", bucket=False, clouds=("local",))
    assert _load(str(local), local=False, bucket="gs://env/x", from_cli=False).output.bucket is None
    assert _load(str(local), local=False, bucket="gs://cli/x", from_cli=True).output.bucket == "gs://cli/x"


def test_a_failed_launch_downs_only_a_cluster_proven_ours(fake, plan, tmp_path, monkeypatch):
    """after a failed launch, `down(run_id)` acted by name. A same-named cluster that is
    not labelled for the run (someone's, or a stale one) is left alone and named in a warning."""
    from launcher.backends.sky import Cluster

    recipe = write_recipe(tmp_path / "r")
    fake.launch_error = RuntimeError("no capacity")
    assert fake.foreign_actions == []
    real_launch = fake.launch

    def launch_over_a_stranger(task, cluster_name, *args, **kwargs):
        try:
            return real_launch(task, cluster_name, *args, **kwargs)
        finally:
            fake.clusters[cluster_name] = Cluster(cluster_name, "UP", {}, user_hash="u-colleague")

    monkeypatch.setattr(fake, "launch", launch_over_a_stranger)
    res = CliRunner().invoke(cli, ["up", str(recipe), "--yes", "--detach"])
    assert res.exit_code == 1, res.output
    assert "left alone" in res.output and not [c for c in fake.calls if c[0] == "down"]
    assert fake.foreign_actions == []


def test_up_renders_the_failover_order_within_max_usd(tmp_path, fake, plan):
    """The next fitting offers go to SkyPilot as ordered resources (no capacity on runpod → gcp);
    the in-job budget guard gets each choice's rate (it charges the one launched, jobs/rate.py);
    a fallback over max_usd is left out."""
    fake.enabled = {"runpod", "gcp"}
    res = up(write_recipe(tmp_path / "r"), "--yes", "--detach")
    assert res.exit_code == 0, res.output
    assert "failover  runpod H100:1 ~$5 → gcp H100:1 ~$6" in res.output
    task = fake.launched[-1][1]
    assert [(c["cloud"], c["accelerators"]) for c in task["resources"]["ordered"]] == [("runpod", "H100:1"),
                                                                                      ("gcp", "H100:1")]
    rates = json.loads(task["envs"]["SFTLAUNCH_RATES"])
    assert [(r["cloud"], r["accelerator"], r["count"], r["usd_per_hour"]) for r in rates] == [
        ("runpod", "H100", 1, 2.5), ("gcp", "H100", 1, 3.0)]
    assert "SFTLAUNCH_USD_PER_HOUR" not in task["envs"]  # no longer the dearest of all
    res = up(write_recipe(tmp_path / "t", name="demo1"), "--yes", "--detach", "--fallbacks", "1")
    assert res.exit_code == 0, res.output
    assert "ordered" not in fake.launched[-1][1]["resources"]
    plan["total"] = 45.0  # gcp's fallback would be $54, over max_usd $50
    res = up(write_recipe(tmp_path / "s", name="demo2"), "--yes", "--detach")
    assert res.exit_code == 0, res.output
    assert "failover  " not in res.output and "ordered" not in fake.launched[-1][1]["resources"]


def test_the_record_says_which_fallback_ran_and_its_price(tmp_path, fake, plan, monkeypatch):
    """No capacity for runpod: SkyPilot launched the gcp fallback; the run record says so."""
    real = fake.launch

    def launch(task, cluster_name, *a, **k):
        job = real(task, cluster_name, *a, **k)
        fake.clusters[cluster_name].cloud = "GCP"  # as SkyPilot's status reports it
        fake.clusters[cluster_name].region = "us-central1"
        fake.clusters[cluster_name].resources = "1x GCP(a3-highgpu-1g, {'H100': 1})"
        return job

    monkeypatch.setattr(fake, "launch", launch)
    res = up(write_recipe(tmp_path / "r"), "--yes", "--detach")
    assert res.exit_code == 0, res.output
    assert "SkyPilot launched gcp H100:1 ($3.00/h" in res.output
    rec = only_record()
    assert (rec.cloud, rec.region, rec.usd_per_hour) == ("gcp", "us-central1", 3.0)


def test_sighup_while_launching_a_cloud_run_says_what_is_left_running(tmp_path, fake, plan, monkeypatch):
    """a real SIGHUP (the terminal closed) while SkyPilot provisions: up says it was
    launching, names the run and how to check and tear it down, exit 129; nothing is downed."""
    import os
    import signal
    import time

    real_launch = type(fake).launch

    def launch_then_hangup(self, *a, **k):
        real_launch(self, *a, **k)
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(5)  # the handler raises here

    monkeypatch.setattr(type(fake), "launch", launch_then_hangup)
    res = up(write_recipe(tmp_path / "r"), "--yes")
    assert res.exit_code == 129, res.output
    rid = only_record().run_id
    assert f"got SIGHUP while launching {rid}" in res.output and f"sftlaunch teardown {rid}" in res.output
    assert "Traceback" not in res.output and not any(c[0] in ("down", "jobs_cancel") for c in fake.calls)
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_plan_render_and_up_give_one_launch_order_for_the_same_usable_clouds(tmp_path, fake, monkeypatch):
    """llama2-70b: the cheapest fits are on lambda; with credentials for runpod and gcp only,
    `up` launches runpod's. `plan --check-credentials` prints that order and `render
    --check-credentials` writes it; without the flag plan says whose credentials it did not check."""
    from pathlib import Path

    import yaml

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "llama2-70b-qlora.yaml")
    monkeypatch.setenv("SFTLAUNCH_HOME", str(tmp_path / "home"))
    fake.enabled = {"runpod", "gcp"}

    res = CliRunner().invoke(cli, ["plan", recipe, "--json", "--check-credentials"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    planned = [(c["cloud"], c["accelerators"]) for c in out["failover"]]
    assert out["credentials_checked"] == ["gcp", "runpod"] and out["credentials_note"] is None
    assert len(planned) == 3 and {c for c, _ in planned} == {"runpod"}, planned

    res = CliRunner().invoke(cli, ["render", recipe, "--check-credentials"])
    assert res.exit_code == 0, res.output
    rendered = [(c["cloud"], c["accelerators"]) for c in yaml.safe_load(res.output)["resources"]["ordered"]]

    asked = _skypilot_without(fake, monkeypatch)
    res = up(recipe, "--dry-run")
    assert res.exit_code == 0, res.output
    launched = [(c["cloud"], c["accelerators"]) for c in asked[0]["resources"]["ordered"]]
    assert planned == rendered == launched

    res = CliRunner().invoke(cli, ["plan", recipe, "--json"])  # credentials not asked: every allowed cloud
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["credentials_checked"] is None and out["failover"][0]["cloud"] == "lambda"
    assert "credentials not checked for lambda, runpod, gcp" in out["credentials_note"]
    res = CliRunner().invoke(cli, ["plan", recipe])
    assert res.exit_code == 0 and "credentials not checked for lambda, runpod, gcp" in res.output, res.output

    fake.enabled = set()
    res = CliRunner().invoke(cli, ["plan", recipe, "--check-credentials"])
    assert res.exit_code == 2 and "nothing that fits is on a cloud with credentials" in res.output, res.output
