"""Keeping the registry true: refresh from SkyPilot / local processes, progress, the budget guard.

Why here and not in each command: `up` (while streaming), `status` and `teardown` all need the
same answers — is this run still billing, how far is it, did it pass its budget — and the same
reactions: a cluster whose job has ended is torn down (the run's last step, success or failure;
autostop is only the safety net), a run past `max_usd` is asked to stop after a checkpoint.

The budget guard's protocol with the training job (jobs/ side):
  1. The launcher writes a JSON flag `{reason, cost_usd, max_usd, at}` to `<control>/stop`, where
     <control> is `<bucket>/<run id>/control` for cloud runs (the job reads the bucket from its
     recipe and SFTLAUNCH_RUN_ID) and `$SFTLAUNCH_CONTROL` (= `<run dir>/control`) for local runs.
  2. The training job polls for that file (at each logging step, through jobs.store); when it
     appears it saves a checkpoint (manifest last, as usual), writes `<control>/stopped`
     (`{step, checkpoint}`) and exits 0 without eval or publish.
  3. The launcher records `stopping` when it writes the flag, `stopped` when the job ends, and
     downs the cluster / cancels the managed job itself if the job has not ended within
     `STOP_GRACE_S` (or has no control channel: no bucket), so spending always ends.

The job's own budget guard (the recipe's resources.max_usd, inside the container) stops training the same way
and writes `DIR/STOPPED`; docker/entrypoint.sh then skips eval and publish, prints a line starting
with `STOPPED_LINE`, and ends with exit 0 (so a managed job is not restarted). SkyPilot then says
SUCCEEDED; the launcher records `stopped`, never `succeeded` or `failed`, when it saw that line
while streaming, or when the job's end record (`exit.json`, copied to `<bucket>/<run id>/` by the
entrypoint; in the run dir for local runs) says so. The end record also settles a managed run
that SkyPilot no longer lists (its jobs controller stops 10 idle minutes after the last job).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from pathlib import Path

from launcher.run_record import Backend, RunRecord
from launcher.run_state import RunState
from launcher.runs import Registry, cost_so_far
from sftcore import contract
from sftcore.contract import END_RECORD

STOP_GRACE_S = 20 * 60
STOPPED_LINE = contract.STOPPED_LINE  # docker/entrypoint.sh, when training ended early
# One bucket read (status, teardown, eval) gives up after this long: "unknown" beats a hung
# command. gcsfs retries a failed request 6 times with backoff (~35 s asleep) and s3fs 5 times,
# neither settable per instance, so the read runs under fsspec's own deadline for async
# filesystems (`timeout=`, which cancels the request) on top of short per-request timeouts.
BUCKET_READ_TIMEOUT_S = 15
_STORAGE_LOGGERS = ("gcsfs", "s3fs")  # they log retries and give-ups as ERROR with a traceback
_STEP_RE = re.compile(r"\bstep[\s=:]+(\d+)\s*/\s*(\d+)", re.IGNORECASE)


# -- progress -------------------------------------------------------------------------------------
def parse_progress(line: str) -> tuple[int, int] | None:
    """(step, total) from one log line: a metrics JSON line (step, total_steps) or `step N/M`."""
    text = line.strip()
    brace = text.find("{")
    if brace != -1 and '"step"' in text:
        try:
            data = json.loads(text[brace:])
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("step"), int) and isinstance(data.get("total_steps"), int):
            return data["step"], data["total_steps"]
    m = _STEP_RE.search(text)
    if m:
        step, total = int(m.group(1)), int(m.group(2))
        if 0 <= step <= total and total > 0:
            return step, total
    return None


def _metrics_files(run_dir: Path) -> list[Path]:
    # The run dir's, or (runs of older versions) its train/ subdir's.
    return [p for p in (contract.RunLayout(run_dir).metrics, contract.RunLayout(run_dir / "train").metrics) if p.exists()]


def last_progress(lines) -> tuple[int, int] | None:
    found = None
    for line in lines:
        p = parse_progress(line)
        if p:
            found = p
    return found


def local_progress(run_dir: Path) -> tuple[int, int] | None:
    for path in _metrics_files(run_dir):
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                tail = fh.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            continue
        p = last_progress(tail)
        if p:
            return p
    return None


def bucket_options(uri: str) -> dict:
    """fsspec storage options that make one failed request to `uri`'s store fail fast (reads,
    and the budget guard's small stop flag)."""
    import fsspec

    protocol = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if protocol in ("gs", "gcs"):
        opts: dict = {"requests_timeout": 10}
        configured = {**fsspec.config.conf.get("gs", {}), **fsspec.config.conf.get("gcs", {})}
        if "token" not in configured:
            # Application Default Credentials only (what `gcloud auth application-default login`
            # and SkyPilot's GCP set-up write; on a GCE VM it finds the VM's account): gcsfs's
            # default also probes the GCE metadata server, ~15 s of retries off Google Cloud.
            opts["token"] = "google_default"
        return opts
    if protocol in ("s3", "s3a"):
        # botocore's `total_max_attempts` counts the first try (its `max_attempts` does not).
        return {"config_kwargs": {"connect_timeout": 5, "read_timeout": 10, "retries": {"total_max_attempts": 2}}}
    return {}


