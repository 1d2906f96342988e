"""Keeping the registry true: refresh from SkyPilot / local processes, progress, the budget guard.

Why here and not in each command: `up` (while streaming), `status` and `teardown` all need the
same answers — is this run still billing, how far is it, did it pass its budget — and the same
reactions: a cluster whose job has ended is torn down (the run's last step, success or failure;
autostop is only the safety net), a run past `max_usd` is asked to stop after a checkpoint.

The budget guard's protocol with the training job (jobs/ side):
  1. The launcher writes a JSON flag `{reason, cost_usd, max_usd, at}` to `<control>/stop`, where
     <control> is `<bucket>/<run id>/control` for cloud runs (the job sees SFTLAUNCH_BUCKET and
     SFTLAUNCH_RUN_ID) and `$SFTLAUNCH_CONTROL` (= `<run dir>/control`) for local runs.
  2. The training job polls for that file (at each logging step, through fsspec); when it
     appears it saves a checkpoint (manifest last, as usual), writes `<control>/stopped`
     (`{step, checkpoint}`) and exits 0 without eval or publish.
  3. The launcher records `stopping` when it writes the flag, `stopped` when the job ends, and
     downs the cluster / cancels the managed job itself if the job has not ended within
     `STOP_GRACE_S` (or has no control channel: no bucket), so spending always ends.

The job's own budget guard (SFTLAUNCH_MAX_USD inside the container) stops training the same way
and writes `DIR/STOPPED`; docker/entrypoint.sh then skips eval and publish, prints a line starting
with `STOPPED_LINE`, and ends with exit 0 (so a managed job is not restarted). SkyPilot then says
SUCCEEDED; the launcher records `stopped`, never `succeeded` or `failed`, when it saw that line
while streaming, or when the job's end record (`exit.json`, copied to `<bucket>/<run id>/` by the
entrypoint; in the run dir for local runs) says so. The end record also settles a managed run
that SkyPilot no longer lists (its jobs controller stops 10 idle minutes after the last job).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path

from launcher import contract
from launcher.contract import END_RECORD
from launcher.runs import FINAL_STATES, Registry, cost_so_far

STOP_GRACE_S = 20 * 60
STOPPED_LINE = contract.STOPPED_LINE  # docker/entrypoint.sh, when training ended early
# One bucket read (status, teardown, eval) gives up after this long: "unknown" beats a hung
# command. gcsfs retries a failed request 6 times with backoff (~35 s asleep) and s3fs 5 times,
# neither settable per instance, so the read runs under fsspec's own deadline for async
# filesystems (`timeout=`, which cancels the request) on top of short per-request timeouts.
BUCKET_READ_TIMEOUT_S = 15
_STORAGE_LOGGERS = ("gcsfs", "s3fs")  # they log retries and give-ups as ERROR with a traceback
_STEP_RE = re.compile(r"\bstep[\s=:]+(\d+)\s*/\s*(\d+)", re.IGNORECASE)
ACTIVE_STATES = frozenset({"pending", "launching", "running", "recovering", "stopping"})


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
    return [p for p in (run_dir / "metrics.jsonl", run_dir / "train" / "metrics.jsonl") if p.exists()]


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


def bucket_base(record: dict) -> str | None:
    bucket = record.get("bucket")
    return contract.run_prefix(bucket, record["run_id"]) if bucket else None


def bucket_progress(record: dict) -> tuple[int, int] | None:
    base = bucket_base(record)
    text = _fs_read_text(f"{base}/{contract.METRICS}") if base else None
    return last_progress(text.splitlines()[-200:]) if text else None


def find_results(record: dict) -> dict | None:
    """The run's eval results.json, from the local run dir or the bucket copy."""
    candidates = []
    if record.get("local_dir"):
        d = Path(record["local_dir"])
        candidates += [str(d / "eval" / "results.json"), str(d / "results.json")]
    base = bucket_base(record)
    if base:
        candidates += [f"{base}/eval/results.json", f"{base}/results.json"]
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


def end_record(record: dict) -> dict | None:
    """The job's `exit.json` ({exit_code, stopped, at}): the run dir for local runs, else the bucket."""
    if record.get("backend") == "local":
        path = Path(record["local_dir"]) / END_RECORD if record.get("local_dir") else None
        text = path.read_text() if path is not None and path.exists() else None
    else:
        base = bucket_base(record)
        text = _fs_read_text(f"{base}/{END_RECORD}") if base else None
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("exit_code"), int) else None


def stop_reason(record: dict, end: dict | None = None) -> str | None:
    """Why a run that ended was a stop rather than a success or failure, or None."""
    extra = record.get("extra") or {}
    if extra.get("stop_requested_at"):
        return "budget: stopped after a checkpoint"
    if extra.get("job_stopped"):
        return "budget guard in the job: training stopped after a checkpoint; eval and publish skipped"
    end = end if end is not None else end_record(record)
    if end and end.get("stopped"):
        why = end["stopped"].get("reason") if isinstance(end["stopped"], dict) else None
        return f"budget guard in the job{f' ({why})' if why else ''}: training stopped after a checkpoint; eval and publish skipped"
    return None


