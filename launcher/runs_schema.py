"""The registry's sqlite schema, as the list of steps that build it.

Why steps: `runs.db` outlives upgrades of sftlaunch. `MIGRATIONS[i]` takes a database from
version i to i+1; launcher.runs applies the missing steps in one exclusive transaction when it
opens an older file (and reads an older file as it is when the home is read-only).
"""

from __future__ import annotations

SCHEMA_VERSION = 4

MIGRATIONS: list[list[str]] = [
    # 0 -> 1: the first release: the run and its state history.
    [
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            recipe_json TEXT NOT NULL,
            recipe_sha256 TEXT NOT NULL,
            state TEXT NOT NULL,
            cloud TEXT, region TEXT, gpu TEXT, spot INTEGER,
            usd_per_hour REAL,
            cluster_name TEXT, job_id TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE states (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(run_id),
            state TEXT NOT NULL,
            detail TEXT,
            at REAL NOT NULL
        )""",
        "CREATE INDEX states_run ON states(run_id, id)",
    ],
    # 1 -> 2: where outputs go, images, progress, eval scores, running-time accounting, local runs.
    [
        "ALTER TABLE runs ADD COLUMN image TEXT",
        "ALTER TABLE runs ADD COLUMN backend TEXT",  # cluster | managed | local
        "ALTER TABLE runs ADD COLUMN gpus_per_node INTEGER",
        "ALTER TABLE runs ADD COLUMN nodes INTEGER",
        "ALTER TABLE runs ADD COLUMN max_usd REAL",
        "ALTER TABLE runs ADD COLUMN bucket TEXT",
        "ALTER TABLE runs ADD COLUMN checkpoint_uri TEXT",
        "ALTER TABLE runs ADD COLUMN result_uri TEXT",
        "ALTER TABLE runs ADD COLUMN log_uri TEXT",
        "ALTER TABLE runs ADD COLUMN local_dir TEXT",
        "ALTER TABLE runs ADD COLUMN pid INTEGER",
        "ALTER TABLE runs ADD COLUMN progress_step INTEGER",
        "ALTER TABLE runs ADD COLUMN progress_total INTEGER",
        "ALTER TABLE runs ADD COLUMN eval_json TEXT",
        "ALTER TABLE runs ADD COLUMN eval_average REAL",
        "ALTER TABLE runs ADD COLUMN running_seconds REAL NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN running_since REAL",
        "ALTER TABLE runs ADD COLUMN ended_at REAL",
        "ALTER TABLE runs ADD COLUMN eta_hours REAL",
        "ALTER TABLE runs ADD COLUMN total_usd REAL",
        "ALTER TABLE runs ADD COLUMN extra_json TEXT",
        "CREATE INDEX runs_created ON runs(created_at)",
    ],
    # 2 -> 3: the typed record: ownership proofs and the stop protocol get columns; `extra_json`
    # (kept, no longer written) is copied into them.
    [
        "ALTER TABLE runs ADD COLUMN owner TEXT",
        "ALTER TABLE runs ADD COLUMN pid_start TEXT",
        "ALTER TABLE runs ADD COLUMN stop_requested_at REAL",
        "ALTER TABLE runs ADD COLUMN stop_flag TEXT",
        "ALTER TABLE runs ADD COLUMN job_stopped INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN recovery_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN torn_down INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN cluster_down INTEGER NOT NULL DEFAULT 0",
        """UPDATE runs SET
            stop_requested_at = json_extract(extra_json, '$.stop_requested_at'),
            stop_flag = json_extract(extra_json, '$.stop_flag'),
            job_stopped = COALESCE(json_extract(extra_json, '$.job_stopped'), 0) != 0,
            recovery_count = COALESCE(CAST(json_extract(extra_json, '$.recovery_count') AS INTEGER), 0),
            torn_down = COALESCE(json_extract(extra_json, '$.torn_down'), 0) != 0,
            cluster_down = COALESCE(json_extract(extra_json, '$.cluster_down'), 0) != 0
           WHERE extra_json IS NOT NULL AND json_valid(extra_json)""",
    ],
    # 3 -> 4: the job's calibration probe (jobs/calibration.py: measured tokens/s, MFU, peak memory,
    # the ETA and cost re-planned from them) and SkyPilot's own running time of a managed job summed
    # over its recoveries, so predicted and actual can be compared and later plans use the measure.
    [
        "ALTER TABLE runs ADD COLUMN measured_tokens_per_s REAL",
        "ALTER TABLE runs ADD COLUMN predicted_tokens_per_s REAL",
        "ALTER TABLE runs ADD COLUMN measured_mfu REAL",
        "ALTER TABLE runs ADD COLUMN params_b REAL",
        "ALTER TABLE runs ADD COLUMN peak_mem_gb REAL",
        "ALTER TABLE runs ADD COLUMN calibrated_eta_hours REAL",
        "ALTER TABLE runs ADD COLUMN calibrated_usd REAL",
        "ALTER TABLE runs ADD COLUMN job_seconds REAL",
    ],
]