@contextlib.contextmanager
def _quiet_storage_logs():
    loggers = [logging.getLogger(name) for name in _STORAGE_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _fs_read_text(uri: str) -> str | None:
    """The text at `uri`, or None when it is missing, unreadable, unauthorised or slow."""
    try:
        import fsspec
        from fsspec.asyn import AsyncFileSystem

        with _quiet_storage_logs():
            fs, path = fsspec.core.url_to_fs(uri, **bucket_options(uri))
            deadline = {"timeout": BUCKET_READ_TIMEOUT_S} if isinstance(fs, AsyncFileSystem) else {}
            return fs.cat_file(path, **deadline).decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - a missing or unreachable copy just means "unknown"
        return None


def _fs_write_text(uri: str, text: str) -> None:
    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_text(text)
        return
    import fsspec

    with _quiet_storage_logs(), fsspec.open(uri, "w", **bucket_options(uri)) as fh:
        fh.write(text)


def bucket_base(record) -> str | None:
    bucket = record.bucket
    return contract.run_prefix(bucket, record.run_id) if bucket else None


def bucket_progress(record: RunRecord) -> tuple[int, int] | None:
    base = bucket_base(record)
    text = _fs_read_text(contract.RunLayout(base).metrics) if base else None
    return last_progress(text.splitlines()[-200:]) if text else None


# -- calibration (jobs/calibration.py's metrics row) -----------------------------------------------
_CALIBRATION_FIELDS = {"tokens_per_s": "measured_tokens_per_s", "predicted_tokens_per_s": "predicted_tokens_per_s",
                       "mfu": "measured_mfu", "params_b": "params_b", "peak_mem_gb": "peak_mem_gb",
                       "eta_hours": "calibrated_eta_hours", "usd": "calibrated_usd"}


def calibration_fields(calibration: dict) -> dict:
    """The run record's fields from a calibration row (numbers only; a garbled row adds nothing)."""
    return {field: float(calibration[key]) for key, field in _CALIBRATION_FIELDS.items()
            if isinstance(calibration.get(key), (int, float)) and not isinstance(calibration.get(key), bool)}


def _metrics_text(record, remote: bool) -> str | None:
    if record.backend == Backend.LOCAL and record.local_dir:
        files = _metrics_files(Path(record.local_dir))
        return files[0].read_text(errors="replace") if files else None
    base = bucket_base(record) if remote else None
    return _fs_read_text(f"{base}/{contract.METRICS}") if base else None


def record_calibration(registry: Registry, record, remote: bool = True) -> bool:
    """Copy the job's measured figures into the run record; whether there were any."""
    text = _metrics_text(record, remote)
    found = contract.last_calibration(text.splitlines()) if text else None
    fields = calibration_fields(found) if found else {}
    if fields:
        registry.update(record.run_id, **fields)
    return bool(fields)


def find_results(record: RunRecord) -> dict | None:
    """The run's eval results.json, from the local run dir or the bucket copy."""
    candidates = []
    if record.local_dir:
        d = contract.RunLayout(Path(record.local_dir))
        candidates += [str(d.eval_results()), str(d.results)]
    if record.bucket:
        b = contract.RunLayout.in_bucket(record.bucket, record.run_id)
        candidates += [b.eval_results(), b.results]
    for uri in candidates:
        text = Path(uri).read_text() if "://" not in uri and Path(uri).exists() else (
            _fs_read_text(uri) if "://" in uri else None)
        if text:
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


def end_record(record) -> dict | None:
    """The job's `exit.json` ({exit_code, stopped, at}): the run dir for local runs, else the bucket.
    (`record`: a RunRecord, or any mapping with the same keys.)"""
    if record.backend == Backend.LOCAL:
        path = Path(record.local_dir) / END_RECORD if record.local_dir else None
        text = path.read_text() if path is not None and path.exists() else None
    else:
        base = bucket_base(record)
        text = _fs_read_text(f"{base}/{END_RECORD}") if base else None
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("exit_code"), int) else None


