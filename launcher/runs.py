"""The run registry: one sqlite file, `$SFTLAUNCH_HOME/runs.db`, that every command reads.

Why sqlite with WAL: several `sftlaunch` processes (an `up` streaming logs, a `status` in another
terminal, a budget guard) read and write at once. WAL lets readers proceed while one writer
commits; every write is one `BEGIN IMMEDIATE` transaction with a generous busy timeout, so
concurrent writers queue instead of failing or corrupting the file.

Why a schema version table: the file outlives upgrades of sftlaunch. `MIGRATIONS[i]` takes a
database from version i to i+1; opening an older file applies the missing steps in one
exclusive transaction.

Cost so far is derived, never guessed: `usd_per_hour` times the seconds spent in billing states
(`RunState.is_billing`), accumulated by `set_state` as the state history is written; for a managed job
at least SkyPilot's own running time summed over every recovery (`job_seconds`), which also
counts the attempts no refresh saw (launcher.run_record.running_hours).

Why every sqlite error becomes a `RegistryError`: the file lives in the user's home and can be
damaged (truncated, random bytes, a directory in its place, a read-only disk, a row edited by
hand). Each case is one line naming the file and the fix (move it aside: the next command starts
a new registry and the old file stays for inspection), exit 2, never a traceback or a garbled row.
A home we cannot write is opened read-only, so `status --no-refresh` and `logs` still work.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import time
from pathlib import Path

from launcher.home import sftlaunch_home
from launcher.run_record import (
    _FIELD_NAMES,
    Backend,
    BadRow,
    RunRecord,
    coerce_row,
    cost_so_far,
    running_hours,
)
from launcher.run_state import RunState
from launcher.runs_errors import (
    BUSY_TIMEOUT_S,
    RegistryError,
    broken,
    read_only_error,
    sqlite_error,
    writable,
)
from launcher.runs_schema import MIGRATIONS, SCHEMA_VERSION
from sftcore.contract import Env
from sftcore.errors import UserError
from sftcore.masking import mask, mask_obj
from sftcore.results import eval_scores

# Columns a caller may set through create()/update(); the rest are managed here.
FIELDS = frozenset({
    "state", "cloud", "region", "gpu", "spot", "usd_per_hour", "cluster_name", "job_id", "image",
    "backend", "gpus_per_node", "nodes", "max_usd", "bucket", "checkpoint_uri", "result_uri",
    "log_uri", "local_dir", "pid", "progress_step", "progress_total", "eta_hours", "total_usd",
    "owner", "pid_start", "stop_requested_at", "stop_flag", "job_stopped", "recovery_count", "torn_down",
    "cluster_down", "measured_tokens_per_s", "predicted_tokens_per_s", "measured_mfu", "params_b", "peak_mem_gb",
    "calibrated_eta_hours", "calibrated_usd", "job_seconds",
})
_BOOL_COLUMNS = frozenset({"spot", "job_stopped", "torn_down", "cluster_down"})
MAX_MATCHES_SHOWN = 10
# Record fields stored as columns of the same name (eval and recipe are JSON; the rest derived).
_COLUMN_FIELDS = tuple(n for n in _FIELD_NAMES if n not in ("eval", "recipe", "history", "running_hours", "cost_usd"))


def run_dir(run_id: str, home: Path | None = None) -> Path:
    """Where a run's local outputs live (train out dir, eval results, publish dir, run.log)."""
    return (home or sftlaunch_home()) / "runs" / run_id


def recipe_payload(recipe) -> tuple[str, str, str]:
    """(name, resolved recipe JSON, sha256) from a Recipe or an already-resolved dict."""
    if hasattr(recipe, "resolved_dict"):
        data = recipe.resolved_dict()
        sha = recipe.sha256()
    else:
        data = dict(recipe)
        sha = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return str(data.get("name", "")), json.dumps(mask_obj(data), sort_keys=True), sha


