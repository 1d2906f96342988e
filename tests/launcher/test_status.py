"""`sftlaunch status`: refresh from the (fake) SkyPilot, the table, --json, the budget guard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher import lifecycle, run_outputs
from launcher.backends.sky import Cluster, ManagedJob
from launcher.cli import cli
from launcher.runs import Registry
from sftcore import store
from tests.launcher.fake_backend import launched


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_status_table_and_json(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-aaaa", usd=3.0, hours_ago=2.0)
    reg.update("sftl-demo-aaaa", progress_step=30, progress_total=120)
    reg.create("sftl-demo-bbbb", {"name": "demo"}, backend="local", cloud="local", usd_per_hour=0.0, state="succeeded")
    reg.set_eval("sftl-demo-bbbb", {"scores": {"tiny_mc": 0.9, "tiny_gen": 0.5}})
    res = run("status")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["RUN", "RECIPE", "WHERE", "STATE", "PROGRESS", "$", "SO", "FAR", "EVAL", "AVG"]
    row = next(line for line in lines if line.startswith("sftl-demo-aaaa"))
    assert "gcp A100-80GB×2" in row and "running" in row and "30/120 (25%)" in row and "$6.00" in row
    assert "0.700" in next(line for line in lines if line.startswith("sftl-demo-bbbb"))
    data = json.loads(run("status", "--json").output)
    assert {d["run_id"] for d in data} == {"sftl-demo-aaaa", "sftl-demo-bbbb"}
    one = json.loads(run("--json", "status", "sftl-demo-a").output)
    assert one["run_id"] == "sftl-demo-aaaa" and one["cost_usd"] == pytest.approx(6.0, abs=0.01)


def test_refresh_finishes_a_detached_cluster_run_and_downs_it(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-cccc")
    fake.cluster_jobs["sftl-demo-cccc"] = "SUCCEEDED"
    res = run("status")
    assert res.exit_code == 0 and "succeeded" in res.output
    assert ("down", "sftl-demo-cccc") in fake.calls
    # Finished runs are not queried again.
    fake.calls.clear()
    run("status")
    assert fake.calls == []


def test_refresh_managed_preemption_then_failure(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-dddd", kind="managed")
    job = fake.jobs[1]
    job.status, job.recovery_count = "RECOVERING", 1
    run("status")
    assert reg.get("sftl-demo-dddd").state == "recovering"
    job.status, job.failure_reason = "FAILED", "exit 1"
    run("status")
    rec = reg.get("sftl-demo-dddd")
    assert rec.state == "failed" and "exit 1" in rec.history[-1]["detail"]


def test_refresh_failure_shows_recorded_states(fake, monkeypatch):
    reg = Registry()
    launched(fake, reg, "sftl-demo-eeee")

    def broken(names=None):
        raise ConnectionError("API server unreachable")

    monkeypatch.setattr(fake, "status", broken)
    res = run("status")
    assert res.exit_code == 0 and "could not refresh" in res.output and "running" in res.output


def test_budget_guard_asks_the_job_to_checkpoint_then_records_the_stop(fake, tmp_path):
    reg = Registry()
    bucket = tmp_path / "bucket"
    launched(fake, reg, "sftl-demo-ffff", usd=10.0, max_usd=15.0, bucket=str(bucket), hours_ago=2.0)
    run("status")
    rec = reg.get("sftl-demo-ffff")
    flag = bucket / "sftl-demo-ffff" / "control" / "stop"
    assert rec.state == "stopping" and flag.exists()
    assert json.loads(flag.read_text())["max_usd"] == 15.0
    assert ("down", "sftl-demo-ffff") not in fake.calls  # the job gets to save its checkpoint first
    # The job saw the flag, checkpointed and exited 0: recorded as stopped (not succeeded), cluster downed.
    fake.cluster_jobs["sftl-demo-ffff"] = "SUCCEEDED"
    run("status")
    rec = reg.get("sftl-demo-ffff")
    assert rec.state == "stopped" and "budget" in rec.history[-1]["detail"]
    assert ("down", "sftl-demo-ffff") in fake.calls


def test_budget_guard_hard_stops_after_the_grace_period_or_without_a_bucket(fake, tmp_path):
    reg = Registry()
    launched(fake, reg, "sftl-demo-9a01", usd=10.0, max_usd=15.0, bucket=str(tmp_path / "b"), hours_ago=2.0)
    run("status")
    rec = reg.get("sftl-demo-9a01")
    lifecycle.guard_budget(reg, fake, rec, now=rec.stop_requested_at + lifecycle.STOP_GRACE_S + 1)
    assert reg.get("sftl-demo-9a01").state == "stopped" and ("down", "sftl-demo-9a01") in fake.calls
    launched(fake, reg, "sftl-demo-9a02", kind="managed", usd=10.0, max_usd=15.0, hours_ago=2.0)
    run("status")
    rec = reg.get("sftl-demo-9a02")
    assert rec.state == "stopped" and "no bucket" in rec.history[-1]["detail"]
    assert ("jobs_cancel", int(rec.job_id)) in fake.calls


def test_under_budget_nothing_happens(fake, tmp_path):
    reg = Registry()
    launched(fake, reg, "sftl-demo-9a03", usd=1.0, max_usd=15.0, bucket=str(tmp_path / "b"), hours_ago=1.0)
    run("status")
    assert reg.get("sftl-demo-9a03").state == "running"
    assert not Path(tmp_path / "b").exists()


def _end_record(bucket, run_id, **fields):
    d = bucket / run_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "exit.json").write_text(json.dumps({"exit_code": 0, "stopped": None, "at": time.time() - 60, **fields}))


def test_status_without_a_jobs_controller(fake, tmp_path):
    """SkyPilot raises ClusterNotUpError("No in-progress managed jobs.") for the queue when no
    controller is up: status still works, and managed runs are settled from their exit record."""
    reg = Registry()
    bucket = tmp_path / "bucket"
    launched(fake, reg, "sftl-demo-9a04", kind="managed", bucket=str(bucket), hours_ago=2.0)
    launched(fake, reg, "sftl-demo-9a05", kind="managed", bucket=str(bucket), hours_ago=2.0)
    launched(fake, reg, "sftl-demo-9a06", kind="managed", bucket=str(bucket), hours_ago=2.0)
    launched(fake, reg, "sftl-demo-9a07")  # an on-demand run alongside
    fake.controller_up = False  # the controller autostopped after the jobs ended
    _end_record(bucket, "sftl-demo-9a04")
    _end_record(bucket, "sftl-demo-9a05", stopped={"reason": "budget", "step": 7})
    res = run("status")
    assert res.exit_code == 0, res.output
    assert "could not refresh" not in res.output and ("jobs_queue",) in fake.calls
    assert reg.get("sftl-demo-9a04").state == "succeeded"
    stopped = reg.get("sftl-demo-9a05")
    assert stopped.state == "stopped" and "budget" in stopped.history[-1]["detail"]
    lost = reg.get("sftl-demo-9a06")
    assert lost.state == "failed" and "left no exit record" in lost.history[-1]["detail"]
    assert reg.get("sftl-demo-9a07").state == "running"
    # Cost ends when the job did (its exit record), not when status happened to look.
    assert reg.get("sftl-demo-9a04").cost_usd < reg.get("sftl-demo-9a06").cost_usd
    assert json.loads(run("status", "--json", "sftl-demo-9a04").output)["state"] == "succeeded"


def test_status_records_a_job_side_budget_stop_of_a_detached_cluster_run(fake, tmp_path):
    reg = Registry()
    bucket = tmp_path / "bucket"
    launched(fake, reg, "sftl-demo-9a08", bucket=str(bucket))
    _end_record(bucket, "sftl-demo-9a08", stopped={"reason": "budget"})
    fake.cluster_jobs["sftl-demo-9a08"] = "SUCCEEDED"  # the entrypoint ends a stop with exit 0
    run("status")
    rec = reg.get("sftl-demo-9a08")
    assert rec.state == "stopped" and "eval and publish skipped" in rec.history[-1]["detail"]
    assert ("down", "sftl-demo-9a08") in fake.calls


@pytest.fixture
def hanging_s3(monkeypatch):
    """An S3 endpoint that accepts connections and never answers (a bucket that hangs), with
    credentials set, and bucket reads that give up after a second instead of fifteen."""
    import socket

    import s3fs

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)  # the kernel completes the handshakes; nobody ever reads or replies
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.getsockname()[1]}"}.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()  # no client built for another endpoint
    monkeypatch.setattr(run_outputs, "BUCKET_READ_TIMEOUT_S", 1)
    yield "s3://hangs"
    s3fs.S3FileSystem.clear_instance_cache()
    server.close()


def test_a_hanging_bucket_is_unknown_to_status_not_a_hang_or_a_traceback(fake, hanging_s3, capfd):
    reg = Registry()
    launched(fake, reg, "sftl-demo-9a02", kind="managed", bucket=hanging_s3, hours_ago=2.0)
    fake.controller_up = False  # status must read the run's exit record from the bucket
    res = run("status")
    assert res.exit_code == 0, res.output
    rec = reg.get("sftl-demo-9a02")
    assert rec.state == "failed" and "left no exit record" in rec.history[-1]["detail"]
    captured = capfd.readouterr()
    assert "Traceback" not in res.output + captured.out + captured.err


def test_bucket_reads_ask_each_store_for_short_timeouts(monkeypatch):
    import copy

    import fsspec

    asked = []
    real = fsspec.core.url_to_fs
    monkeypatch.setattr(fsspec.core, "url_to_fs", lambda url, **kw: asked.append(copy.deepcopy(kw)) or real(url, **kw))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    # No Application Default Credentials: gcsfs is not let fall back to probing the GCE metadata server.
    assert run_outputs.read_text("gs://sftl-test-no-such-bucket/run/exit.json") is None
    assert asked[-1] == {"requests_timeout": 10, "token": "google_default"}
    run_outputs.read_text("s3://sftl-test-no-such-bucket/run/exit.json")
    assert asked[-1]["config_kwargs"]["retries"] == {"total_max_attempts": 2}
    assert asked[-1]["config_kwargs"]["connect_timeout"] == 5 and asked[-1]["config_kwargs"]["read_timeout"] == 10
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon"})  # the user's own fsspec config wins
    assert "token" not in store.storage_options("gs://b/x", fail_fast=True)
    # An S3-compatible store's endpoint reaches the launcher's reads too (the job's writes use it).
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    run_outputs.read_text("s3://sftl-test-no-such-bucket/run/exit.json")
    assert asked[-1]["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:9"}


def test_parse_progress():
    assert run_outputs.parse_progress('{"step": 3, "total_steps": 9, "loss": 1.0}') == (3, 9)
    assert run_outputs.parse_progress("(head) train | step 12/40 | loss 0.9") == (12, 40)
    assert run_outputs.parse_progress("step 50/40") is None and run_outputs.parse_progress("hello") is None


def test_lifecycle_modules_import_light():
    import subprocess
    import sys

    code = ("import sys, launcher.commands.up, launcher.commands.status, launcher.commands.logs, "
            "launcher.commands.teardown, launcher.lifecycle, launcher.runs, launcher.backends.sky, "
            "launcher.backends.local; print(sorted(m for m in ('sky', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_stale_job_id_now_someone_elses_is_never_cancelled(fake, tmp_path):
    """a stale record whose managed-job id now belongs to someone else's unlabelled job
    got `jobs_cancel` from a plain `sftlaunch status` (budget guard past its grace / no bucket)."""
    reg = Registry()
    launched(fake, reg, "sftl-demo-5701", kind="managed", usd=10.0, max_usd=1.0, hours_ago=2.0)
    job_id = int(reg.get("sftl-demo-5701").job_id)
    # Our job is long gone; SkyPilot reused its id for a colleague's job (another user, no label).
    fake.jobs[job_id] = ManagedJob(job_id, "their-finetune", "RUNNING", {}, user_hash="u-colleague")
    res = run("status")
    assert res.exit_code == 0, res.output
    assert fake.jobs[job_id].status == "RUNNING" and ("jobs_cancel", job_id) not in fake.calls
    assert fake.foreign_actions == []
    rec = reg.get("sftl-demo-5701")
    assert rec.state in ("stopped", "failed") and rec.state != "running"


def test_a_stale_cluster_name_now_someone_elses_is_never_downed(fake, tmp_path):
    reg = Registry()
    launched(fake, reg, "sftl-demo-5702", usd=10.0, max_usd=1.0, hours_ago=2.0)
    # Our cluster went; a same-named cluster appeared with no label (or labelled by another user).
    fake.clusters["sftl-demo-5702"] = Cluster("sftl-demo-5702", "UP", {}, user_hash=fake.user)
    launched(fake, reg, "sftl-demo-5703", usd=10.0, max_usd=1.0, hours_ago=2.0)
    fake.clusters["sftl-demo-5703"] = Cluster("sftl-demo-5703", "UP", {"sftlaunch-run": "sftl-demo-5703"},
                                              user_hash="u-colleague")
    res = run("status")
    assert res.exit_code == 0, res.output
    assert not [c for c in fake.calls if c[0] == "down"] and fake.foreign_actions == []
    assert {"sftl-demo-5702", "sftl-demo-5703"} <= set(fake.clusters)
    for rid in ("sftl-demo-5702", "sftl-demo-5703"):
        assert reg.get(rid).state == "stopped"


def test_destroying_goes_through_the_ownership_check_only():
    """`down` and `jobs_cancel` are called in one place, after the proof (launcher.backends.ownership);
    the two adapters make SkyPilot's own calls (sky.down, sky.serve.down)."""
    import re

    root = Path(__file__).resolve().parents[2] / "launcher"
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if re.search(r"\.(down|jobs_cancel)\(", p.read_text()))
    assert callers == ["backends/ownership.py", "backends/serve.py", "backends/sky.py"], callers


