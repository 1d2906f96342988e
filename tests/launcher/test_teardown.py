"""`sftlaunch teardown`: only labelled resources, with cost, idempotent, recorded."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from launcher.backends import local
from launcher.backends import sky as sky_backend
from launcher.backends.sky import Cluster, ManagedJob
from launcher.cli import cli
from launcher.runs import Registry, run_dir
from tests.launcher.fake_backend import launched


@pytest.fixture
def fake(fake):
    """The shared fake SkyPilot (tests/launcher/conftest.py) holding someone else's resources too."""
    # Someone's own SkyPilot resources: no sftlaunch label. Never to be touched.
    fake.clusters["my-notebook"] = Cluster("my-notebook", "UP", {"team": "research"}, user_hash=fake.user)
    fake.clusters["sftl-lookalike-0000"] = Cluster("sftl-lookalike-0000", "UP", {}, user_hash=fake.user)
    fake.jobs[7] = ManagedJob(7, "nightly-eval", "RUNNING", {}, user_hash=fake.user)
    fake.jobs[8] = ManagedJob(8, "sftl-demo-9999", "PENDING", None, user_hash=fake.user)  # not ours: no record
    return fake


def run(*args):
    return CliRunner().invoke(cli, ["teardown", *args])


def touched(fake):
    return [c for c in fake.calls if c[0] in ("down", "jobs_cancel")]


