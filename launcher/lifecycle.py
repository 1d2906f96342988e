"""Keeping the registry true: refresh from SkyPilot / local processes, progress, the budget guard.

Why here and not in each command: `up` (while streaming), `status` and `teardown` all need the
same answers — is this run still billing, how far is it, did it pass its budget — and the same
reactions: a cluster whose job has ended is torn down (the run's last step, success or failure;
autostop is only the safety net), a run past `max_usd` is asked to stop after a checkpoint.

The budget guard's protocol with the training job (jobs/ side):
  1. The launcher writes a JSON flag `{reason, cost_usd, max_usd, at}` to `<control>/stop`, where
     <control> is `<bucket>/<run id>/control` for cloud runs (the job reads the bucket from its
     recipe and SFTLAUNCH_RUN_ID) and `$SFTLAUNCH_CONTROL` (= `<run dir>/control`) for local runs.
  2. The training job polls for that file (at each logging step, through sftcore.store); when it
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

import dataclasses
import json
import time

from launcher import run_outputs
from launcher.backends.runner import Runners
from launcher.run_state import RunState
from launcher.runs import Registry, cost_so_far
from sftcore import contract

STOP_GRACE_S = 20 * 60


def record_calibration(registry: Registry, record, remote: bool = True) -> bool:
    """Copy the job's measured figures into the run record; whether there were any."""
    text = run_outputs.metrics_text(record, remote)
    found = contract.last_calibration(text.splitlines()) if text else None
    fields = run_outputs.calibration_fields(found) if found else {}
    if fields:
        registry.update(record.run_id, **fields)
    return bool(fields)


# -- budget guard ---------------------------------------------------------------------------------
def request_stop(registry: Registry, record, reason: str) -> str | None:
    """Ask the job to checkpoint and stop (flag file); returns the flag's URI or None if no channel."""
    control = run_outputs.control_dir(record)
    if control is None:
        return None
    flag = f"{control}/{contract.STOP_FLAG}"
    payload = {"reason": reason, "cost_usd": record.cost_usd, "max_usd": record.max_usd, "at": time.time()}
    run_outputs.write_text(flag, json.dumps(payload))
    registry.update(record.run_id, stop_requested_at=payload["at"], stop_flag=flag)
    registry.set_state(record.run_id, RunState.STOPPING, reason)
    return flag


def hard_stop(registry: Registry, backend, record, state: RunState, detail: str) -> None:
    """Release whatever the run holds (cluster, managed job, local process), if proven ours,
    and record `state`. `backend`: a SkyPilot backend or a factory of one (built only if needed)."""

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
            results = run_outputs.find_results(fresh)
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
        if state in (RunState.SUCCEEDED, RunState.FAILED) and (why := run_outputs.stop_reason(rec)):
            state, detail = RunState.STOPPED, why
        registry.set_state(rec.run_id, state, detail, at=poll.at)
        if poll.release and runner.release(rec).stopped:
            registry.update(rec.run_id, cluster_down=True)
    elif state != current.state and _may_move(current, state):
        registry.set_state(rec.run_id, state, detail)


def _may_move(rec, state: RunState) -> bool:
    """A run asked to stop stays `stopping` until it actually ends."""
    return not (rec.state is RunState.STOPPING and not state.is_final)
