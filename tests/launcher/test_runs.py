"""The run registry: records, derived cost, eval scores, concurrency, migrations."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time

import pytest

from launcher.run_record import Backend, RunRecord
from launcher.runid import MAX_LEN, looks_like_run_id, new_run_id
from launcher.runs import MIGRATIONS, SCHEMA_VERSION, Registry
from sftcore.errors import UserError
from sftcore.results import eval_scores

RECIPE = {"name": "demo", "model": {"id": "sftlaunch/tiny-llama"}}


def test_create_get_list_find_resolve(tmp_path):
    reg = Registry(tmp_path)
    reg.create("sftl-demo-0a0a", RECIPE, cloud="gcp", gpu="H100", gpus_per_node=1, spot=True, usd_per_hour=3.0)
    reg.create("sftl-demo-0b0b", RECIPE)
    rec = reg.get("sftl-demo-0a0a")
    assert rec.recipe == RECIPE and len(rec.recipe_sha256) == 64
    assert rec.spot is True and rec.state == "pending" and rec.history[0]["state"] == "pending"
    assert [r.run_id for r in reg.list()] == ["sftl-demo-0b0b", "sftl-demo-0a0a"]
    assert len(reg.find("sftl-demo-0")) == 2 and reg.find("sftl-demo_") == []
    assert reg.resolve("sftl-demo-0a").run_id == "sftl-demo-0a0a"
    with pytest.raises(UserError, match=r"matches 2 runs \(sftl-demo-0b0b, sftl-demo-0a0a\)"):
        reg.resolve("sftl-demo")
    with pytest.raises(UserError, match="no run"):
        reg.resolve("nope")
    with pytest.raises(ValueError, match="unknown run record fields"):
        reg.update("sftl-demo-0a0a", colour="red")


def test_cost_is_rate_times_billing_time(tmp_path):
    reg = Registry(tmp_path)
    reg.create("sftl-c-0001", RECIPE, usd_per_hour=4.0)
    t0 = time.time() - 7200
    reg.set_state("sftl-c-0001", "launching", at=t0)
    reg.set_state("sftl-c-0001", "running", at=t0 + 600)  # still billing: no change in accounting
    reg.set_state("sftl-c-0001", "recovering", at=t0 + 3600)  # preempted: not billing
    reg.set_state("sftl-c-0001", "running", at=t0 + 5400)
    reg.set_state("sftl-c-0001", "succeeded", at=t0 + 7200)
    rec = reg.get("sftl-c-0001")
    assert rec.running_hours == pytest.approx(1.5)
    assert rec.cost_usd == pytest.approx(6.0)
    assert [h["state"] for h in rec.history] == ["pending", "launching", "running", "recovering", "running", "succeeded"]
    assert rec.ended_at == pytest.approx(t0 + 7200)
    # A final state is not undone by a stale refresh.
    assert reg.set_state("sftl-c-0001", "running") is False
    assert reg.get("sftl-c-0001").state == "succeeded"


def test_set_eval_from_lm_eval_results_and_from_scores(tmp_path):
    reg = Registry(tmp_path)
    reg.create("sftl-e-0001", RECIPE)
    lm_eval = {"results": {
        "arc_challenge": {"alias": "arc", "acc,none": 0.5, "acc_stderr,none": 0.01, "acc_norm,none": 0.6},
        "gsm8k": {"exact_match,strict-match": 0.2, "exact_match_stderr,strict-match": 0.01},
    }}
    stored = reg.set_eval("sftl-e-0001", lm_eval)
    assert stored["scores"] == {"arc_challenge": 0.6, "gsm8k": 0.2}
    assert reg.get("sftl-e-0001").eval_average == pytest.approx(0.4)
    assert eval_scores({"scores": {"a": 1.0, "b": 0.0}, "average": 0.9}) == ({"a": 1.0, "b": 0.0}, 0.9)


def test_secrets_never_stored(tmp_path, monkeypatch):
    canary = "hf_REGISTRYcanary0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", canary)
    reg = Registry(tmp_path / "reg")
    reg.create("sftl-s-0001", {"name": "s", "note": f"token {canary}"}, stop_flag=f"x --token {canary}")
    reg.set_state("sftl-s-0001", "failed", f"auth failed for {canary}")
    reg.close()
    for f in (tmp_path / "reg").iterdir():
        assert canary.encode() not in f.read_bytes(), f


def _writer(home: str, worker: int, n: int) -> None:
    reg = Registry(home)
    for i in range(n):
        rid = f"sftl-w{worker}-{i:04x}"
        reg.create(rid, RECIPE, usd_per_hour=1.0)
        reg.set_state(rid, "running")
        reg.update(rid, progress_step=i, progress_total=n)
        reg.set_state(rid, "succeeded")


def test_concurrent_processes_do_not_corrupt(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    reg = Registry(tmp_path)
    runs = reg.list()
    assert len(runs) == 60 and all(r.state == "succeeded" for r in runs)
    assert all(len(reg.get(r.run_id).history) == 3 for r in runs)
    assert reg._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert reg._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_upgrades_a_v1_database(tmp_path):
    db = sqlite3.connect(tmp_path / "runs.db")
    for stmt in MIGRATIONS[0]:
        db.execute(stmt)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1, 0)")
    db.execute(
        "INSERT INTO runs (run_id, name, recipe_json, recipe_sha256, state, cloud, gpu, spot, usd_per_hour,"
        " cluster_name, created_at, updated_at) VALUES ('sftl-old-0001', 'old', '{\"name\": \"old\"}', 'x',"
        " 'running', 'lambda', 'H100', 0, 2.5, 'sftl-old-0001', 1, 1)"
    )
    db.commit()
    db.close()
    reg = Registry(tmp_path)
    assert reg.schema_version() == SCHEMA_VERSION
    rec = reg.get("sftl-old-0001")
    assert rec.cloud == "lambda" and rec.recipe == {"name": "old"} and rec.spot is False
    reg.update("sftl-old-0001", bucket="gs://b", progress_step=3, progress_total=9)
    reg.set_state("sftl-old-0001", "succeeded")
    assert reg.get("sftl-old-0001").bucket == "gs://b"
    assert Registry(tmp_path).schema_version() == SCHEMA_VERSION  # reopening does not re-migrate


def test_refuses_a_newer_schema(tmp_path):
    Registry(tmp_path).close()
    db = sqlite3.connect(tmp_path / "runs.db")
    db.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(UserError, match="newer"):
        Registry(tmp_path)


def test_run_ids(tmp_path):
    rid = new_run_id("llama2-70b-dolphin", taken=lambda _: False)
    assert looks_like_run_id(rid) and rid.startswith("sftl-llama2-70b-dolphin-") and len(rid) <= MAX_LEN
    assert len(new_run_id("a" * 40, taken=lambda _: False)) <= MAX_LEN
    seen = {"sftl-x-0000"}
    tries = []

    def taken(r):
        tries.append(r)
        return len(tries) < 3  # the first two are "taken"

    assert new_run_id("x", taken=taken) == tries[-1] and len(tries) == 3
    reg = Registry()
    rid = new_run_id("x")
    reg.create(rid, RECIPE)
    assert rid not in seen and new_run_id("x") != rid


def test_upgrades_a_v2_database_moving_extra_into_typed_fields(tmp_path):
    db = sqlite3.connect(tmp_path / "runs.db")
    for version in (0, 1):
        for stmt in MIGRATIONS[version]:
            db.execute(stmt)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (2, 0)")
    extra = '{"stop_requested_at": 12.5, "stop_flag": "gs://b/x/control/stop", "recovery_count": 2, "torn_down": true}'
    db.execute(
        "INSERT INTO runs (run_id, name, recipe_json, recipe_sha256, state, backend, job_id, created_at, updated_at,"
        " extra_json) VALUES ('sftl-old-0002', 'old', '{}', 'x', 'stopping', 'managed', '4', 1, 1, ?)", (extra,)
    )
    db.commit()
    db.close()
    rec = Registry(tmp_path).get("sftl-old-0002")
    assert isinstance(rec, RunRecord) and rec.backend is Backend.MANAGED and rec.backend == "managed"
    assert (rec.stop_requested_at, rec.stop_flag, rec.recovery_count, rec.torn_down, rec.job_stopped) == (
        12.5, "gs://b/x/control/stop", 2, True, False)


def test_run_references_must_name_one_run(tmp_path):
    reg = Registry(tmp_path)
    for rid in ("sftl-demo-0a0a", "sftl-demo-0a0b", "sftl-other-0c0c"):
        reg.create(rid, RECIPE)
    for empty in ("", " ", "\t"):
        with pytest.raises(UserError, match="empty run reference"):
            reg.resolve(empty)
    with pytest.raises(UserError, match=r"matches 2 runs \(sftl-demo-0a0b, sftl-demo-0a0a\)"):
        reg.resolve("sftl-demo-0a0")
    with pytest.raises(UserError, match="control characters"):
        reg.resolve("sftl-demo-0a0a\n")
    assert reg.resolve("sftl-o").run_id == "sftl-other-0c0c"
    assert reg.find("sftl-demo-0A") == []  # sqlite's LIKE ignores case; run ids do not


# -- a broken registry: one line naming the file and the fix, exit 2, from every command -------------
def _random_bytes(home):
    home.mkdir(parents=True)
    (home / "runs.db").write_bytes(bytes(range(256)) * 64)


def _truncated(home):
    reg = Registry(home)
    for i in range(300):
        reg.create(f"sftl-t-{i:04x}", {"name": "t", "pad": "x" * 500})
    reg._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    reg.close()
    db = home / "runs.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])


def _directory(home):
    (home / "runs.db").mkdir(parents=True)


def _home_is_a_file(home):
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("not a directory")


def _bad_json_row(home):
    reg = Registry(home)
    reg.create("sftl-j-0001", RECIPE)
    reg._conn.execute("UPDATE runs SET eval_json='{not json' WHERE run_id='sftl-j-0001'")
    reg.close()


def _garbled_state(home):
    reg = Registry(home)
    reg.create("sftl-g-0001", RECIPE)
    reg._conn.execute("UPDATE runs SET state=x'00ff10', usd_per_hour='lots' WHERE run_id='sftl-g-0001'")
    reg.close()


def _someone_elses_sqlite(home):
    home.mkdir(parents=True)
    db = sqlite3.connect(home / "runs.db")
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, athlete TEXT, km REAL)")
    db.commit()
    db.close()


BROKEN = {"random-bytes": _random_bytes, "another-programs-db": _someone_elses_sqlite, "truncated": _truncated, "directory": _directory,
          "home-is-a-file": _home_is_a_file, "bad-json-row": _bad_json_row, "garbled-row": _garbled_state}


@pytest.mark.parametrize("kind", sorted(BROKEN))
@pytest.mark.parametrize("argv", [["status", "--no-refresh"], ["status"], ["logs", "sftl-"],
                                  ["teardown", "--all", "--dry-run"], ["up", "--local", "--dry-run", "RECIPE"]])
def test_a_broken_registry_is_one_clear_line(kind, argv, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from launcher.cli import cli
    from tests.conftest import RECIPES

    home = tmp_path / "sfth"
    monkeypatch.setenv("SFTLAUNCH_HOME", str(home))
    BROKEN[kind](home)
    argv = [str(RECIPES / "tiny-local.yaml") if a == "RECIPE" else a for a in argv]
    res = CliRunner().invoke(cli, argv)
    out = res.output.strip()
    if kind.endswith("-row") and argv[0] == "up":
        assert res.exit_code == 0, res.output  # one damaged row of another run does not block a new run
        return
    assert res.exit_code == 2, (kind, argv, res.output)
    assert "Traceback" not in out and "internal error" not in out and out.count("\n") == 0, out
    target = home if kind == "home-is-a-file" else home / "runs.db"
    assert str(target) in out and ("move it aside" in out), out
    if kind == "another-programs-db":  # left exactly as it was
        tables = sqlite3.connect(home / "runs.db").execute("SELECT name FROM sqlite_master").fetchall()
        assert tables == [("runs",)]


def test_a_read_only_home_serves_read_only_commands(tmp_path, monkeypatch):
    import os
    import stat

    from click.testing import CliRunner

    from launcher.cli import cli

    home = tmp_path / "ro"
    monkeypatch.setenv("SFTLAUNCH_HOME", str(home))
    reg = Registry(home)
    reg.create("sftl-ro-0001", RECIPE, state="succeeded", backend="local", local_dir=str(tmp_path / "d"))
    reg.close()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "run.log").write_text("hello from the run\n")
    for f in home.iterdir():
        f.chmod(stat.S_IRUSR)
    home.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # root writes through permissions: make access() say what a user would see
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if mode & os.W_OK else real_access(p, mode))
    try:
        res = CliRunner().invoke(cli, ["status", "--no-refresh"])
        assert res.exit_code == 0 and "sftl-ro-0001" in res.output, res.output
        res = CliRunner().invoke(cli, ["logs", "sftl-ro"])
        assert res.exit_code == 0 and "hello from the run" in res.output, res.output
        res = CliRunner().invoke(cli, ["status"])  # a refresh would record: it says so and shows the record
        assert res.exit_code == 0 and "read-only" in res.output and "sftl-ro-0001" in res.output, res.output
        res = CliRunner().invoke(cli, ["teardown", "sftl-ro-0001", "--yes"])
        assert res.exit_code in (0, 2) and "Traceback" not in res.output and "internal error" not in res.output
        with pytest.raises(UserError, match="read-only"):
            Registry(home).set_state("sftl-ro-0001", "failed")
    finally:
        home.chmod(stat.S_IRWXU)


def test_stopping_bills_until_the_job_ends_and_job_seconds_is_a_floor(tmp_path):
    """A run asked to stop still runs until its checkpoint is saved; a managed job's recoveries that
    no refresh saw are in SkyPilot's summed running time (job_seconds)."""
    reg = Registry(tmp_path)
    reg.create("sftl-c-0003", RECIPE, usd_per_hour=2.0)
    t0 = time.time() - 7200
    reg.set_state("sftl-c-0003", "running", at=t0)
    reg.set_state("sftl-c-0003", "stopping", at=t0 + 3600)
    reg.set_state("sftl-c-0003", "stopped", at=t0 + 4500)
    assert reg.get("sftl-c-0003").running_hours == pytest.approx(1.25)
    reg.update("sftl-c-0003", job_seconds=3 * 3600.0)
    rec = reg.get("sftl-c-0003")
    assert rec.running_hours == pytest.approx(3.0) and rec.cost_usd == pytest.approx(6.0)


