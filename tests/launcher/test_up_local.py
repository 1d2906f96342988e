"""`sftlaunch up --local recipes/tiny-local.yaml` end to end — the README's first command on the
shipped recipe, unshortened (about a minute on 2 cores): train, eval, publish on this CPU, tracked
in the registry like a cloud run, ending with the results table and the output paths, with no
secret in anything it wrote."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.runs import Registry, run_dir
from tests.tiny_run import CANARY

TINY = Path(__file__).resolve().parents[2] / "recipes" / "tiny-local.yaml"


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
    assert rec.state == "succeeded" and rec.backend == "local"
    assert rec.progress_total and rec.progress_step == rec.progress_total
    assert rec.eval_average is not None and rec.eval["scores"]
    meta = json.loads((out / "final" / "sftlaunch.json").read_text())
    assert meta["run_id"] == run_id and meta["recipe_sha256"] == rec.recipe_sha256
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


# -- no orphan window: Ctrl-C at every step of `up --local` ------------------------------------------
STEPS = ("choose_runner", "create", "after_create", "start", "after_popen", "update", "set_running", "signal_in_start", "follow")


def _interrupt_at(step, monkeypatch):
    """Make `up --local` see a Ctrl-C at `step` (a KeyboardInterrupt raised there, or for
    signal_in_start a real SIGINT delivered right after the process is spawned)."""
    import signal

    from launcher.backends import local
    from launcher.backends import runner as runner_mod

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    real_start, real_update, real_set_state = local.start, Registry.update, Registry.set_state
    if step == "choose_runner":
        monkeypatch.setattr(local, "choose_runner", boom)
    elif step == "create":
        monkeypatch.setattr(Registry, "create", boom)
    elif step == "after_create":
        real_create = Registry.create

        def create_then(self, *a, **k):
            real_create(self, *a, **k)
            raise KeyboardInterrupt
        monkeypatch.setattr(Registry, "create", create_then)
    elif step == "start":
        monkeypatch.setattr(local, "start", boom)
    elif step in ("after_popen", "signal_in_start"):
        def start_then(*a, **k):
            fields = real_start(*a, **k)
            if step == "signal_in_start":
                os.kill(os.getpid(), signal.SIGINT)
                return fields
            raise KeyboardInterrupt
        monkeypatch.setattr(local, "start", start_then)
    elif step == "update":
        monkeypatch.setattr(Registry, "update", lambda self, rid, **f: boom() if "pid" in f else real_update(self, rid, **f))
    elif step == "set_running":
        monkeypatch.setattr(Registry, "set_state", lambda self, rid, state, *a, **k: boom() if state == "running"
                            else real_set_state(self, rid, state, *a, **k))
    elif step == "follow":
        monkeypatch.setattr(runner_mod.LocalRunner, "logs", boom)


def test_ctrl_c_at_any_step_leaves_nothing_running_or_a_recorded_run(monkeypatch, tmp_path):
    """a Ctrl-C ~2 ms after run.sh was written left training running with no registry
    row. At every step boundary the outcome is either nothing running, or a run that is recorded
    as active with its process proven ours (so status/teardown see and can stop it)."""
    from launcher.backends import local

    monkeypatch.setenv("SFTLAUNCH_LOCAL_DOCKER", "0")
    monkeypatch.setattr(local, "_direct_command", lambda recipe_path, steps: "sleep 120")
    outcomes = {}
    for step in STEPS:
        seen = {r.run_id for r in Registry().list()}
        with monkeypatch.context() as m:
            _interrupt_at(step, m)
            res = CliRunner().invoke(cli, ["up", "--local", str(TINY), "--yes"])
        assert res.exit_code == 130, (step, res.output)
        new = [r for r in Registry().list() if r.run_id not in seen]
        assert len(new) <= 1, step
        rec = new[0] if new else None
        outcomes[step] = rec.state if rec else "no row"
        for rid_dir, proc in list(local._children.items()):  # every process up --local left running
            assert proc.poll() is not None or (rec is not None and rec.local_dir == rid_dir), (step, rid_dir)
            if proc.poll() is None:
                assert rec.state == "running" and local.is_ours(rec), (step, rec)
                assert "sftlaunch teardown" in res.output  # the reattach / stop hints
                teardown = CliRunner().invoke(cli, ["teardown", rec.run_id, "--yes"])
                assert teardown.exit_code == 0 and proc.wait(timeout=20) is not None, teardown.output
                outcomes[step] = "recorded, then stopped by teardown"
            local._children.pop(rid_dir)
        assert outcomes[step] not in ("pending", "launching"), step  # no row left in limbo
    assert outcomes["choose_runner"] == outcomes["create"] == "no row"
    assert outcomes["after_create"] == outcomes["start"] == outcomes["after_popen"] == outcomes["update"] == outcomes["set_running"] == "cancelled"
    assert outcomes["follow"] == "recorded, then stopped by teardown"
    assert outcomes["signal_in_start"] in ("cancelled", "recorded, then stopped by teardown")


@pytest.mark.parametrize("signame,code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_or_sighup_while_following_says_what_is_left_running(monkeypatch, signame, code):
    """SIGTERM/SIGHUP killed `up` without a word, leaving the run going unannounced.
    A real signal to this process while `up --local` follows the log: the run goes on, the
    output names it and how to check and stop it, exit 128+N, no traceback."""
    import signal

    from launcher.backends import local
    from launcher.backends import runner as runner_mod

    monkeypatch.setenv("SFTLAUNCH_LOCAL_DOCKER", "0")
    monkeypatch.setattr(local, "_direct_command", lambda recipe_path, steps: "sleep 120")

    def follow_then_signal(self, record, follow, on_line):
        os.kill(os.getpid(), getattr(signal, signame))
        time.sleep(5)  # the handler raises here
        raise AssertionError("the signal was not handled")

    monkeypatch.setattr(runner_mod.LocalRunner, "logs", follow_then_signal)
    res = CliRunner().invoke(cli, ["up", "--local", str(TINY), "--yes"])
    assert res.exit_code == code, res.output
    rec = max(Registry().list(), key=lambda r: r.created_at)
    try:
        assert f"got {signame} while following the logs of {rec.run_id}" in res.output
        assert f"sftlaunch teardown {rec.run_id}" in res.output and f"sftlaunch status {rec.run_id}" in res.output
        assert "Traceback" not in res.output and rec.state == "running" and local.is_ours(rec)
    finally:  # (teardown never follows logs: the patched LocalRunner.logs is not in its way)
        assert CliRunner().invoke(cli, ["teardown", rec.run_id, "--yes"]).exit_code == 0
        local._children.pop(rec.local_dir, None)
    assert signal.getsignal(getattr(signal, signame)) is signal.SIG_DFL  # put back as it was


def test_sigterm_while_starting_leaves_nothing_running(monkeypatch):
    """A SIGTERM right after the process is spawned is held until the run is recorded (as
    SIGINT is), then handled: the run is killed and recorded cancelled, or recorded and going."""
    import signal

    from launcher.backends import local

    monkeypatch.setenv("SFTLAUNCH_LOCAL_DOCKER", "0")
    monkeypatch.setattr(local, "_direct_command", lambda recipe_path, steps: "sleep 120")
    real_start = local.start

    def start_then(*a, **k):
        fields = real_start(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return fields

    monkeypatch.setattr(local, "start", start_then)
    res = CliRunner().invoke(cli, ["up", "--local", str(TINY), "--yes"])
    assert res.exit_code == 143 and "Terminated by SIGTERM" in res.output and "Traceback" not in res.output, res.output
    rec = Registry().get(max(Registry().list(), key=lambda r: r.created_at).run_id)
    assert rec.state == "cancelled" and "interrupted" in rec.history[-1]["detail"]
    started = local._children.pop(rec.local_dir, None)
    assert started is None or started.poll() is not None  # killed (and reaped) by up itself
    assert _processes_of(rec.run_id) == []  # nothing of the run is left anywhere


def _processes_of(run_id: str) -> list[int]:
    """Live processes whose environment carries the run's id (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX" \
                    and f"SFTLAUNCH_RUN_ID={run_id}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
