"""One runner interface for the three places a run executes: start, poll, logs, stop, release.

Why: a run executes locally, on a cluster or as a managed job, and each kind is polled, followed
and stopped its own way; a record's `backend` picks its runner once (`Runners.for_record`) and callers ask it; every stop goes
through launcher.backends.ownership (SkyPilot resources) or local.process_refusal (processes),
so nothing is stopped that is not proven to be this run's and this user's.

Runners only *read* the world and act on it; recording what they saw is lifecycle's job, so
`poll` returns a `Poll` instead of writing the registry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from launcher.run_record import Backend, RunRecord
from launcher.run_state import RunState
from launcher.signals import deferred_interrupts

LAUNCH_GRACE_S = 120  # a launch request may not have created the cluster / queued the job yet


@dataclass
class Poll:
    """What a runner saw: `state` None means "no news" (keep the recorded state)."""

    state: RunState | None
    detail: str | None = None
    at: float | None = None
    recovery_count: int | None = None
    job_seconds: float | None = None  # managed jobs: SkyPilot's running time, summed over every recovery
    release: bool = False  # the job ended on resources that are still held: release them


@dataclass
class Stop:
    stopped: bool  # something was running and has been stopped
    refusal: str | None = None  # why nothing was touched although something is there


@dataclass
class Launch:
    """What starting a run needs; each runner reads its part."""

    task: dict | None = None  # cloud: the rendered SkyPilot task
    recipe: object = None  # local: the Recipe
    secrets: dict | None = None  # cloud: values joined only at launch
    on_line: object = None  # cloud: SkyPilot's launch output, line by line
    idle_minutes: int | None = None  # on-demand clusters: autostop (down) after this idle time
    use_docker: bool | None = None  # local: None decides by the Docker daemon and image
    extra_env: dict | None = None  # local: variables added to the job's environment


class Runner:
    kind: Backend

    def start(self, record: RunRecord, launch: Launch) -> dict:
        """Start the recorded run; returns the registry fields that locate it (job id, pid...)."""
        raise NotImplementedError

    def poll(self, record: RunRecord) -> Poll:
        raise NotImplementedError

    def logs(self, record: RunRecord, follow: bool, on_line) -> int | None:
        """Print the run's log through `on_line`; the job's exit code when known. Raises
        launcher.backends.sky.Unavailable when the source is gone (callers read the bucket copy)."""
        raise NotImplementedError

    def stop(self, record: RunRecord) -> Stop:
        raise NotImplementedError

    def release(self, record: RunRecord) -> Stop:
        """After the job ended: free what it still holds (an on-demand cluster). Default: nothing."""
        return Stop(False)

    def progress(self, record: RunRecord, remote: bool) -> tuple[int, int] | None:
        from launcher.run_outputs import bucket_progress

        return bucket_progress(record) if remote and record.bucket else None


class LocalRunner(Runner):
    kind = Backend.LOCAL

    def start(self, record, launch):
        from launcher.backends import local

        fields = local.start(launch.recipe, record.run_id, Path(record.local_dir), use_docker=launch.use_docker,
                             extra_env=launch.extra_env)
        fields.pop("backend", None)
        return fields

    def poll(self, record):
        from launcher.backends import local

        if not record.local_dir:
            return Poll(RunState.FAILED, "the run was recorded without a run directory")
        if record.pid is None and local.exit_code(Path(record.local_dir)) is None:
            if time.time() - record.created_at < LAUNCH_GRACE_S and record.state.is_starting:
                return Poll(None)  # recorded, its process being started right now
            return Poll(RunState.FAILED, "the local process was never started")
        return Poll(*local.poll(record))

    def logs(self, record, follow, on_line):
        from launcher.backends import local

        return local.follow_log(record, on_line, follow=follow)

    def stop(self, record):
        from launcher.backends import local

        refusal = local.process_refusal(record)
        stopped = local.stop(record)
        ended = refusal is not None and ("ended" in refusal or "no process" in refusal)
        return Stop(stopped, None if stopped or ended else refusal)

    def progress(self, record, remote):
        from launcher.run_outputs import local_progress

        return local_progress(Path(record.local_dir)) if record.local_dir else None


class _SkyRunner(Runner):
    def __init__(self, backend_factory):
        self._factory = backend_factory
        self._backend = None

    @property
    def backend(self):
        if self._backend is None:
            self._backend = self._factory()
        return self._backend


class ClusterRunner(_SkyRunner):
    kind = Backend.CLUSTER

    def __init__(self, backend_factory):
        super().__init__(backend_factory)
        self._clusters: dict | None = None

    def start(self, record, launch):
        # down=True: autostop deletes the cluster once its job has ended and it idled.
        job_id = self.backend.launch(launch.task, cluster_name=record.cluster_name or record.run_id,
                                     idle_minutes=launch.idle_minutes, down=True, secrets=launch.secrets,
                                     on_line=launch.on_line)
        return {"job_id": None if job_id is None else str(job_id)}

    def prefetch(self, records) -> None:
        names = [r.cluster_name for r in records if r.backend is Backend.CLUSTER and r.cluster_name]
        self._clusters = {c.name: c for c in self.backend.status(names)}

    def _cluster(self, record):
        """The run's cluster if SkyPilot has it *and* it is ours; a same-named stranger is not it."""
        from launcher.backends.ownership import cluster_refusal

        if self._clusters is None:
            self.prefetch([record])
        cluster = self._clusters.get(record.cluster_name)
        if cluster is None or cluster_refusal(cluster, record.run_id, self.backend.current_user()) is not None:
            return None
        return cluster

    def poll(self, record):
        from launcher.backends.sky import CLUSTER_JOB_STATES, CLUSTER_STATES

        cluster = self._cluster(record) if record.cluster_name else None
        if cluster is None:
            if record.state.is_starting:
                if time.time() - record.created_at < LAUNCH_GRACE_S:
                    return Poll(None)
                return Poll(RunState.FAILED, "the launch did not complete: no cluster of this run exists")
            return Poll(RunState.STOPPED, "the cluster no longer exists (autostopped, or torn down outside sftlaunch)")
        state = CLUSTER_STATES.get(cluster.status, RunState.LAUNCHING)
        if state is RunState.RUNNING:
            job_id = int(record.job_id) if record.job_id else None
            job_status = self.backend.cluster_job_status(cluster.name, job_id)
            state = CLUSTER_JOB_STATES.get(job_status or "", RunState.RUNNING)
            if state.is_final:
                return Poll(state, f"job {job_status.lower()} on {cluster.name}", release=True)
        return Poll(state, "the cluster is stopped" if state is RunState.STOPPED else None)

    def logs(self, record, follow, on_line):
        job_id = int(record.job_id) if record.job_id else None
        return self.backend.tail_logs(record.cluster_name or record.run_id, job_id, follow=follow, on_line=on_line)

    def stop(self, record):
        from launcher.backends.ownership import destroy_cluster

        downed, refusal = destroy_cluster(self.backend, record.run_id, record.cluster_name or record.run_id)
        return Stop(downed, refusal)

    release = stop


