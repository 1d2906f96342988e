"""What a run wrote, read from its run dir (local runs) or `<bucket>/<run id>/` (cloud runs):
progress, the end record, eval results, the calibration row, where its control channel is.

Why apart from launcher.lifecycle: the runners (launcher.backends.runner) read these to say how a
run is doing, and lifecycle reads them to keep the registry true and guard the budget; both
import this module, neither the other for it. Reads never hang and never raise for a missing or
unreachable copy: a bucket read gives up after BUCKET_READ_TIMEOUT_S and means "unknown".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from launcher.run_record import Backend, RunRecord
from sftcore import contract, store
from sftcore.contract import END_RECORD

# One bucket read (status, teardown, eval) gives up after this long: "unknown" beats a hung
# command. gcsfs retries a failed request 6 times with backoff (~35 s asleep) and s3fs 5 times,
# neither settable per instance, so the read runs under fsspec's own deadline for async
# filesystems (`timeout=`, which cancels the request) on top of short per-request timeouts.
BUCKET_READ_TIMEOUT_S = 15
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


def metrics_files(run_dir: Path) -> list[Path]:
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
    for path in metrics_files(run_dir):
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


def read_text(uri: str) -> str | None:
    """The text at `uri`, or None when it is missing, unreadable, unauthorised or slow."""
    try:
        with store.quiet_logs():
            fs, path = store.filesystem(uri, fail_fast=True)
            deadline = {"timeout": BUCKET_READ_TIMEOUT_S} if store.is_async(fs) else {}
            return fs.cat_file(path, **deadline).decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - a missing or unreachable copy just means "unknown"
        return None


def write_text(uri: str, text: str) -> None:
    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_text(text)
        return
    with store.quiet_logs():
        fs, path = store.filesystem(uri, fail_fast=True)
        with fs.open(path, "w") as fh:
            fh.write(text)


def bucket_base(record) -> str | None:
    bucket = record.bucket
    return contract.RunLayout.in_bucket(bucket, record.run_id).root if bucket else None


def bucket_progress(record: RunRecord) -> tuple[int, int] | None:
    base = bucket_base(record)
    text = read_text(contract.RunLayout(base).metrics) if base else None
    return last_progress(text.splitlines()[-200:]) if text else None


# -- calibration (jobs/calibration.py's metrics row) -----------------------------------------------
_CALIBRATION_FIELDS = {"tokens_per_s": "measured_tokens_per_s", "predicted_tokens_per_s": "predicted_tokens_per_s",
                       "mfu": "measured_mfu", "params_b": "params_b", "peak_mem_gb": "peak_mem_gb",
                       "eta_hours": "calibrated_eta_hours", "usd": "calibrated_usd"}


def calibration_fields(calibration: dict) -> dict:
    """The run record's fields from a calibration row (numbers only; a garbled row adds nothing)."""
    return {field: float(calibration[key]) for key, field in _CALIBRATION_FIELDS.items()
            if isinstance(calibration.get(key), (int, float)) and not isinstance(calibration.get(key), bool)}


def metrics_text(record, remote: bool) -> str | None:
    if record.backend == Backend.LOCAL and record.local_dir:
        files = metrics_files(Path(record.local_dir))
        return files[0].read_text(errors="replace") if files else None
    base = bucket_base(record) if remote else None
    return read_text(f"{base}/{contract.METRICS}") if base else None


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
            read_text(uri) if "://" in uri else None)
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
        text = read_text(f"{base}/{END_RECORD}") if base else None
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


def control_dir(record) -> str | None:
    if record.backend == Backend.LOCAL and record.local_dir:
        return str(Path(record.local_dir) / contract.CONTROL_DIR)
    base = bucket_base(record)
    return f"{base}/{contract.CONTROL_DIR}" if base else None
