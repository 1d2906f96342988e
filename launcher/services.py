"""Services `sftlaunch serve` launched, recorded in runs.db (table `services`).

Why recorded: the ownership rule for `serve down` needs proof that we started the service, beyond
a name anyone could choose; and `serve status` lists what this machine launched. The table lives
beside the runs in $SFTLAUNCH_HOME/runs.db and is created on first use (the runs schema does not
know it, so older checkouts ignore it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing

from launcher.home import sftlaunch_home

_SCHEMA = """CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY, run_id TEXT, model TEXT, cloud TEXT, accelerators TEXT,
    usd_per_hour REAL, user_hash TEXT, created_at REAL, downed_at REAL, plan TEXT)"""


def _connect() -> sqlite3.Connection:
    """runs.db, created (and migrated) by the run registry first: the registry refuses a database
    that holds tables but not its own, so ours is only ever added to one it made."""
    from launcher.runs import Registry

    Registry()
    conn = sqlite3.connect(sftlaunch_home() / "runs.db", timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute(_SCHEMA)
    return conn


def record(name: str, run_id: str | None, model: str, cloud: str, accelerators: str, usd_per_hour: float,
           user_hash: str | None, plan: dict) -> None:
    with closing(_connect()) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO services VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                     (name, run_id, model, cloud, accelerators, usd_per_hour, user_hash, time.time(),
                      json.dumps(plan, sort_keys=True)))


def get(name: str) -> dict | None:
    if not (sftlaunch_home() / "runs.db").exists():
        return None
    with closing(_connect()) as conn:
        row = conn.execute("SELECT * FROM services WHERE name = ?", (name,)).fetchone()
    return dict(row) if row else None


def all_records() -> list[dict]:
    if not (sftlaunch_home() / "runs.db").exists():
        return []
    with closing(_connect()) as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM services ORDER BY created_at")]


def mark_down(name: str) -> None:
    with closing(_connect()) as conn, conn:
        conn.execute("UPDATE services SET downed_at = ? WHERE name = ?", (time.time(), name))


def take_down(backend, name: str, recorded: bool) -> tuple[bool, str | None]:
    """(downed, refusal): the service down only when launcher.backends.ownership proves it ours
    (`recorded`: this table holds it), then marked down here; a refusal touches and marks nothing."""
    from launcher.backends.ownership import down_service_if_ours

    downed, refusal = down_service_if_ours(backend, name, recorded)
    if refusal is None and recorded:
        mark_down(name)
    return downed, refusal
