"""One run as the registry knows it: a typed record instead of a dict with an `extra` bag.

Why typed: lifecycle, logs, teardown, status and up all read the same facts (where the run
lives, how it is stopped, whether a stop was asked); with a dict every reader spelt the keys
and guessed the defaults, and a budget-stop request hid in a free-form `extra` JSON. Here each
fact is a field with its type, `Backend` names the three kinds of runner once, and the cost
helpers derive spending from the record alone.

`RunRecord` still answers `record["field"]` and `record.get("field")` so callers that print or
export a record (eval, results, JSON output) need no rewrite; new code uses attributes.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass


class Backend(str, enum.Enum):
    """Where a run executes; each has one runner (launcher.backends.runner)."""

    LOCAL = "local"  # a process group on this machine (optionally a Docker container)
    CLUSTER = "cluster"  # an on-demand SkyPilot cluster named after the run id
    MANAGED = "managed"  # a SkyPilot managed (spot) job


@dataclass
class RunRecord:
    run_id: str
    name: str
    state: str
    created_at: float
    updated_at: float
    recipe_sha256: str = ""
    backend: Backend | None = None
    cloud: str | None = None
    region: str | None = None
    gpu: str | None = None
    gpus_per_node: int | None = None
    nodes: int | None = None
    spot: bool | None = None
    usd_per_hour: float | None = None
    max_usd: float | None = None
    eta_hours: float | None = None
    total_usd: float | None = None
    image: str | None = None
    bucket: str | None = None
    checkpoint_uri: str | None = None
    result_uri: str | None = None
    log_uri: str | None = None
    local_dir: str | None = None
    cluster_name: str | None = None
    job_id: str | None = None
    # Who and what we started: proof of ownership before anything is stopped.
    owner: str | None = None  # SkyPilot user hash that launched it (cloud runs)
    pid: int | None = None  # local runs: the process-group leader we started
    pid_start: str | None = None  # ...and its start time, so a reused pid is never taken for it
    progress_step: int | None = None
    progress_total: int | None = None
    eval: dict | None = None
    eval_average: float | None = None
    running_seconds: float = 0.0
    running_since: float | None = None
    ended_at: float | None = None
    # The stop protocol and the end, formerly keys of `extra`.
    stop_requested_at: float | None = None
    stop_flag: str | None = None
    job_stopped: bool = False  # the job's own budget guard stopped training
    recovery_count: int = 0
    torn_down: bool = False
    cluster_down: bool = False
    recipe: dict | None = None
    history: list | None = None
    # Derived when read.
    running_hours: float = 0.0
    cost_usd: float = 0.0

    # -- dict-style reads, for callers that treat a record as data ------------------------------
    def __getitem__(self, key: str):
        if key not in _FIELD_NAMES:
            raise KeyError(key)
        value = getattr(self, key)
        return value.value if isinstance(value, Backend) else value

    def get(self, key: str, default=None):
        if key not in _FIELD_NAMES:
            return default
        value = self[key]
        return default if value is None else value

    def as_dict(self) -> dict:
        return {name: self[name] for name in _FIELD_NAMES}

    def with_cost_now(self, now: float | None = None) -> RunRecord:
        return dataclasses.replace(self, running_hours=running_hours(self, now), cost_usd=cost_so_far(self, now))


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(RunRecord))
_BOOL_FIELDS = frozenset({"spot", "job_stopped", "torn_down", "cluster_down"})
_INT_FIELDS = frozenset({"gpus_per_node", "nodes", "pid", "progress_step", "progress_total", "recovery_count"})
_FLOAT_FIELDS = frozenset({
    "created_at", "updated_at", "usd_per_hour", "max_usd", "eta_hours", "total_usd", "eval_average",
    "running_seconds", "running_since", "ended_at", "stop_requested_at",
})
_STR_FIELDS = frozenset({
    "run_id", "name", "state", "recipe_sha256", "cloud", "region", "gpu", "image", "bucket", "checkpoint_uri",
    "result_uri", "log_uri", "local_dir", "cluster_name", "job_id", "owner", "pid_start",
})


class BadRow(ValueError):
    """A stored row whose column does not hold what the schema says (named in the message)."""


def coerce(name: str, value):
    """A column value as the field's type; BadRow when it cannot be (a garbled row must be an
    error, never printed as if it were a run)."""
    if value is None:
        return False if name in ("job_stopped", "torn_down", "cluster_down") else (
            0 if name == "recovery_count" else 0.0 if name == "running_seconds" else None)
    try:
        if name == "backend":
            return Backend(value)
        if name in _BOOL_FIELDS:
            if value not in (0, 1, True, False):
                raise ValueError(value)
            return bool(value)
        if name in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(value)
            return value
        if name in _FLOAT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(value)
            return float(value)
        if name in _STR_FIELDS:
            if not isinstance(value, str):
                raise ValueError(value)
            if name == "job_id" and not value.isdigit():
                raise ValueError(value)
            return value
    except ValueError:
        raise BadRow(f"column {name} holds {str(value)[:40]!r}") from None
    return value


def running_hours(record, now: float | None = None) -> float:
    seconds = _read(record, "running_seconds") or 0.0
    since = _read(record, "running_since")
    if since is not None:
        seconds += max(0.0, (time.time() if now is None else now) - since)
    return seconds / 3600.0


def cost_so_far(record, now: float | None = None) -> float:
    return round((_read(record, "usd_per_hour") or 0.0) * running_hours(record, now), 4)


def _read(record, key: str):
    return record.get(key) if isinstance(record, dict) else getattr(record, key)