def stop_reason(record, end: dict | None = None) -> str | None:
    """Why a run that ended was a stop rather than a success or failure, or None."""
    if record.stop_requested_at:
        return "budget: stopped after a checkpoint"
    if record.job_stopped:
        return "budget guard in the job: training stopped after a checkpoint; eval and publish skipped"
    end = end if end is not None else end_record(record)
    if end and end.get("stopped"):
        why = end["stopped"].get("reason") if isinstance(end["stopped"], dict) else None
        return f"budget guard in the job{f' ({why})' if why else ''}: training stopped after a checkpoint; eval and publish skipped"
    return None


# -- budget guard ---------------------------------------------------------------------------------
def control_dir(record) -> str | None:
    if record.backend == Backend.LOCAL and record.local_dir:
        return str(Path(record.local_dir) / contract.CONTROL_DIR)
    base = bucket_base(record)
    return f"{base}/{contract.CONTROL_DIR}" if base else None


def request_stop(registry: Registry, record, reason: str) -> str | None:
    """Ask the job to checkpoint and stop (flag file); returns the flag's URI or None if no channel."""
    control = control_dir(record)
    if control is None:
        return None
    flag = f"{control}/{contract.STOP_FLAG}"
    payload = {"reason": reason, "cost_usd": record.cost_usd, "max_usd": record.max_usd, "at": time.time()}
    _fs_write_text(flag, json.dumps(payload))
    registry.update(record.run_id, stop_requested_at=payload["at"], stop_flag=flag)
    registry.set_state(record.run_id, RunState.STOPPING, reason)
    return flag


def hard_stop(registry: Registry, backend, record, state: RunState, detail: str) -> None:
    """Release whatever the run holds (cluster, managed job, local process), if proven ours,
    and record `state`. `backend`: a SkyPilot backend or a factory of one (built only if needed)."""
    from launcher.backends.runner import Runners

    runner = Runners(backend if callable(backend) and not hasattr(backend, "status") else (lambda: backend)
                     ).for_record(record)
    if runner is not None:
        result = runner.stop(record)
        if result.refusal:
            detail = f"{detail}; nothing stopped: {result.refusal}"
    registry.set_state(record.run_id, state, detail)