# -- budget guard ---------------------------------------------------------------------------------
def control_dir(record: dict) -> str | None:
    if record.get("backend") == "local" and record.get("local_dir"):
        return str(Path(record["local_dir"]) / contract.CONTROL_DIR)
    base = bucket_base(record)
    return f"{base}/{contract.CONTROL_DIR}" if base else None


def request_stop(registry: Registry, record: dict, reason: str) -> str | None:
    """Ask the job to checkpoint and stop (flag file); returns the flag's URI or None if no channel."""
    control = control_dir(record)
    if control is None:
        return None
    flag = f"{control}/{contract.STOP_FLAG}"
    payload = {"reason": reason, "cost_usd": record.get("cost_usd"), "max_usd": record.get("max_usd"), "at": time.time()}
    _fs_write_text(flag, json.dumps(payload))
    extra = dict(record.get("extra") or {})
    extra.update({"stop_requested_at": payload["at"], "stop_flag": flag})
    registry.update(record["run_id"], extra=extra)
    registry.set_state(record["run_id"], "stopping", reason)
    return flag


def hard_stop(registry: Registry, backend, record: dict, state: str, detail: str) -> None:
    """Release whatever the run holds (cluster, managed job, local process) and record `state`."""
    kind = record.get("backend")
    if kind == "local":
        from launcher.backends import local

        local.stop(record)
    elif kind == "managed" and record.get("job_id") is not None:
        backend.jobs_cancel(int(record["job_id"]))
    elif kind == "cluster" and record.get("cluster_name"):
        backend.down(record["cluster_name"])
    registry.set_state(record["run_id"], state, detail)


def guard_budget(registry: Registry, backend, record: dict, now: float | None = None) -> str | None:
    """Apply the budget guard to one run; returns what it did ('requested', 'stopped') or None."""
    max_usd = record.get("max_usd")
    if not max_usd or record.get("state") not in ACTIVE_STATES:
        return None
    cost = cost_so_far(record, now)
    if cost < max_usd:
        return None
    extra = record.get("extra") or {}
    requested = extra.get("stop_requested_at")
    now = time.time() if now is None else now
    if requested is None:
        reason = f"budget: ${cost:.2f} spent of max_usd ${max_usd:.2f}; stopping after a checkpoint"
        record = dict(record, cost_usd=cost)
        if request_stop(registry, record, reason) is not None:
            return "requested"
        hard_stop(registry, backend, record, "stopped",
                  f"budget: ${cost:.2f} spent of max_usd ${max_usd:.2f}; no bucket to signal a checkpoint, stopped now")
        return "stopped"
    if now - requested > STOP_GRACE_S:
        hard_stop(registry, backend, record, "stopped",
                  f"budget: the job did not stop within {STOP_GRACE_S // 60} min of the request; stopped it")
        return "stopped"
    return None


# -- refresh --------------------------------------------------------------------------------------
def _finish(registry: Registry, backend, record: dict, state: str, detail: str | None) -> None:
    """Record the end; an on-demand cluster is torn down now that its one job is over."""
    if state in ("succeeded", "failed") and (why := stop_reason(record)):
        state, detail = "stopped", why
    registry.set_state(record["run_id"], state, detail)
    if record.get("backend") == "cluster" and record.get("cluster_name"):
        backend.down(record["cluster_name"])
        registry.update(record["run_id"], extra={**(record.get("extra") or {}), "cluster_down": True})


def refresh(registry: Registry, backend_factory, records: list[dict] | None = None,
            remote_progress: bool = True, budget: bool = True) -> list[str]:
    """Bring active runs up to date; returns the ids that changed. `backend_factory` is called
    only when a cloud run needs SkyPilot, so local-only registries never import it.
    `budget=False` only looks: no stop flag is written and nothing is stopped (teardown)."""
    records = [r for r in (records if records is not None else registry.list(active_only=True))
               if r.get("state") in ACTIVE_STATES]
    changed: list[str] = []
    backend = None
    clusters = jobs = None
    for rec in records:
        kind = rec.get("backend")
        before = (rec.get("state"), rec.get("progress_step"))
        if kind == "local":
            _refresh_local(registry, rec)
        elif kind in ("cluster", "managed"):
            if backend is None:
                backend = backend_factory()
            if kind == "cluster":
                if clusters is None:
                    names = [r["cluster_name"] for r in records if r.get("backend") == "cluster" and r.get("cluster_name")]
                    clusters = {c.name: c for c in backend.status(names)}
                _refresh_cluster(registry, backend, rec, clusters)
            else:
                if jobs is None:
                    jobs = backend.jobs_queue()
                _refresh_managed(registry, backend, rec, jobs)
            if remote_progress and rec.get("bucket"):
                p = bucket_progress(rec)
                if p:
                    registry.update(rec["run_id"], progress_step=p[0], progress_total=p[1])
        fresh = registry.get(rec["run_id"], history=False)
        if budget and fresh["state"] in ACTIVE_STATES:
            guard_budget(registry, backend if backend is not None else _Lazy(backend_factory), fresh)
            fresh = registry.get(rec["run_id"], history=False)
        if fresh["state"] in FINAL_STATES and fresh.get("eval") is None:
            results = find_results(fresh)
            if results:
                registry.set_eval(rec["run_id"], results)
        if (fresh["state"], fresh.get("progress_step")) != before:
            changed.append(rec["run_id"])
    return changed


