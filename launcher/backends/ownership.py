"""Proof of ownership: the one check before anything is deleted, cancelled or killed.

Why one place: teardown, the status refresh, the budget guard and every failure clean-up used to
act on a name or an id they had stored — a stale record whose job id now belongs to someone
else's job, a teammate's cluster under a shared SkyPilot API server, or a `tail -f run.sh` that
matched a command-line substring would all have been destroyed. Here a SkyPilot resource is ours
only when, as SkyPilot itself reports it now:
  - it carries our label `sftlaunch-run=<this run id>` (a managed job still PENDING has no
    cluster and so no labels yet: then its name must be the run id and its id the one our
    registry recorded when we launched it);
  - it belongs to the SkyPilot user this client acts as (StatusResponse.user_hash /
    ManagedJobRecord.user_hash against `backend.current_user()`).
A local run is ours only when its pid is alive with the start time we recorded, leading the
process group we created (launcher.backends.local.process_is_ours).

A SkyServe service (`sftlaunch serve`) is ours only when its name is one `sftlaunch serve`
recorded launching (launcher.services, in runs.db) and carries the run-id prefix, and SkyPilot
reports it as this SkyPilot user's (the service record's `user_hash`).

`destroy_cluster`, `cancel_job` and `down_service_if_ours` are the only callers of `backend.down` /
`backend.jobs_cancel` in the launcher; a test holds that line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.backends.sky import LABEL
from sftcore import contract

if TYPE_CHECKING:
    from launcher.backends.serve import Service


def not_run_id(label) -> str | None:
    """Why a present label value cannot be ours, or None: sftlaunch only ever writes run ids of
    the contract's shape (launcher.runid), so anything else (`../x`, an escape, 200 chars) was
    written by someone else, and is reported as foreign, never trusted as a run to stop."""
    from launcher.runid import run_id_problem
    from sftcore.errors import printable

    if label is None or (isinstance(label, str) and run_id_problem(label) is None):
        return None
    return f"label {LABEL}={printable(repr(label))[:80]} is not a run id sftlaunch makes (foreign): not touched"


def cluster_refusal(cluster, run_id: str, user: str | None) -> str | None:
    """None when `cluster` is this run's and this user's; else why not (shown to the user)."""
    labelled = (cluster.labels or {}).get(LABEL)
    if not_run_id(labelled):
        return f"cluster {cluster.name}: {not_run_id(labelled)}"
    if labelled != run_id:
        what = f"label {LABEL}={labelled}" if labelled else f"no {LABEL} label"
        return f"cluster {cluster.name} has {what}, not {run_id}: not launched by sftlaunch for this run"
    if not user or cluster.user_hash != user:
        return (f"cluster {cluster.name} belongs to SkyPilot user {cluster.user_name or cluster.user_hash or '?'}, "
                "not you")
    return None


def job_refusal(job, run_id: str, user: str | None, recorded_job_id: str | None) -> str | None:
    """None when managed job `job` is this run's and this user's; else why not."""
    labels = job.labels
    if labels and not_run_id(labels.get(LABEL)):
        return f"managed job {job.job_id} ({job.name}): {not_run_id(labels.get(LABEL))}"
    if labels:
        if labels.get(LABEL) != run_id:
            what = f"label {LABEL}={labels.get(LABEL)}" if labels.get(LABEL) else f"no {LABEL} label"
            return f"managed job {job.job_id} ({job.name}) has {what}, not {run_id}"
    elif not (job.name == run_id and recorded_job_id is not None and str(job.job_id) == str(recorded_job_id)):
        return (f"managed job {job.job_id} ({job.name}) has no labels and is not the job {run_id} recorded "
                "launching")
    if not user or job.user_hash != user:
        return f"managed job {job.job_id} belongs to SkyPilot user {job.user_name or job.user_hash or '?'}, not you"
    return None


def destroy_cluster(backend, run_id: str, name: str | None = None) -> tuple[bool, str | None]:
    """Down the cluster `name` (default: the run id) if it is proven ours.
    Returns (downed, refusal): (False, None) when it does not exist (nothing to do)."""
    name = name or run_id
    cluster = next((c for c in backend.status([name]) if c.name == name), None)
    if cluster is None:
        return False, None
    refusal = cluster_refusal(cluster, run_id, backend.current_user())
    if refusal is not None:
        return False, refusal
    backend.down(name)
    return True, None


def cancel_job(backend, run_id: str, recorded_job_id: str | None, job=None) -> tuple[bool, str | None]:
    """Cancel the run's managed job if it is proven ours. `job`: SkyPilot's record when the caller
    already has it (from the queue); else it is looked up by the recorded id, then by name.
    Returns (cancelled, refusal); (False, None) when no such job is in the queue."""
    if job is None:
        jobs = backend.jobs_queue()
        job = next((j for j in jobs if recorded_job_id is not None and str(j.job_id) == str(recorded_job_id)), None)
        if job is None or job.run_id not in (None, run_id):
            job = next((j for j in jobs if j.run_id == run_id), None)
    if job is None:
        return False, None
    refusal = job_refusal(job, run_id, backend.current_user(), recorded_job_id)
    if refusal is not None:
        return False, refusal
    if job.finished:
        return False, None
    backend.jobs_cancel(int(job.job_id))
    return True, None


def service_refusal(service: Service, recorded: bool, user: str | None) -> str | None:
    """None when the service is ours (recorded by `sftlaunch serve`, our name prefix, this user's)."""
    if not service.name.startswith(contract.RUN_ID_PREFIX) or not recorded:
        return f"service {service.name} was not launched by `sftlaunch serve` on this machine (not in runs.db)"
    if not user or service.user_hash != user:
        return f"service {service.name} belongs to SkyPilot user {service.user_hash or '?'}, not you"
    return None


def down_service_if_ours(backend, name: str, recorded: bool) -> tuple[bool, str | None]:
    """(downed, refusal); (False, None) when no such service exists."""
    service = next((s for s in backend.status([name]) if s.name == name), None)
    if service is None:
        return False, None
    refusal = service_refusal(service, recorded, backend.current_user())
    if refusal is not None:
        return False, refusal
    backend.down(name)
    return True, None