class ManagedRunner(_SkyRunner):
    kind = Backend.MANAGED

    def __init__(self, backend_factory):
        super().__init__(backend_factory)
        self._jobs: list | None = None

    def start(self, record, launch):
        job_id = self.backend.jobs_launch(launch.task, name=record.run_id, secrets=launch.secrets,
                                          on_line=launch.on_line)
        return {"job_id": None if job_id is None else str(job_id)}

    def _job(self, record):
        """The run's managed job if SkyPilot lists it and it is ours: by the recorded id first,
        then by our label (a stale id may now be a stranger's job)."""
        from launcher.backends.ownership import job_refusal

        if self._jobs is None:
            self._jobs = self.backend.jobs_queue()
        user = self.backend.current_user() if self._jobs else None
        candidates = [j for j in self._jobs if record.job_id is not None and str(j.job_id) == record.job_id]
        candidates += [j for j in self._jobs if j.run_id == record.run_id or (j.labels is None and j.name == record.run_id)]
        return next((j for j in candidates if job_refusal(j, record.run_id, user, record.job_id) is None), None)

    def poll(self, record):
        from launcher.backends.sky import JOB_STATES

        job = self._job(record)
        if job is None:
            return self._settle_missing(record)
        state = JOB_STATES.get(job.status, RunState.RUNNING)
        detail = None
        if job.finished:
            detail = f"managed job {job.status.lower()}" + (f": {job.failure_reason}" if job.failure_reason else "")
        # A finished job ended at its end_at, not when we looked: billing stops there.
        at = min(float(job.end_at), time.time()) if job.finished and isinstance(job.end_at, (int, float)) else None
        seconds = float(job.duration_s) if isinstance(job.duration_s, (int, float)) else None
        return Poll(state, detail, at=at, recovery_count=job.recovery_count, job_seconds=seconds)

    def _settle_missing(self, record) -> Poll:
        """A managed run SkyPilot no longer lists (no jobs controller up, or the queue forgot it):
        its end record in the bucket says how it ended; without one, after a grace period for a
        launch still being registered, it failed without reaching the end of its entrypoint."""
        from launcher.run_outputs import bucket_base, end_record, stop_reason
        from sftcore.contract import END_RECORD

        end = end_record(record)
        if end is not None:
            at = end.get("at")
            at = min(float(at), time.time()) if isinstance(at, (int, float)) else None
            why = stop_reason(record, end)
            if why:
                return Poll(RunState.STOPPED, why, at=at)
            if end["exit_code"] == 0:
                return Poll(RunState.SUCCEEDED, "managed job ended with exit 0 (its exit record in the bucket)", at=at)
            return Poll(RunState.FAILED, f"managed job ended with exit {end['exit_code']} (its exit record in the bucket)", at=at)
        submitted = record.running_since or record.created_at  # when it entered launching/running
        if time.time() - submitted > LAUNCH_GRACE_S:
            where = f" at {bucket_base(record)}/{END_RECORD}" if bucket_base(record) else ""
            return Poll(RunState.FAILED, f"the managed job is not in SkyPilot's queue and left no exit record{where}")
        return Poll(None)

    def logs(self, record, follow, on_line):
        if record.job_id is None:
            from launcher.backends.sky import Unavailable

            raise Unavailable("the managed job was never submitted")
        return self.backend.jobs_tail_logs(int(record.job_id), follow=follow, on_line=on_line)

    def stop(self, record):
        from launcher.backends.ownership import cancel_job

        cancelled, refusal = cancel_job(self.backend, record.run_id, record.job_id)
        return Stop(cancelled, refusal)


