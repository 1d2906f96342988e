"""RunState: one definition of the run states and of which are final, billing and active; run
records read by attribute only; the registry's stored strings and `status --json` unchanged."""

from __future__ import annotations

import ast
import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.backends.sky import CLUSTER_JOB_STATES, CLUSTER_STATES, JOB_STATES, ManagedJob
from launcher.cli import cli
from launcher.run_record import Backend, RunRecord
from launcher.run_state import RunState
from launcher.runs import MIGRATIONS, Registry
from launcher.runs_errors import RegistryError

LAUNCHER = Path(__file__).resolve().parents[2] / "launcher"
NAMES = {s.value for s in RunState}


def test_the_sets_final_billing_active():
    assert {s.value for s in RunState.final()} == {"succeeded", "failed", "cancelled", "stopped"}
    # The cost code bills these (launcher/runs.py): GPUs are held, `stopping` until the checkpoint is saved.
    assert {s.value for s in RunState.billing()} == {"launching", "running", "stopping"}
    assert RunState.active() == frozenset(RunState) - RunState.final()
    assert RunState.STOPPED.is_final and not RunState.STOPPED.is_active and not RunState.STOPPED.is_billing
    assert RunState.RECOVERING.is_active and not RunState.RECOVERING.is_billing
    assert all(s.is_final != s.is_active for s in RunState)
    assert {s for s in RunState if s.is_starting} == {RunState.PENDING, RunState.LAUNCHING}


def test_a_state_is_its_stored_string():
    s = RunState.STOPPED
    assert s == "stopped" and "stopped" in RunState.final() and hash(s) == hash("stopped")
    assert str(s) == f"{s}" == "stopped" and f"{s:>8}" == " stopped"
    assert json.dumps({"state": s}) == '{"state": "stopped"}'


def _v1_database(path: Path, states: list[str]) -> None:
    """A registry as the first release wrote it: states as plain TEXT."""
    db = sqlite3.connect(path / "runs.db")
    for stmt in MIGRATIONS[0]:
        db.execute(stmt)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1, 0)")
    for i, state in enumerate(states):
        db.execute("INSERT INTO runs (run_id, name, recipe_json, recipe_sha256, state, created_at, updated_at)"
                   " VALUES (?, 'old', '{}', 'x', ?, 1, 1)", (f"sftl-old-{i:04x}", state))
    db.commit()
    db.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_an_old_database_reads_back_as_run_states(tmp_path, readonly):
    names = [s.value for s in RunState]
    _v1_database(tmp_path, names)
    reg = Registry(tmp_path, readonly=readonly)
    got = {r.run_id: r.state for r in reg.list()}
    assert [got[f"sftl-old-{i:04x}"] for i in range(len(names))] == list(RunState)
    assert all(type(state) is RunState for state in got.values())
    assert reg.get("sftl-old-0008").state is RunState.STOPPED
    active = {r.state for r in reg.list(active_only=True)}
    assert active == RunState.active()  # `stopped` is final: not refreshed, not torn down


@pytest.mark.parametrize("stored", ["paused", "Running", 7, ""])
def test_a_stored_state_that_is_no_run_state_is_a_broken_row(tmp_path, stored):
    _v1_database(tmp_path, ["running"])
    db = sqlite3.connect(tmp_path / "runs.db")
    db.execute("UPDATE runs SET state=?", (stored,))
    db.commit()
    db.close()
    with pytest.raises(RegistryError, match=rf"run 'sftl-old-0000': column state holds '{stored}'; move it aside"):
        Registry(tmp_path).list()


def test_states_are_stored_as_plain_text_and_stopped_is_sticky(tmp_path):
    reg = Registry(tmp_path)
    reg.create("sftl-demo-0001", {"name": "demo"}, state=RunState.RUNNING, usd_per_hour=1.0)
    assert reg.set_state("sftl-demo-0001", RunState.STOPPED, "budget", at=reg.get("sftl-demo-0001").created_at + 3600)
    assert not reg.set_state("sftl-demo-0001", "running")  # a late refresh does not revive it
    rec = reg.get("sftl-demo-0001")
    assert rec.state is RunState.STOPPED and rec.ended_at is not None and rec.running_since is None
    assert rec.running_hours == pytest.approx(1.0)
    rows = reg._conn.execute("SELECT state, typeof(state) FROM states WHERE run_id='sftl-demo-0001'").fetchall()
    assert [tuple(r) for r in rows] == [("running", "text"), ("stopped", "text")]
    assert tuple(reg._conn.execute("SELECT state, typeof(state) FROM runs").fetchone()) == ("stopped", "text")
    with pytest.raises(ValueError, match="unknown run state 'paused'"):
        reg.set_state("sftl-demo-0001", "paused")