class _Lazy:
    """Defers building the SkyPilot backend until the guard actually needs it."""

    def __init__(self, factory):
        self._factory, self._b = factory, None

    def __getattr__(self, name):
        if self._b is None:
            self._b = self._factory()
        return getattr(self._b, name)


def _may_move(rec: dict, state: str) -> bool:
    """A run asked to stop stays `stopping` until it actually ends."""
    return not (rec.get("state") == "stopping" and state not in FINAL_STATES)


def _refresh_local(registry: Registry, rec: dict) -> None:
    from launcher.backends import local

    p = local_progress(Path(rec["local_dir"])) if rec.get("local_dir") else None
    if p:
        registry.update(rec["run_id"], progress_step=p[0], progress_total=p[1])
    state, detail = local.poll(rec)
    if state != rec["state"] and _may_move(rec, state):
        if state in ("succeeded", "failed") and (why := stop_reason(rec)):
            state, detail = "stopped", why
        registry.set_state(rec["run_id"], state, detail)


def _refresh_cluster(registry: Registry, backend, rec: dict, clusters: dict) -> None:
    from launcher.backends.sky import CLUSTER_JOB_STATES, CLUSTER_STATES

    cluster = clusters.get(rec["cluster_name"])
    if cluster is None:
        if rec["state"] in ("pending", "launching"):
            if time.time() - rec["created_at"] < 120:
                return  # the launch request may not have created the cluster record yet
            registry.set_state(rec["run_id"], "failed", "the launch did not complete: no cluster exists")
            return
        registry.set_state(rec["run_id"], "stopped",
                           "the cluster no longer exists (autostopped, or torn down outside sftlaunch)")
        return
    state = CLUSTER_STATES.get(cluster.status, "launching")
    if state == "running":
        job_id = int(rec["job_id"]) if rec.get("job_id") not in (None, "") else None
        job_status = backend.cluster_job_status(cluster.name, job_id)
        state = CLUSTER_JOB_STATES.get(job_status or "", "running")
        if state in FINAL_STATES:
            _finish(registry, backend, rec, state, f"job {job_status.lower()} on {cluster.name}")
            return
    if state != rec["state"] and _may_move(rec, state):
        registry.set_state(rec["run_id"], state, None if state != "stopped" else "the cluster is stopped")


def _refresh_managed(registry: Registry, backend, rec: dict, jobs: list) -> None:
    from launcher.backends.sky import JOB_STATES

    job = next((j for j in jobs if rec.get("job_id") not in (None, "") and str(j.job_id) == str(rec["job_id"])), None)
    if job is None:
        job = next((j for j in jobs if j.name == rec["run_id"]), None)
    if job is None:
        _settle_missing_job(registry, rec)
        return
    extra = dict(rec.get("extra") or {})
    if job.recovery_count > int(extra.get("recovery_count", 0)) and _may_move(rec, "recovering"):
        extra["recovery_count"] = job.recovery_count
        registry.update(rec["run_id"], extra=extra)
        registry.set_state(rec["run_id"], "recovering", f"preempted; recovery #{job.recovery_count}")
    state = JOB_STATES.get(job.status, "running")
    if state in FINAL_STATES:
        detail = f"managed job {job.status.lower()}" + (f": {job.failure_reason}" if job.failure_reason else "")
        if state in ("succeeded", "failed") and (why := stop_reason(rec)):
            state, detail = "stopped", why
        registry.set_state(rec["run_id"], state, detail)
    elif state != registry.get(rec["run_id"], history=False)["state"] and _may_move(rec, state):
        registry.set_state(rec["run_id"], state)


def _settle_missing_job(registry: Registry, rec: dict) -> None:
    """A managed run SkyPilot no longer lists (no jobs controller up, or the queue forgot it):
    its end record in the bucket says how it ended; without one, after a grace period for a
    launch still being registered, it failed without reaching the end of its entrypoint."""
    end = end_record(rec)
    if end is not None:
        why = stop_reason(rec, end)
        if why:
            state, detail = "stopped", why
        elif end["exit_code"] == 0:
            state, detail = "succeeded", "managed job ended with exit 0 (its exit record in the bucket)"
        else:
            state, detail = "failed", f"managed job ended with exit {end['exit_code']} (its exit record in the bucket)"
        at = end.get("at")
        registry.set_state(rec["run_id"], state, detail,
                           at=min(float(at), time.time()) if isinstance(at, (int, float)) else None)
        return
    submitted = rec.get("running_since") or rec["created_at"]  # when it entered launching/running
    if time.time() - submitted > 120:
        where = f" at {bucket_base(rec)}/{END_RECORD}" if bucket_base(rec) else ""
        registry.set_state(rec["run_id"], "failed",
                           f"the managed job is not in SkyPilot's queue and left no exit record{where}")