class Runners:
    """One runner per kind, sharing one lazily built SkyPilot backend and its cached queries
    (one `status` and one `jobs_queue` call per refresh, however many runs)."""

    def __init__(self, backend_factory=None):
        from launcher.backends.sky import get_backend

        factory = backend_factory or get_backend
        cache: dict = {}

        def shared():
            if "b" not in cache:
                cache["b"] = factory()
            return cache["b"]

        self._by_kind = {Backend.LOCAL: LocalRunner(), Backend.CLUSTER: ClusterRunner(shared),
                         Backend.MANAGED: ManagedRunner(shared)}

    def for_record(self, record: RunRecord) -> Runner | None:
        """The record's runner; None for a run recorded before it was given a backend."""
        return self._by_kind.get(record.backend) if record.backend is not None else None

    def prefetch(self, records) -> None:
        if any(r.backend is Backend.CLUSTER and r.cluster_name for r in records):
            self._by_kind[Backend.CLUSTER].prefetch(records)


def runner_for(record: RunRecord, backend=None) -> Runner | None:
    """A runner for one record, around an existing backend (up, logs) or the default one."""
    return Runners((lambda: backend) if backend is not None else None).for_record(record)


def start_local_recorded(registry, run_id: str, create, launch: Launch) -> dict:
    """Start a local run with no orphan window: `create()` records the run (launching) before
    any process starts, then the process is started and its pid and start time recorded, all
    with Ctrl-C held. If anything cuts in (an error, an interrupt let through), the process we
    started — ours by the Popen handle we hold — is killed and the row says so."""
    from launcher.backends import local
    from sftcore.errors import one_line

    record = None
    try:
        with deferred_interrupts():
            record = create()
            fields = LocalRunner().start(record, launch)
            registry.update(record.run_id, **fields)
            registry.set_state(record.run_id, RunState.RUNNING, f"pid {fields['pid']}")
    except BaseException as exc:
        record = record or registry.get(run_id, history=False)  # create() may have committed, then been cut
        if record is not None:
            local.kill_started(Path(record.local_dir))
            local.remove_containers(record.run_id)
            interrupted = isinstance(exc, KeyboardInterrupt)
            why = "interrupted" if interrupted else f"could not start: {one_line(exc)}"
            registry.set_state(record.run_id, RunState.CANCELLED if interrupted else RunState.FAILED,
                               f"{why} before the run was under way; nothing is left running")
        raise
    return fields