def test_upgrades_a_v3_database_with_empty_calibration_columns(tmp_path):
    db = sqlite3.connect(tmp_path / "runs.db")
    for version in (0, 1, 2):
        for stmt in MIGRATIONS[version]:
            db.execute(stmt)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (3, 0)")
    db.execute("INSERT INTO runs (run_id, name, recipe_json, recipe_sha256, state, created_at, updated_at)"
               " VALUES ('sftl-old-0003', 'old', '{}', 'x', 'succeeded', 1, 1)")
    db.commit()
    db.close()
    reg = Registry(tmp_path)
    rec = reg.get("sftl-old-0003")
    assert reg.schema_version() == 4 and rec.measured_tokens_per_s is None and rec.job_seconds is None
    reg.update("sftl-old-0003", measured_tokens_per_s=812.5, measured_mfu=0.31, params_b=6.7)
    assert reg.get("sftl-old-0003").measured_mfu == 0.31


def test_a_full_disk_is_not_a_broken_registry(tmp_path, monkeypatch):
    """sqlite's real SQLITE_FULL (a page limit stands in for the disk) was reported as
    a broken registry with advice to move it aside, which loses the tracking of every run."""
    from click.testing import CliRunner

    from launcher.cli import cli
    from launcher.runs_errors import RegistryError, sqlite_error

    home = tmp_path / "full"
    monkeypatch.setenv("SFTLAUNCH_HOME", str(home))
    reg = Registry(home)
    reg.create("sftl-full-0001", RECIPE, state="running")
    pages = reg._conn.execute("PRAGMA page_count").fetchone()[0]
    reg._conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(RegistryError) as err:
        for i in range(2, 200):
            reg.create(f"sftl-full-{i:04d}", {**RECIPE, "pad": "x" * 4000}, state="running")
    text = str(err.value)
    assert "disk is full" in text and "df -h" in text and "move it aside" not in text, text
    reg.close()
    assert Registry(home).get("sftl-full-0001").state == "running"  # intact, tracking kept
    # The I/O error sqlite gives for a full disk under WAL: the same advice when space is short.
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**30, 2**30, 0))
    reg = Registry(home)
    text = str(sqlite_error(reg.path, reg.home, sqlite3.OperationalError("disk I/O error")))
    assert "disk is full" in text and "move it aside" not in text, text
    res = CliRunner().invoke(cli, ["status", "--no-refresh"])
    assert res.exit_code == 0 and "sftl-full-0001" in res.output, res.output