def _guarded(fn):
    """sqlite errors from a damaged file (malformed pages, not a database, read-only) as one line."""

    @functools.wraps(fn)
    def inner(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(self.path, self.home, exc) from None

    return inner


class Registry:
    def __init__(self, home: Path | str | None = None, readonly: bool = False):
        self.home = Path(home) if home is not None else sftlaunch_home()
        self.path = self.home / "runs.db"
        if self.home.exists() and not self.home.is_dir():
            raise RegistryError(f"{self.home}: the sftlaunch home is not a directory; move it aside or set "
                                f"{Env.HOME} to a directory")
        if self.path.exists() and not self.path.is_file():
            raise broken(self.path, "is not a file")
        self.writable = not readonly and writable(self.home, self.path)
        self._names: list[str] | None = None
        try:
            self._conn = self._connect()
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            if self.writable:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._conn.execute("SELECT run_id, state FROM runs LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(self.path, self.home, exc) from None

    def _connect(self) -> sqlite3.Connection:
        if self.writable:
            self.home.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        if not self.path.exists():
            return sqlite3.connect(":memory:", isolation_level=None)  # nothing recorded yet: an empty registry
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            # A WAL database in a directory we cannot write: sqlite cannot create its -shm file.
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)

    # -- schema -----------------------------------------------------------------------------
    def _version(self) -> int:
        row = self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
        ).fetchone()
        if row is None:
            return 0
        row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        current = self._version()
        if current > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.path}: schema version {current} is newer than this sftlaunch understands "
                f"({SCHEMA_VERSION}); upgrade sftlaunch"
            )
        if current == SCHEMA_VERSION:
            return
        if current == 0 and self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            # Another program's database where ours should be: never add our tables to it.
            raise broken(self.path, "is a SQLite database without sftlaunch's tables")
        if not self.writable:
            if current == 0:
                self.writable = True  # the in-memory stand-in for a registry not created yet
                try:
                    return self._migrate()
                finally:
                    self.writable = False
            return  # an older file read as it is; its missing columns read as defaults
        with self._tx("EXCLUSIVE"):
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL)"
            )
            current = self._version()
            for version in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    self._conn.execute(statement)
                self._conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version + 1, time.time())
                )

    @_guarded
    def schema_version(self) -> int:
        return self._version()

    def _tx(self, mode: str = "IMMEDIATE"):
        if not self.writable:
            raise read_only_error(self.path, self.home)
        conn = self._conn

        class _Tx:
            def __enter__(self_inner):
                conn.execute(f"BEGIN {mode}")
                return conn

            def __exit__(self_inner, exc_type, exc, tb):
                # sqlite rolls back by itself on SQLITE_FULL: a second ROLLBACK would hide why.
                try:
                    if exc_type is None:
                        conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                return False

        return _Tx()

    def close(self) -> None:
        self._conn.close()

    # -- writes ----------------------------------------------------------------------------
    @_guarded
    def create(self, run_id: str, recipe, **fields) -> RunRecord:
        name, recipe_json, sha = recipe_payload(recipe)
        now = time.time()
        state = _state(fields.pop("state", RunState.PENDING))
        cols = self._columns(fields)
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, name, recipe_json, recipe_sha256, state, created_at, updated_at"
                + "".join(f", {c}" for c in cols) + ") VALUES (?, ?, ?, ?, ?, ?, ?"
                + ", ?" * len(cols) + ")",
                (run_id, name, recipe_json, sha, state, now, now, *cols.values()),
            )
            conn.execute(
                "INSERT INTO states (run_id, state, detail, at) VALUES (?, ?, ?, ?)", (run_id, state, None, now)
            )
            if state.is_billing:
                conn.execute("UPDATE runs SET running_since=? WHERE run_id=?", (now, run_id))
        return self.get(run_id)

    @_guarded
    def update(self, run_id: str, **fields) -> None:
        if "state" in fields:
            self.set_state(run_id, fields.pop("state"))
        if not fields:
            return
        cols = self._columns(fields)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET " + ", ".join(f"{c}=?" for c in cols) + ", updated_at=? WHERE run_id=?",
                (*cols.values(), time.time(), run_id),
            )
            if cur.rowcount == 0:
                raise KeyError(run_id)

    @_guarded
    def set_state(self, run_id: str, state: RunState | str, detail: str | None = None, at: float | None = None) -> bool:
        """Record a transition (no-op if unchanged); returns whether the state changed.

        Running time is accumulated here: leaving a billing state adds the time spent in it.
        A final state is sticky against late, stale refreshes (a cancelled run stays cancelled)."""
        state = _state(state)
        now = time.time() if at is None else at
        with self._tx() as conn:
            row = conn.execute(
                "SELECT state, running_seconds, running_since FROM runs WHERE run_id=?", (run_id,)
            ).fetchone()
            if row is None:
                raise KeyError(run_id)
            if row["state"] == state:
                return False
            if row["state"] in RunState.final() and not state.is_final:
                return False
            running_seconds = row["running_seconds"] or 0.0
            running_since = row["running_since"]
            if running_since is not None and not state.is_billing:
                running_seconds += max(0.0, now - running_since)
                running_since = None
            elif running_since is None and state.is_billing:
                running_since = now
            ended_at = now if state.is_final else None
            conn.execute(
                "UPDATE runs SET state=?, running_seconds=?, running_since=?, ended_at=COALESCE(?, ended_at),"
                " updated_at=? WHERE run_id=?",
                (state, running_seconds, running_since, ended_at, now, run_id),
            )
            conn.execute(
                "INSERT INTO states (run_id, state, detail, at) VALUES (?, ?, ?, ?)",
                (run_id, state, mask(detail), now),
            )
        return True

    @_guarded
    def set_eval(self, run_id: str, results: dict) -> dict:
        scores, average = eval_scores(results)
        payload = {"scores": scores, "average": average}
        if isinstance(results.get("config"), dict):
            payload["config"] = mask_obj(results["config"])
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET eval_json=?, eval_average=?, updated_at=? WHERE run_id=?",
                (json.dumps(payload, sort_keys=True), average, time.time(), run_id),
            )
            if cur.rowcount == 0:
                raise KeyError(run_id)
        return payload

    def _columns(self, fields: dict) -> dict:
        unknown = set(fields) - FIELDS
        if unknown:
            raise ValueError(f"unknown run record fields: {sorted(unknown)}")
        cols = {}
        for key, value in fields.items():
            if key in _BOOL_COLUMNS:
                cols[key] = None if value is None else int(bool(value))
            elif isinstance(value, Backend):
                cols[key] = value.value
            else:
                cols[key] = mask(value)
        return cols

    # -- reads -----------------------------------------------------------------------------
    @_guarded
    def get(self, run_id: str, history: bool = True) -> RunRecord | None:
        row = self._conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            return None
        record = self._record(row)
        if history:
            record.history = [
                {"state": r["state"], "detail": r["detail"], "at": r["at"]}
                for r in self._conn.execute(
                    "SELECT state, detail, at FROM states WHERE run_id=? ORDER BY id", (run_id,)
                )
            ]
        return record

    @_guarded
    def list(self, active_only: bool = False) -> list[RunRecord]:
        """Every run, newest first, without the (larger) recipe and history."""
        sql = "SELECT * FROM runs"
        if active_only:
            sql += f" WHERE state NOT IN ({','.join('?' * len(RunState.final()))})"
        rows = self._conn.execute(sql + " ORDER BY created_at DESC",
                                  tuple(s.value for s in RunState.final()) if active_only else ())
        return [self._record(r, with_recipe=False) for r in rows]

    @_guarded
    def find(self, prefix: str) -> list[RunRecord]:
        """Runs whose id starts with `prefix` (a unique prefix is enough to name a run)."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._conn.execute(
            "SELECT * FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY created_at DESC", (escaped + "%",)
        )
        return [self._record(r, with_recipe=False) for r in rows if r["run_id"].startswith(prefix)]

    def resolve(self, ref: str) -> RunRecord:
        """The one run `ref` names (full id or unique prefix); UserError otherwise. An empty
        reference (a script's unset variable) names nothing: it would prefix every run."""
        check_reference(ref)
        exact = self.get(ref)
        if exact is not None:
            return exact
        matches = self.find(ref)
        if not matches:
            raise UserError(f"no run {ref!r} in {self.path}; `sftlaunch status` lists runs")
        if len(matches) > 1:
            raise UserError(ambiguous(ref, [m.run_id for m in matches]))
        return self.get(matches[0].run_id)

    def _record(self, row: sqlite3.Row, with_recipe: bool = True) -> RunRecord:
        data = dict(row)
        if self._names is None:  # the columns this file has (an older, read-only file may lack some)
            self._names = [n for n in _COLUMN_FIELDS if n in data]
        try:
            values = coerce_row(data, self._names)
            values["eval"] = _json_column(data, "eval_json", dict)
            if with_recipe:
                values["recipe"] = _json_column(data, "recipe_json", dict)
            record = RunRecord(**values)
        except (BadRow, TypeError) as exc:
            raise broken(self.path, f"run {str(data.get('run_id'))[:40]!r}: {exc}") from None
        record.running_hours = running_hours(record)
        record.cost_usd = cost_so_far(record)
        return record


def _state(state: RunState | str) -> RunState:
    try:
        return RunState(state)
    except ValueError:
        raise ValueError(f"unknown run state {state!r}") from None


def _json_column(data: dict, column: str, kind: type):
    text = data.get(column)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise BadRow(f"column {column} is not valid JSON") from None
    if not isinstance(value, kind):
        raise BadRow(f"column {column} is not a JSON {kind.__name__}")
    return value


def check_reference(ref: str | None) -> str:
    """A run reference must name something: empty or blank would match every run as a prefix."""
    if ref is None or not ref.strip():
        raise UserError("empty run reference (an unset variable?): name a run id or a unique prefix; "
                        "`sftlaunch status` lists runs")
    if ref != ref.strip() or any(ord(c) < 32 for c in ref):
        raise UserError(f"run reference {ref!r}: spaces or control characters are not part of any run id")
    return ref


def ambiguous(ref: str, ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_MATCHES_SHOWN]) + (f" and {len(ids) - MAX_MATCHES_SHOWN} more"
                                                   if len(ids) > MAX_MATCHES_SHOWN else "")
    return f"run reference {ref!r} matches {len(ids)} runs ({shown}); give more of the id"