def test_a_record_is_read_by_attribute_only(tmp_path):
    reg = Registry(tmp_path)
    rec = reg.create("sftl-demo-0002", {"name": "demo"}, backend=Backend.MANAGED, job_id="7")
    assert rec.state is RunState.PENDING and rec.backend is Backend.MANAGED
    with pytest.raises(TypeError):
        rec["state"]  # noqa: B018
    with pytest.raises(AttributeError):
        rec.get("state")
    with pytest.raises(TypeError):
        "state" in rec  # noqa: B015
    data = rec.as_dict()
    assert type(data["state"]) is str and data["state"] == "pending"
    assert type(data["backend"]) is str and data["backend"] == "managed"
    assert set(data) == {f.name for f in dataclasses.fields(RunRecord)}


def test_status_json_prints_plain_names(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTLAUNCH_HOME", str(tmp_path))
    reg = Registry(tmp_path)
    reg.create("sftl-demo-0003", {"name": "demo"}, state="running", backend=Backend.CLUSTER, cloud="gcp",
               gpu="A100-80GB", gpus_per_node=2, usd_per_hour=3.0, cluster_name="sftl-demo-0003", job_id="1")
    reg.set_state("sftl-demo-0003", "stopped", "budget")
    out = CliRunner().invoke(cli, ["status", "--json", "--no-refresh", "sftl-demo-0003"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["state"] == "stopped" and data["backend"] == "cluster" and data["where"] == "gcp A100-80GB×2"
    assert list(data) == [
        "run_id", "recipe", "where", "state", "progress", "progress_step", "progress_total", "cost_usd",
        "usd_per_hour", "max_usd", "eval_average", "eval_scores", "backend", "cluster_name", "job_id",
        "created_at", "ended_at", "checkpoint_uri", "result_uri", "running_hours", "recovery_count",
        "predicted_eta_hours", "predicted_usd", "predicted_tokens_per_s", "measured_tokens_per_s", "measured_mfu",
        "peak_mem_gb", "calibrated_eta_hours", "calibrated_usd",
    ]
    table = CliRunner().invoke(cli, ["status", "--no-refresh"]).output
    assert "stopped" in table.splitlines()[1] and "RunState" not in table


def test_skypilot_states_map_onto_run_states():
    for table in (CLUSTER_STATES, JOB_STATES, CLUSTER_JOB_STATES):
        assert all(type(v) is RunState for v in table.values())
    for status, state in JOB_STATES.items():
        assert ManagedJob(job_id=1, name="x", status=status).finished is state.is_final, status


def _state_spellings(path: Path) -> list[str]:
    """Where a module decides something about run states by spelling their names: a collection or
    table of state names, a comparison with one, or one given as a call's argument (set_state, Poll,
    `state=`, a SkyPilot state table's default; a dict's `.get("stopped")` reads a key)."""
    def named(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in NAMES

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.relative_to(LAUNCHER.parent)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Tuple, ast.Set, ast.List)) and len(node.elts) > 1 and all(map(named, node.elts)):
            found.append(f"{where}: a collection of state names")
        elif isinstance(node, ast.Dict) and len(node.values) > 1 and all(map(named, node.values)):
            found.append(f"{where}: a table of state names")
        elif isinstance(node, ast.Compare) and any(map(named, [node.left, *node.comparators])):
            found.append(f"{where}: compared with a state name")
        elif isinstance(node, ast.Call) and any(map(named, node.args)):
            func = node.func
            name = getattr(func, "attr", getattr(func, "id", None))
            table = name == "get" and isinstance(getattr(func, "value", None), ast.Name) and func.value.id.endswith("STATES")
            if name != "get" or table:
                found.append(f"{where}: a state name passed as a string to {name}")
        elif isinstance(node, ast.keyword) and node.arg == "state" and named(node.value):
            found.append(f"{where}: state= given as a string")
    return found


def test_no_launcher_module_spells_run_states_outside_run_state():
    found = [f for p in sorted(LAUNCHER.rglob("*.py")) if p.name != "run_state.py" for f in _state_spellings(p)]
    assert found == [], "use launcher.run_state.RunState:\n" + "\n".join(found)