def test_the_budget_guard_never_cancels_a_job_it_cannot_prove_ours(fake):
    """The guard's hard stop after its grace period, on a record whose job id SkyPilot has since
    given to a teammate's labelled job: the stop is recorded, the stranger's job is untouched."""
    reg = Registry()
    launched(fake, reg, "sftl-demo-b601", kind="managed", usd=10.0, max_usd=1.0, bucket="/nonexistent/b", hours_ago=2.0)
    rid = "sftl-demo-b601"
    job_id = int(reg.get(rid).job_id)
    reg.update(rid, stop_requested_at=time.time() - lifecycle.STOP_GRACE_S - 60)
    fake.jobs[job_id] = ManagedJob(job_id, "sftl-team-ffff", "RUNNING", {"sftlaunch-run": "sftl-team-ffff"},
                                   user_hash="u-teammate")
    lifecycle.guard_budget(reg, fake, reg.get(rid, history=False))
    rec = reg.get(rid)
    assert rec.state == "stopped" and fake.jobs[job_id].status == "RUNNING" and fake.foreign_actions == []
    assert ("jobs_cancel", job_id) not in fake.calls


class _Clock:
    """time.time for the registry, the runners and the refresh: no sleeping."""

    def __init__(self, monkeypatch, t=1_900_000_000.0):
        self.t = t
        monkeypatch.setattr(time, "time", lambda: self.t)


