"""One run as the registry knows it: a typed record instead of a dict with an `extra` bag.

Why typed: lifecycle, logs, teardown, status and up all read the same facts (where the run
lives, how it is stopped, whether a stop was asked); with a dict every reader spelt the keys
and guessed the defaults, and a budget-stop request hid in a free-form `extra` JSON. Here each
fact is a field with its type, `Backend` names the three kinds of runner once, and the cost
helpers derive spending from the record alone.

Attribute access only: a record is not a mapping (`record["state"]` and `record.get` raise), so a
misspelt field fails where it is written instead of reading as None. `as_dict` gives the plain
data (enums as their names) for JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass

from launcher.run_state import BY_NAME, RunState


class Backend(str, enum.Enum):
    """Where a run executes; each has one runner (launcher.backends.runner)."""

    LOCAL = "local"  # a process group on this machine (optionally a Docker container)
    CLUSTER = "cluster"  # an on-demand SkyPilot cluster named after the run id
    MANAGED = "managed"  # a SkyPilot managed (spot) job


@dataclass
class RunRecord:
    run_id: str
    name: str
    state: RunState
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
    # The stop protocol and the end.
    stop_requested_at: float | None = None
    stop_flag: str | None = None
    job_stopped: bool = False  # the job's own budget guard stopped training
    recovery_count: int = 0
    torn_down: bool = False
    cluster_down: bool = False
    # The job's calibration probe (jobs/calibration.py), read from its metrics.jsonl.
    measured_tokens_per_s: float | None = None
    predicted_tokens_per_s: float | None = None
    measured_mfu: float | None = None
    params_b: float | None = None
    peak_mem_gb: float | None = None
    calibrated_eta_hours: float | None = None
    calibrated_usd: float | None = None
    # A managed job's running time as SkyPilot sums it over every recovery (its queue's job_duration).
    job_seconds: float | None = None
    recipe: dict | None = None
    history: list | None = None
    # Derived when read.
    running_hours: float = 0.0
    cost_usd: float = 0.0

    def as_dict(self) -> dict:
        """Every field as plain data: `backend` and `state` as their stored names."""
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        for name in ("backend", "state"):
            if out[name] is not None:
                out[name] = out[name].value
        return out


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(RunRecord))
_BOOL_FIELDS = frozenset({"spot", "job_stopped", "torn_down", "cluster_down"})
_INT_FIELDS = frozenset({"gpus_per_node", "nodes", "pid", "progress_step", "progress_total", "recovery_count"})
_FLOAT_FIELDS = frozenset({
    "created_at", "updated_at", "usd_per_hour", "max_usd", "eta_hours", "total_usd", "eval_average",
    "running_seconds", "running_since", "ended_at", "stop_requested_at", "measured_tokens_per_s",
    "predicted_tokens_per_s", "measured_mfu", "params_b", "peak_mem_gb", "calibrated_eta_hours", "calibrated_usd",
    "job_seconds",
})
_STR_FIELDS = frozenset({
    "run_id", "name", "recipe_sha256", "cloud", "region", "gpu", "image", "bucket", "checkpoint_uri",
    "result_uri", "log_uri", "local_dir", "cluster_name", "job_id", "owner", "pid_start",
})


class BadRow(ValueError):
    """A stored row whose column does not hold what the schema says (named in the message)."""


def _as_bool(value):
    if value not in (0, 1):  # True/False compare equal to 1/0
        raise ValueError(value)
    return bool(value)


def _as_int(value):
    if type(value) is not int:
        raise ValueError(value)
    return value


def _as_float(value):
    if type(value) not in (int, float):
        raise ValueError(value)
    return float(value)


def _as_str(value):
    if type(value) is not str:
        raise ValueError(value)
    return value


def _as_job_id(value):
    if type(value) is not str or not value.isdigit():
        raise ValueError(value)
    return value


# One converter per column, chosen once (a registry of 1,000 runs is read on every `status`).
_CONVERT = {
    **{n: _as_bool for n in _BOOL_FIELDS}, **{n: _as_int for n in _INT_FIELDS},
    **{n: _as_float for n in _FLOAT_FIELDS}, **{n: _as_str for n in _STR_FIELDS},
    "job_id": _as_job_id, "backend": lambda value: _BACKENDS[value] if value in _BACKENDS else Backend(value),
    "state": lambda value: BY_NAME[value] if type(value) is str and value in BY_NAME else RunState(value),
}
_BACKENDS = {b.value: b for b in Backend}  # a dict lookup: Enum's own call is slow for 1,000 rows
_NULL = {"job_stopped": False, "torn_down": False, "cluster_down": False, "recovery_count": 0, "running_seconds": 0.0}


# Columns whose stored value is already the field's value when its type is exactly this.
_PASS = {**{n: str for n in _STR_FIELDS if n != "job_id"}, **{n: int for n in _INT_FIELDS},
         **{n: float for n in _FLOAT_FIELDS}}


def coerce_row(data: dict, names) -> dict:
    """`coerce` over a row's columns, with a fast path for values already of their type."""
    out = {}
    for name in names:
        value = data[name]
        if value is None:
            out[name] = _NULL.get(name)
        elif type(value) is _PASS.get(name):
            out[name] = value
        else:
            out[name] = coerce(name, value)
    return out


def coerce(name: str, value):
    """A column value as the field's type; BadRow when it cannot be (a garbled row must be an
    error, never printed as if it were a run)."""
    if value is None:
        return _NULL.get(name)
    convert = _CONVERT.get(name)
    if convert is None:
        return value
    try:
        return convert(value)
    except ValueError:
        raise BadRow(f"column {name} holds {str(value)[:40]!r}") from None


def running_hours(record: RunRecord, now: float | None = None) -> float:
    """Billed hours: the time in billing states, by the state history; for a managed job at least
    SkyPilot's running time summed over every recovery (`job_seconds`). The history misses an
    attempt that ran between two refreshes (recovering -> succeeded skips the recovered run);
    SkyPilot's sum misses provisioning. Each is a floor of the bill, so the larger is taken."""
    seconds = record.running_seconds or 0.0
    since = record.running_since
    if since is not None:
        seconds += max(0.0, (time.time() if now is None else now) - since)
    return max(seconds, record.job_seconds or 0.0) / 3600.0


def cost_so_far(record: RunRecord, now: float | None = None) -> float:
    return round((record.usd_per_hour or 0.0) * running_hours(record, now), 4)


