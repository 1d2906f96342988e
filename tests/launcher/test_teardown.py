"""`sftlaunch teardown`: only labelled resources, with cost, idempotent, recorded."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from launcher.backends import local
from launcher.backends.sky import Cluster, ManagedJob
from launcher.cli import cli
from launcher.runs import Registry, run_dir
from tests.launcher.fake_backend import launched


@pytest.fixture
def fake(fake):
    """The shared fake SkyPilot (tests/launcher/conftest.py) holding someone else's resources too."""
    # Someone's own SkyPilot resources: no sftlaunch label. Never to be touched.
    fake.clusters["my-notebook"] = Cluster("my-notebook", "UP", {"team": "research"})
    fake.clusters["sftl-lookalike-0000"] = Cluster("sftl-lookalike-0000", "UP", {})
    fake.jobs[7] = ManagedJob(7, "nightly-eval", "RUNNING", {})
    fake.jobs[8] = ManagedJob(8, "sftl-demo-9999", "PENDING", None)  # not ours: no record
    return fake


def run(*args):
    return CliRunner().invoke(cli, ["teardown", *args])


def touched(fake):
    return [c for c in fake.calls if c[0] in ("down", "jobs_cancel")]


def test_all_touches_only_labelled_resources(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-aaaa", usd=2.0, hours_ago=1.5)
    launched(fake, reg, "sftl-demo-bbbb", kind="managed", usd=1.0, hours_ago=1.0)
    fake.clusters["sftl-other-cccc"] = Cluster("sftl-other-cccc", "UP", {"sftlaunch-run": "sftl-other-cccc"})
    res = run("--all", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "sftl-demo-aaaa: cluster sftl-demo-aaaa [running] · $3.00 so far" in res.output
    assert "managed job" in res.output and "sftl-other-cccc" in res.output and "cost unknown" in res.output
    assert "my-notebook" not in res.output and "nightly-eval" not in res.output and "lookalike" not in res.output
    assert touched(fake) == []
    res = run("--all", "--yes")
    assert res.exit_code == 0, res.output
    job_id = int(reg.get("sftl-demo-bbbb")["job_id"])
    assert sorted(touched(fake)) == [("down", "sftl-demo-aaaa"), ("down", "sftl-other-cccc"), ("jobs_cancel", job_id)]
    assert {"my-notebook", "sftl-lookalike-0000"} <= set(fake.clusters)
    assert fake.jobs[7].status == "RUNNING" and fake.jobs[8].status == "PENDING"
    for rid in ("sftl-demo-aaaa", "sftl-demo-bbbb"):
        rec = reg.get(rid)
        assert rec["state"] == "cancelled" and "teardown" in rec["history"][-1]["detail"] and rec["extra"]["torn_down"]
    # Idempotent: nothing left, nothing touched, exit 0.
    fake.calls.clear()
    res = run("--all", "--yes")
    assert res.exit_code == 0 and "nothing to tear down" in res.output and touched(fake) == []


def test_named_run_and_unlabelled_pending_job_of_ours(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-dddd", kind="managed")
    job_id = int(reg.get("sftl-demo-dddd")["job_id"])
    fake.jobs[job_id].labels = None  # pending: SkyPilot has no cluster handle yet, so no labels
    launched(fake, reg, "sftl-demo-eeee")
    res = run("sftl-demo-dddd", "--yes")
    assert res.exit_code == 0, res.output
    assert touched(fake) == [("jobs_cancel", job_id)]
    assert reg.get("sftl-demo-eeee")["state"] == "running"


def test_cost_cannot_grow_after_teardown_and_refuses_without_terminal(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-ffff", usd=6.0, hours_ago=1.0)
    res = run("sftl-demo-ffff")
    assert res.exit_code == 2 and "--yes" in res.output and touched(fake) == []
    assert run("sftl-demo-ffff", "--yes").exit_code == 0
    cost = reg.get("sftl-demo-ffff")["cost_usd"]
    time.sleep(0.05)
    assert reg.get("sftl-demo-ffff")["cost_usd"] == cost == pytest.approx(6.0, abs=0.01)
    assert run().exit_code == 2  # neither runs nor --all


def test_without_a_jobs_controller_teardown_still_works(fake):
    """SkyPilot 0.14.1 raises ClusterNotUpError("No in-progress managed jobs.") from jobs.queue
    and jobs.cancel when no controller is up; teardown treats that as nothing to cancel."""
    fake.controller_up = False
    res = run("--all", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "nothing to tear down" in res.output and ("jobs_queue",) in fake.calls
    reg = Registry()
    launched(fake, reg, "sftl-demo-pppp", usd=2.0, hours_ago=1.0)
    res = run("--all", "--dry-run")
    assert res.exit_code == 0 and "sftl-demo-pppp: cluster sftl-demo-pppp" in res.output and touched(fake) == []
    res = run("--all", "--yes")
    assert res.exit_code == 0, res.output
    assert touched(fake) == [("down", "sftl-demo-pppp")] and reg.get("sftl-demo-pppp")["state"] == "cancelled"
    assert run("sftl-demo-pppp", "--yes").exit_code == 0  # idempotent: already gone


def test_a_managed_run_whose_controller_has_gone_is_settled_not_cancelled(fake, tmp_path):
    reg = Registry()
    bucket = tmp_path / "b"
    launched(fake, reg, "sftl-demo-qqqq", kind="managed", bucket=str(bucket), hours_ago=0.5)
    launched(fake, reg, "sftl-demo-rrrr", kind="managed", bucket=str(bucket), hours_ago=0.5)
    (bucket / "sftl-demo-qqqq").mkdir(parents=True)
    (bucket / "sftl-demo-qqqq" / "exit.json").write_text('{"exit_code": 0, "stopped": null}')
    fake.controller_up = False  # both jobs ended; the controller stopped 10 idle minutes later
    assert fake.jobs_cancel(1) is None  # a cancel with no controller has nothing to do
    res = run("--all", "--yes")
    assert res.exit_code == 0, res.output
    assert "nothing to tear down" in res.output and touched(fake) == [("jobs_cancel", 1)]
    assert reg.get("sftl-demo-qqqq")["state"] == "succeeded"  # from its exit record in the bucket
    rec = reg.get("sftl-demo-rrrr")
    assert rec["state"] == "failed" and "left no exit record" in rec["history"][-1]["detail"]


def test_a_reused_pid_is_never_killed(fake, monkeypatch):
    import subprocess

    reg = Registry()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)  # got the run's old pid
    try:
        out = run_dir("sftl-local-0009")
        out.mkdir(parents=True)
        (out / "run.sh").write_text("#!/usr/bin/env bash\n")
        reg.create("sftl-local-0009", {"name": "local"}, state="running", cloud="local", usd_per_hour=0.0,
                   backend="local", pid=stranger.pid, local_dir=str(out), log_uri=str(out / "run.log"))
        assert not local.is_ours(reg.get("sftl-local-0009"))
        res = run("sftl-local-0009", "--yes")
        assert res.exit_code == 0, res.output
        assert "nothing to tear down" in res.output and stranger.poll() is None  # still alive
        assert local.stop(reg.get("sftl-local-0009")) is False and stranger.poll() is None
        assert reg.get("sftl-local-0009")["state"] == "failed"  # gone without an exit code
    finally:
        stranger.kill()
        stranger.wait()


def test_a_finished_local_run_is_not_signalled(fake, monkeypatch):
    monkeypatch.setattr(local, "_direct_command", lambda recipe_path, steps: "sleep 60")
    reg = Registry()
    rid = "sftl-local-0010"

    class R:
        image = None
        eval = None

        def to_yaml(self):
            return "name: local\n"

    fields = local.start(R(), rid, run_dir(rid), use_docker=False)
    reg.create(rid, {"name": "local"}, state="running", cloud="local", usd_per_hour=0.0, **fields)
    try:
        (run_dir(rid) / "exit_code").write_text("0\n")  # the run has ended; its pid is not ours to kill
        assert local.stop(reg.get(rid)) is False and local.alive(fields["pid"])
    finally:
        import os
        import signal

        os.killpg(fields["pid"], signal.SIGKILL)


def test_tears_down_a_local_run_by_killing_its_process_group(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(local, "_direct_command", lambda recipe_path, steps: "sleep 60 & sleep 60; wait")
    reg = Registry()
    rid = "sftl-local-0001"
    out = run_dir(rid)

    class R:
        image = None
        eval = None

        def to_yaml(self):
            return "name: local\n"

    fields = local.start(R(), rid, out, use_docker=False)
    reg.create(rid, {"name": "local"}, state="running", cloud="local", usd_per_hour=0.0, **fields)
    assert local.alive(fields["pid"])
    res = run(rid, "--yes")
    assert res.exit_code == 0, res.output
    assert "local process" in res.output and not local.alive(fields["pid"])
    assert reg.get(rid)["state"] == "cancelled" and touched(fake) == []


def test_teardown_only_looks_at_a_stale_run_it_never_asks_the_job_to_stop(fake, tmp_path):
    """A managed run over its budget that SkyPilot no longer lists, still within the grace for a
    launch being registered: teardown records its end but writes no stop flag, which a later
    relaunch of the same run id would obey at once."""
    reg = Registry()
    bucket = tmp_path / "b"
    launched(fake, reg, "sftl-demo-ssss", kind="managed", bucket=str(bucket), usd=3.0, max_usd=0.01, hours_ago=0.01)
    fake.controller_up = False
    res = run("sftl-demo-ssss", "--yes")
    assert res.exit_code == 0, res.output
    assert not (bucket / "sftl-demo-ssss" / "control" / "stop").exists()
    rec = reg.get("sftl-demo-ssss")
    assert rec["state"] == "cancelled" and not (rec["extra"] or {}).get("stop_requested_at")