def test_a_managed_runs_cost_sums_every_recovery_even_one_no_refresh_saw(fake, monkeypatch):
    """Preempted after 1 h (a refresh sees it recovering), recovered, ran 2 h more and finished with
    no refresh in between: the state history alone bills 1 h (recovering -> succeeded); SkyPilot's
    running time summed over the recoveries says 3 h, and that is what the run cost."""
    clock = _Clock(monkeypatch)
    reg = Registry()
    launched(fake, reg, "sftl-demo-a1a1", kind="managed", usd=2.0, hours_ago=1.0)
    job = fake.jobs[1]
    job.status, job.recovery_count, job.duration_s = "RECOVERING", 1, 3600.0
    run("status")
    assert reg.get("sftl-demo-a1a1").state == "recovering"
    clock.t += 3.5 * 3600
    job.status, job.duration_s, job.end_at = "SUCCEEDED", 3 * 3600.0, clock.t - 1800
    res = run("status", "sftl-demo-a1a1")
    rec = reg.get("sftl-demo-a1a1")
    assert rec.state == "succeeded" and rec.job_seconds == 3 * 3600
    assert rec.running_hours == pytest.approx(3.0) and rec.cost_usd == pytest.approx(6.0)
    assert "cost: $6.00 so far, 3.00 h billed at $2.00/h, 1 recovery included" in res.output