def test_all_touches_only_labelled_resources(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-aaaa", usd=2.0, hours_ago=1.5)
    launched(fake, reg, "sftl-demo-bbbb", kind="managed", usd=1.0, hours_ago=1.0)
    # Launched by this user from another machine (not in this registry): ours.
    fake.clusters["sftl-other-cccc"] = Cluster("sftl-other-cccc", "UP", {"sftlaunch-run": "sftl-other-cccc"},
                                               user_hash=fake.user)
    # A teammate's sftlaunch cluster under the same (shared) API server: labelled, not ours.
    fake.clusters["sftl-team-dddd"] = Cluster("sftl-team-dddd", "UP", {"sftlaunch-run": "sftl-team-dddd"},
                                              user_hash="u-teammate", user_name="alex")
    fake.jobs[20] = ManagedJob(20, "sftl-team-eeee", "RUNNING", {"sftlaunch-run": "sftl-team-eeee"},
                               user_hash="u-teammate")
    res = run("--all", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "sftl-demo-aaaa: cluster sftl-demo-aaaa [running] · $3.00 so far" in res.output
    assert "managed job" in res.output and "sftl-other-cccc" in res.output and "cost unknown" in res.output
    assert "my-notebook" not in res.output and "nightly-eval" not in res.output and "lookalike" not in res.output
    assert touched(fake) == []
    res = run("--all", "--yes")
    assert res.exit_code == 0, res.output
    job_id = int(reg.get("sftl-demo-bbbb").job_id)
    assert sorted(touched(fake)) == [("down", "sftl-demo-aaaa"), ("down", "sftl-other-cccc"), ("jobs_cancel", job_id)]
    assert {"my-notebook", "sftl-lookalike-0000", "sftl-team-dddd"} <= set(fake.clusters)
    assert fake.jobs[7].status == "RUNNING" and fake.jobs[8].status == "PENDING" and fake.jobs[20].status == "RUNNING"
    assert fake.foreign_actions == []
    for rid in ("sftl-demo-aaaa", "sftl-demo-bbbb"):
        rec = reg.get(rid)
        assert rec.state == "cancelled" and "teardown" in rec.history[-1]["detail"] and rec.torn_down
    # Idempotent: nothing left, nothing touched, exit 0.
    fake.calls.clear()
    res = run("--all", "--yes")
    assert res.exit_code == 0 and "nothing to tear down" in res.output and touched(fake) == []


def test_named_run_and_unlabelled_pending_job_of_ours(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-dddd", kind="managed")
    job_id = int(reg.get("sftl-demo-dddd").job_id)
    fake.jobs[job_id].labels = None  # pending: SkyPilot has no cluster handle yet, so no labels
    launched(fake, reg, "sftl-demo-eeee")
    res = run("sftl-demo-dddd", "--yes")
    assert res.exit_code == 0, res.output
    assert touched(fake) == [("jobs_cancel", job_id)]
    assert reg.get("sftl-demo-eeee").state == "running"


def test_cost_cannot_grow_after_teardown_and_refuses_without_terminal(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-ffff", usd=6.0, hours_ago=1.0)
    res = run("sftl-demo-ffff")
    assert res.exit_code == 2 and "--yes" in res.output and touched(fake) == []
    assert run("sftl-demo-ffff", "--yes").exit_code == 0
    cost = reg.get("sftl-demo-ffff").cost_usd
    time.sleep(0.05)
    assert reg.get("sftl-demo-ffff").cost_usd == cost == pytest.approx(6.0, abs=0.01)
    assert run().exit_code == 2  # neither runs nor --all


def test_without_a_jobs_controller_teardown_still_works(fake):
    """SkyPilot 0.14.1 raises ClusterNotUpError("No in-progress managed jobs.") from jobs.queue
    and jobs.cancel when no controller is up; teardown treats that as nothing to cancel."""
    fake.controller_up = False
    res = run("--all", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "nothing to tear down" in res.output and ("jobs_queue",) in fake.calls
    reg = Registry()
    launched(fake, reg, "sftl-demo-9a09", usd=2.0, hours_ago=1.0)
    res = run("--all", "--dry-run")
    assert res.exit_code == 0 and "sftl-demo-9a09: cluster sftl-demo-9a09" in res.output and touched(fake) == []
    res = run("--all", "--yes")
    assert res.exit_code == 0, res.output
    assert touched(fake) == [("down", "sftl-demo-9a09")] and reg.get("sftl-demo-9a09").state == "cancelled"
    assert run("sftl-demo-9a09", "--yes").exit_code == 0  # idempotent: already gone


def test_a_managed_run_whose_controller_has_gone_is_settled_not_cancelled(fake, tmp_path):
    reg = Registry()
    bucket = tmp_path / "b"
    launched(fake, reg, "sftl-demo-9a0a", kind="managed", bucket=str(bucket), hours_ago=0.5)
    launched(fake, reg, "sftl-demo-9a0b", kind="managed", bucket=str(bucket), hours_ago=0.5)
    (bucket / "sftl-demo-9a0a").mkdir(parents=True)
    (bucket / "sftl-demo-9a0a" / "exit.json").write_text('{"exit_code": 0, "stopped": null}')
    fake.controller_up = False  # both jobs ended; the controller stopped 10 idle minutes later
    assert fake.jobs_cancel(1) is None  # a cancel with no controller has nothing to do
    res = run("--all", "--yes")
    assert res.exit_code == 0, res.output
    assert "nothing to tear down" in res.output and touched(fake) == [("jobs_cancel", 1)]
    assert reg.get("sftl-demo-9a0a").state == "succeeded"  # from its exit record in the bucket
    rec = reg.get("sftl-demo-9a0b")
    assert rec.state == "failed" and "left no exit record" in rec.history[-1]["detail"]


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
        assert reg.get("sftl-local-0009").state == "failed"  # gone without an exit code
    finally:
        stranger.kill()
        stranger.wait()


def test_a_finished_local_run_is_not_signalled(fake, monkeypatch):
    reg = Registry()
    rid = "sftl-local-0010"
    fields = _local_run(reg, rid, "sleep 60", monkeypatch)
    try:
        (run_dir(rid) / "exit_code").write_text("0\n")  # the run has ended; its pid is not ours to kill
        assert local.stop(reg.get(rid)) is False and local.alive(fields["pid"])
    finally:
        import os
        import signal

        os.killpg(fields["pid"], signal.SIGKILL)


def test_tears_down_a_local_run_by_killing_its_process_group(fake, monkeypatch, tmp_path):
    reg = Registry()
    rid = "sftl-local-0001"
    fields = _local_run(reg, rid, "sleep 60 & sleep 60; wait", monkeypatch)
    assert local.alive(fields["pid"])
    res = run(rid, "--yes")
    assert res.exit_code == 0, res.output
    assert "local process" in res.output and not local.alive(fields["pid"])
    assert reg.get(rid).state == "cancelled" and touched(fake) == []


def test_teardown_only_looks_at_a_stale_run_it_never_asks_the_job_to_stop(fake, tmp_path):
    """A managed run over its budget that SkyPilot no longer lists, still within the grace for a
    launch being registered: teardown records its end but writes no stop flag, which a later
    relaunch of the same run id would obey at once."""
    reg = Registry()
    bucket = tmp_path / "b"
    launched(fake, reg, "sftl-demo-9a0c", kind="managed", bucket=str(bucket), usd=3.0, max_usd=0.01, hours_ago=0.01)
    fake.controller_up = False
    res = run("sftl-demo-9a0c", "--yes")
    assert res.exit_code == 0, res.output
    assert not (bucket / "sftl-demo-9a0c" / "control" / "stop").exists()
    rec = reg.get("sftl-demo-9a0c")
    assert rec.state == "cancelled" and rec.stop_requested_at is None


def _local_run(reg, rid, command, monkeypatch):
    monkeypatch.setattr(local, "_direct_command", lambda recipe_path, steps: command)

    class R:
        image = None
        eval = None

        def to_yaml(self):
            return "name: local\n"

    fields = local.start(R(), rid, run_dir(rid), use_docker=False)
    reg.create(rid, {"name": "local"}, state="running", cloud="local", usd_per_hour=0.0, **fields)
    return fields


def test_a_tail_of_the_run_script_is_never_taken_for_the_run(fake, monkeypatch):
    """`tail -f <run dir>/run.sh` has the run's script in its command line; the old
    substring match took it for the run and teardown killed it."""
    import subprocess

    reg = Registry()
    rid = "sftl-local-0011"
    fields = _local_run(reg, rid, "true", monkeypatch)
    deadline = time.time() + 20
    while local.alive(fields["pid"]) and time.time() < deadline:
        time.sleep(0.05)
    script = run_dir(rid) / "run.sh"
    (run_dir(rid) / "exit_code").unlink()  # as if the wrapper died before writing it
    tail = subprocess.Popen(["tail", "-f", str(script)], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        # The pid is reused by the tail, the strongest look-alike there can be.
        reg.update(rid, pid=tail.pid)
        assert local.process_refusal(reg.get(rid)) is not None
        res = run(rid, "--yes")
        assert res.exit_code == 0, res.output
        assert "nothing to tear down" in res.output and tail.poll() is None
        assert local.stop(reg.get(rid)) is False and tail.poll() is None
    finally:
        tail.kill()
        tail.wait()


def test_an_empty_or_ambiguous_reference_tears_down_nothing(fake, monkeypatch):
    reg = Registry()
    launched(fake, reg, "sftl-demo-aa01")
    launched(fake, reg, "sftl-demo-aa02")
    for ref in ("", " "):
        res = run(ref, "--yes")
        assert res.exit_code == 2 and "empty run reference" in res.output, res.output
    res = run("sftl-demo-aa0", "--yes")
    assert res.exit_code == 2 and "sftl-demo-aa01" in res.output and "sftl-demo-aa02" in res.output, res.output
    assert touched(fake) == [] and set(fake.clusters) >= {"sftl-demo-aa01", "sftl-demo-aa02"}


def test_an_unreachable_api_server_is_one_line(monkeypatch):
    """teardown gave `internal error: ApiServerConnectionError` where status copes."""
    monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(sky_backend, "_backend_factory", sky_backend.SkyBackend)
    reg = Registry()
    reg.create("sftl-demo-ab01", {"name": "demo"}, backend="cluster", cluster_name="sftl-demo-ab01", state="running")
    res = run("sftl-demo-ab01", "--yes")
    out = res.output.strip()
    assert res.exit_code == 2, out
    assert "cannot reach SkyPilot" in out and "nothing was torn down" in out and "\n" not in out, out
    assert "Traceback" not in out and "internal error" not in out
    assert Registry().get("sftl-demo-ab01").state == "running"


def test_a_same_named_cluster_of_a_stranger_is_not_ours(fake):
    """A recorded run whose cluster is gone, and a stranger's unlabelled cluster now has its name."""
    reg = Registry()
    launched(fake, reg, "sftl-demo-ac01")
    fake.clusters["sftl-demo-ac01"] = Cluster("sftl-demo-ac01", "UP", {}, user_hash=fake.user)
    res = run("sftl-demo-ac01", "--yes")
    assert res.exit_code == 0, res.output
    assert "nothing to tear down" in res.output and touched(fake) == [] and fake.foreign_actions == []
    assert reg.get("sftl-demo-ac01").state in ("stopped", "cancelled")


def _wait_for(check, seconds=20.0):
    deadline = time.time() + seconds
    while not check() and time.time() < deadline:
        time.sleep(0.05)
    return check()


def test_a_killed_wrapper_leaves_its_group_to_teardown_not_to_status(fake, monkeypatch, tmp_path):
    """kill the recorded leader pid of a detached `up --local`; status said failed,
    teardown said nothing to tear down, and training kept running in its group."""
    import os
    import signal

    reg = Registry()
    rid = "sftl-local-0012"
    pidfile = tmp_path / "worker.pid"
    fields = _local_run(reg, rid, f"sleep 60 & echo $! > {pidfile}; wait", monkeypatch)
    assert _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
    worker = int(pidfile.read_text())
    os.kill(fields["pid"], signal.SIGKILL)  # the wrapper only: its group lives on
    assert _wait_for(lambda: not local.alive(fields["pid"]))
    try:
        assert local.alive(worker) and os.getpgid(worker) == fields["pid"]
        res = CliRunner().invoke(cli, ["status", rid])
        assert res.exit_code == 0 and "running" in res.output and "failed" not in res.output, res.output
        assert reg.get(rid).state == "running" and "still run in its group" in local.poll(reg.get(rid))[1]
        res = run(rid, "--yes")
        assert res.exit_code == 0, res.output
        assert f"done: {rid}" in res.output and _wait_for(lambda: not local.alive(worker))
        assert reg.get(rid).state == "cancelled" and local.group_members(reg.get(rid)) == []
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(fields["pid"], signal.SIGKILL)


def test_a_group_that_is_not_the_runs_is_never_signalled(fake, monkeypatch, tmp_path):
    """The recorded pid's number as a stranger's group (reused after ours ended), or a member
    without the run's id in its environment, or started before the run: not ours."""
    import subprocess

    reg = Registry()
    rid = "sftl-local-0013"
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ident = local.process_identity(stranger.pid)
        out = run_dir(rid)
        out.mkdir(parents=True)
        common = {"state": "running", "cloud": "local", "usd_per_hour": 0.0, "backend": "local",
                  "local_dir": str(out), "log_uri": str(out / "run.log")}
        # Its own pid/start time recorded (as if it were ours) but no SFTLAUNCH_RUN_ID: only the
        # leader proof makes it ours; pretend the leader is gone by recording a later start time.
        later = f"linux:{int(ident[0].split(':')[1]) + 1}"
        reg.create(rid, {"name": "local"}, pid=stranger.pid, pid_start=later, **common)
        assert local.group_members(reg.get(rid)) == [] and not local.is_ours(reg.get(rid))
        res = run(rid, "--yes")
        assert res.exit_code == 0 and "nothing to tear down" in res.output and stranger.poll() is None, res.output
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("label", ["../../etc", "sftl-x-1234; rm -rf ~", "sftl-\x1b]0;owned\x07-1234",
                                   "sftl-" + "a" * 60 + "-1234", "sftl-demo-zzzz"])
def test_all_never_trusts_a_label_value_that_is_not_a_run_id(fake, label):
    """`teardown --all` took any sftlaunch-run label value as a run of ours. Only the
    contract's run ids (sftl-NAME-4hex, at most 35 chars) are; the rest is reported as foreign."""
    fake.clusters["odd"] = Cluster("odd", "UP", {"sftlaunch-run": label}, user_hash=fake.user)
    fake.jobs[30] = ManagedJob(30, "odd-job", "RUNNING", {"sftlaunch-run": label}, user_hash=fake.user)
    res = run("--all", "--yes")
    assert res.exit_code == 0, res.output
    assert "odd" in fake.clusters and fake.jobs[30].status == "RUNNING" and touched(fake) == []
    assert "cluster odd: label sftlaunch-run=" in res.output and "(foreign): not touched" in res.output
    assert "managed job 30 (odd-job): label" in res.output and "\x1b" not in res.output and "nothing to tear down" in res.output


def test_all_takes_down_the_services_we_launched_and_only_those(fake, fake_serve):
    """`teardown --all` leaves nothing billing: a service `sftlaunch serve` recorded and SkyServe
    runs as this user's is taken down; a recorded teammate's, an unrecorded look-alike and one
    already gone are not touched (the gone one is marked down)."""
    from launcher import services

    reg = Registry()
    launched(fake, reg, "sftl-demo-aaaa", usd=2.0, hours_ago=1.0)
    services.record("sftl-demo-aaaa", "sftl-demo-aaaa", "m/x", "gcp", "L4:1", 0.7, "u-me", {})
    fake_serve.add("sftl-demo-aaaa", "u-me")
    services.record("sftl-mate-1111", None, "m/y", "gcp", "L4:1", 0.7, "u-me", {})
    fake_serve.add("sftl-mate-1111", "u-teammate")  # recorded here, but another SkyPilot user's
    fake_serve.add("sftl-other-2222", "u-me")  # ours by name and user, never recorded here
    services.record("sftl-gone-3333", None, "m/z", "gcp", "L4:1", 0.7, "u-me", {})  # downed elsewhere
    dry = run("--all", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "sftl-demo-aaaa: service [READY] · $0.70/h per replica" in dry.output
    assert "left alone: service sftl-mate-1111 belongs to SkyPilot user u-teammate" in dry.output
    assert "sftl-other-2222" not in dry.output and not [c for c in fake_serve.calls if c[0] == "down"]
    assert services.get("sftl-gone-3333")["downed_at"] is None  # a dry run writes nothing
    res = run("--all", "--yes")
    assert res.exit_code == 0, res.output
    assert "done: service sftl-demo-aaaa taken down" in res.output
    assert [c for c in fake_serve.calls if c[0] == "down"] == [("down", "sftl-demo-aaaa")]
    assert services.get("sftl-demo-aaaa")["downed_at"] and services.get("sftl-gone-3333")["downed_at"]
    assert services.get("sftl-mate-1111")["downed_at"] is None and "sftl-other-2222" in fake_serve.services
    assert ("down", "sftl-demo-aaaa") in touched(fake)  # the run's cluster too


def test_a_named_run_keeps_its_service_and_says_how_to_stop_it(fake, fake_serve):
    from launcher import services

    reg = Registry()
    launched(fake, reg, "sftl-demo-aaaa", usd=2.0, hours_ago=1.0)
    services.record("sftl-demo-aaaa", "sftl-demo-aaaa", "m/x", "gcp", "L4:1", 0.7, "u-me", {})
    fake_serve.add("sftl-demo-aaaa", "u-me")
    res = run("sftl-demo-aaaa", "--yes")
    assert res.exit_code == 0, res.output
    assert "service sftl-demo-aaaa serves run sftl-demo-aaaa and keeps serving; `sftlaunch serve down" in res.output
    assert not [c for c in fake_serve.calls if c[0] in ("down", "status")] and "sftl-demo-aaaa" in fake_serve.services


def test_all_without_recorded_services_never_asks_skyserve(fake, fake_serve):
    res = run("--all", "--yes")
    assert res.exit_code == 0 and "nothing to tear down" in res.output, res.output
    assert fake_serve.calls == []