def guard_budget(registry: Registry, backend, record, now: float | None = None) -> str | None:
    """Apply the budget guard to one run; returns what it did ('requested', 'stopped') or None."""
    max_usd = record.max_usd
    if not max_usd or not record.state.is_active:
        return None
    cost = cost_so_far(record, now)
    if cost < max_usd:
        return None
    requested = record.stop_requested_at
    now = time.time() if now is None else now
    if requested is None:
        reason = f"budget: ${cost:.2f} spent of max_usd ${max_usd:.2f}; stopping after a checkpoint"
        record = dataclasses.replace(record, cost_usd=cost)
        if request_stop(registry, record, reason) is not None:
            return "requested"
        hard_stop(registry, backend, record, RunState.STOPPED,
                  f"budget: ${cost:.2f} spent of max_usd ${max_usd:.2f}; no bucket to signal a checkpoint, stopped now")
        return "stopped"
    if now - requested > STOP_GRACE_S:
        hard_stop(registry, backend, record, RunState.STOPPED,
                  f"budget: the job did not stop within {STOP_GRACE_S // 60} min of the request; stopped it")
        return "stopped"
    return None


# -- refresh --------------------------------------------------------------------------------------
def refresh(registry: Registry, backend_factory, records: list | None = None,
            remote_progress: bool = True, budget: bool = True) -> list[str]:
    """Bring active runs up to date; returns the ids that changed. `backend_factory` is called
    only when a cloud run needs SkyPilot, so local-only registries never import it.
    `budget=False` only looks: no stop flag is written and nothing is stopped (teardown)."""
    from launcher.backends.runner import Runners

    records = [r for r in (records if records is not None else registry.list(active_only=True))
               if r.state.is_active]
    runners = Runners(backend_factory)
    changed: list[str] = []
    for rec in records:
        runner = runners.for_record(rec)
        before = (rec.state, rec.progress_step)
        if runner is not None:
            p = runner.progress(rec, remote_progress)
            if p:
                registry.update(rec.run_id, progress_step=p[0], progress_total=p[1])
            apply_poll(registry, runner, rec, runner.poll(rec))
        fresh = registry.get(rec.run_id, history=False)
        # Until the probe has reported, and once more at the end (a resumed attempt measures again).
        if fresh.measured_tokens_per_s is None or fresh.state.is_final:
            record_calibration(registry, fresh, remote_progress)
            fresh = registry.get(rec.run_id, history=False)
        if budget and fresh.state.is_active:
            guard_budget(registry, backend_factory, fresh)
            fresh = registry.get(rec.run_id, history=False)
        if fresh.state.is_final and fresh.eval is None:
            results = find_results(fresh)
            if results:
                registry.set_eval(rec.run_id, results)
        if (fresh.state, fresh.progress_step) != before:
            changed.append(rec.run_id)
    return changed


def apply_poll(registry: Registry, runner, rec, poll) -> None:
    """Record what a runner saw. A run that ended is recorded as `stopped` when it was a budget
    stop; an on-demand cluster whose one job is over is released (if proven ours)."""
    if poll.job_seconds is not None:
        registry.update(rec.run_id, job_seconds=poll.job_seconds)
    if poll.recovery_count is not None and poll.recovery_count > rec.recovery_count and _may_move(rec, RunState.RECOVERING):
        registry.update(rec.run_id, recovery_count=poll.recovery_count)
        registry.set_state(rec.run_id, RunState.RECOVERING, f"preempted; recovery #{poll.recovery_count}")
    state, detail = poll.state, poll.detail
    if state is None:
        return
    current = registry.get(rec.run_id, history=False)
    if state.is_final:
        if state in (RunState.SUCCEEDED, RunState.FAILED) and (why := stop_reason(rec)):
            state, detail = RunState.STOPPED, why
        registry.set_state(rec.run_id, state, detail, at=poll.at)
        if poll.release and runner.release(rec).stopped:
            registry.update(rec.run_id, cluster_down=True)
    elif state != current.state and _may_move(current, state):
        registry.set_state(rec.run_id, state, detail)


def _may_move(rec, state: RunState) -> bool:
    """A run asked to stop stays `stopping` until it actually ends."""
    return not (rec.state is RunState.STOPPING and not state.is_final)