def test_a_managed_run_stops_billing_when_it_ended_not_when_status_looked(fake, monkeypatch):
    clock = _Clock(monkeypatch)
    reg = Registry()
    launched(fake, reg, "sftl-demo-b2b2", kind="managed", usd=2.0, hours_ago=1.0)
    job = fake.jobs[1]
    job.status, job.end_at = "SUCCEEDED", clock.t  # ended now; status is run 5 h later
    clock.t += 5 * 3600
    run("status")
    rec = reg.get("sftl-demo-b2b2")
    assert rec.state == "succeeded" and rec.cost_usd == pytest.approx(2.0)
    assert rec.history[-1]["at"] == pytest.approx(clock.t - 5 * 3600)


def test_the_jobs_calibration_row_reaches_the_record_and_status(fake, monkeypatch, tmp_path):
    """The row jobs.calibration writes, in the bucket copy of metrics.jsonl, read by the refresh."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from jobs.calibration import CalibrationCallback
    from jobs.callbacks import TrainingAttempt
    from sftcore.contract import Env, JobEnv, RunLayout

    clock = _Clock(monkeypatch)
    reg = Registry()
    bucket = tmp_path / "bucket"
    launched(fake, reg, "sftl-demo-cal0", usd=4.0, hours_ago=0.1, bucket=str(bucket))
    reg.update("sftl-demo-cal0", eta_hours=2.0, total_usd=8.0)
    out = Path(RunLayout.in_bucket(str(bucket), "sftl-demo-cal0").root)
    out.mkdir(parents=True)
    plan = {"tokens_per_s": 1000.0, "train_hours": 1.5, "eval_hours": 0.2, "eta_hours": 2.0, "total_usd": 8.0,
            "mfu": 0.4, "params_b": 7.0}
    env = {Env.PLAN: json.dumps(plan), Env.CALIBRATION: "2,600", Env.USD_PER_HOUR: "4"}
    counter = SimpleNamespace(tokens=0)
    cb = CalibrationCallback(out, counter, TrainingAttempt(None, None, clock.t, 0.0, 1), 50, job=JobEnv.from_env(env),
                             clock=lambda: clock.t, peak_gb=lambda: 61.2)
    for step in (1, 2, 3):
        clock.t += 4.0
        counter.tokens += 1000
        cb.on_step_end(None, SimpleNamespace(global_step=step, max_steps=900), TrainerControl())
    res = run("status", "sftl-demo-cal0")
    rec = reg.get("sftl-demo-cal0")
    assert (rec.measured_tokens_per_s, rec.predicted_tokens_per_s, rec.measured_mfu, rec.peak_mem_gb) == (250.0, 1000.0, 0.1, 61.2)
    assert rec.params_b == 7.0 and rec.calibrated_eta_hours == pytest.approx(2.0 - 1.5 + 900 * 4 / 3600)
    assert "measured: 250 tokens/s (plan 1000), ETA 1.50 h, projected $" in res.output
    assert "planned $8.00 over 2.00 h" in res.output
    data = json.loads(run("--json", "status", "sftl-demo-cal0").output)
    assert data["measured_tokens_per_s"] == 250.0 and data["predicted_usd"] == 8.0


def test_a_local_runs_calibration_row_is_read_from_its_run_dir(tmp_path):
    reg = Registry()
    reg.create("sftl-demo-loc0", {"name": "demo"}, backend="local", cloud="local", usd_per_hour=0.0,
               local_dir=str(tmp_path), state="running")
    rows = [{"step": 1, "total_steps": 9, "loss": 2.0},
            {"step": 3, "total_steps": 9, "calibration": {"tokens_per_s": 900.0, "peak_mem_gb": None, "steps": 2}},
            '{"step": 4, "calibration": {"tokens_per_s": "fast"}',  # cut by a kill: ignored
            {"step": 5, "total_steps": 9, "calibration": {"tokens_per_s": 1200.0, "eta_hours": 0.5, "usd": True}}]
    (tmp_path / "metrics.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    assert lifecycle.record_calibration(reg, reg.get("sftl-demo-loc0"))
    rec = reg.get("sftl-demo-loc0")
    # the newest row wins (a resumed attempt measures again); a non-number is not a figure
    assert (rec.measured_tokens_per_s, rec.calibrated_eta_hours, rec.calibrated_usd) == (1200.0, 0.5, None)
