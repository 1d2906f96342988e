"""The one place that talks to SkyPilot's stateful API (0.14 client SDK).

Why an adapter: every call that provisions, queries or deletes something goes through
`SkyBackend`, so commands stay testable offline with a fake of this class (tests drive success,
failure, preemption, Ctrl-C and teardown through it) and a SkyPilot upgrade touches one file.

SkyPilot 0.14's SDK is client/server: `sky.launch`, `sky.status`, `sky.down`, `sky.jobs.*`,
`sky.check` return a request id; `sky.stream_and_get(request_id)` streams the request's own log
and returns its result (`sky.get` waits without streaming). `tail_logs` calls stream directly
and return the job's exit code (0 ok, 100 failed, see `sky.exceptions.JobExitCode`).
`sky` is imported inside methods only: importing it costs seconds.

SkyPilot's ordinary "there is nothing there" answers are not errors for us (checked against
0.14.1's sky/jobs/server/core.py and sky/core.py):
  - no managed-jobs controller (never launched, or autostopped 10 idle minutes after its last
    job): `jobs.queue_v2`, `jobs.cancel` and `jobs.tail_logs` raise `ClusterNotUpError`
    ("No in-progress managed jobs.", "All managed jobs should have finished."). The queue is
    then empty and a cancel has nothing to do; logs are `Unavailable` (read the bucket copy).
  - a cluster that is gone: `down` raises `ClusterDoesNotExist` (already down: idempotent);
    `tail_logs`/`job_status` raise `ClusterDoesNotExist` or `ClusterNotUpError` (stopped,
    INIT), which become `Unavailable` / unknown.
The mapping lives in decorators (`no_controller_means`, `gone_means`) that the test fake wraps
its methods in too, so the commands are tested against SkyPilot's real exception classes.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field

from launcher.run_state import RunState
from sftcore.clouds import CLOUDS
from sftcore.errors import one_line

LABEL = "sftlaunch-run"

# What each cloud needs before SkyPilot 0.14.1's check passes (shown when it does not), from the
# checks themselves (sky/clouds/<cloud>.py `_check_compute_credentials`):
#  - RunPod reads only ~/.runpod/config.toml ([default] api_key), then lists pods with it; the
#    RUNPOD_API_KEY variable is not consulted by the check.
#  - Lambda reads only ~/.lambda_cloud/lambda_keys (`api_key = ...`) and lists instances.
#  - GCP needs the gcloud CLI, application-default credentials (or a service-account key in
#    GOOGLE_APPLICATION_CREDENTIALS), a project, and the compute/IAM/resource-manager APIs.
#  - Kubernetes needs a kubeconfig context it can reach (KUBECONFIG or ~/.kube/config).
CREDENTIAL_HINTS: dict[str, str] = {
    "runpod": (
        "RunPod: `pip install runpod && runpod config` (stores your API key in ~/.runpod/config.toml, "
        "the only place SkyPilot's check reads; RUNPOD_API_KEY is not enough), then `sky check runpod`"
    ),
    "lambda": (
        "Lambda: put `api_key = <key>` (from https://cloud.lambda.ai/api-keys) in "
        "~/.lambda_cloud/lambda_keys, then `sky check lambda`"
    ),
    "gcp": (
        "GCP: install the gcloud CLI, run `gcloud init` and `gcloud auth application-default login` "
        "(or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key), "
        "`gcloud services enable compute.googleapis.com`, then `sky check gcp`"
    ),
    "kubernetes": (
        "Kubernetes: a kubeconfig whose context reaches your cluster (KUBECONFIG or ~/.kube/config), "
        "then `sky check kubernetes`"
    ),
}
# SkyPilot reports clouds by their class repr; ours are lowercase keys.

# SkyPilot's cluster / managed-job states, normalised to ours (launcher.run_state.RunState).
# AUTOSTOPPING: idle, so its job has ended; the job status query decides the outcome.
CLUSTER_STATES = {
    "PENDING": RunState.LAUNCHING, "INIT": RunState.LAUNCHING, "UP": RunState.RUNNING,
    "AUTOSTOPPING": RunState.RUNNING, "STOPPED": RunState.STOPPED,
}
JOB_STATES = {
    "PENDING": RunState.PENDING, "SUBMITTED": RunState.PENDING, "STARTING": RunState.LAUNCHING,
    "RUNNING": RunState.RUNNING, "WINDING_DOWN": RunState.RUNNING, "RECOVERING": RunState.RECOVERING,
    "CANCELLING": RunState.STOPPING, "SUCCEEDED": RunState.SUCCEEDED, "CANCELLED": RunState.CANCELLED,
    "FAILED": RunState.FAILED, "FAILED_SETUP": RunState.FAILED, "FAILED_PRECHECKS": RunState.FAILED,
    "FAILED_NO_RESOURCE": RunState.FAILED, "FAILED_CONTROLLER": RunState.FAILED,
}
# sky.skylet.job_lib.JobStatus values for a job on a cluster.
CLUSTER_JOB_STATES = {
    "INIT": RunState.LAUNCHING, "PENDING": RunState.LAUNCHING, "SETTING_UP": RunState.LAUNCHING,
    "RUNNING": RunState.RUNNING, "SUCCEEDED": RunState.SUCCEEDED, "FAILED": RunState.FAILED,
    "FAILED_SETUP": RunState.FAILED, "FAILED_DRIVER": RunState.FAILED, "CANCELLED": RunState.CANCELLED,
}
EXIT_SUCCEEDED = 0
EXIT_FAILED = 100

JOB_QUEUE_FIELDS = (
    "job_id", "job_name", "status", "submitted_at", "end_at", "job_duration", "recovery_count",
    "failure_reason", "cloud", "region", "labels", "user_hash", "user_name",
)


@dataclass
class Cluster:
    name: str
    status: str  # SkyPilot's: INIT | UP | STOPPED
    labels: dict = field(default_factory=dict)
    cloud: str | None = None
    region: str | None = None
    launched_at: float | None = None
    resources: str | None = None
    user_hash: str | None = None  # SkyPilot's owner of the cluster (StatusResponse.user_hash)
    user_name: str | None = None

    @property
    def run_id(self) -> str | None:
        return (self.labels or {}).get(LABEL)


@dataclass
class ManagedJob:
    job_id: int
    name: str
    status: str  # SkyPilot's ManagedJobStatus value
    labels: dict = field(default_factory=dict)
    recovery_count: int = 0
    submitted_at: float | None = None
    end_at: float | None = None
    duration_s: float | None = None
    cloud: str | None = None
    region: str | None = None
    failure_reason: str | None = None
    user_hash: str | None = None  # SkyPilot's owner of the job (ManagedJobRecord.user_hash)
    user_name: str | None = None

    @property
    def run_id(self) -> str | None:
        return (self.labels or {}).get(LABEL)

    @property
    def finished(self) -> bool:
        return JOB_STATES.get(self.status, RunState.RUNNING).is_final


class Unavailable(Exception):
    """What was asked for is not there any more (cluster gone or stopped, no jobs controller):
    callers fall back to the bucket copy. Carries SkyPilot's first line as the message."""


def _absent_means(kinds: tuple[str, ...], what: str | None):
    """A decorator factory for SkyPilot's "nothing there" exceptions (`kinds`, names in
    `sky.exceptions`): the decorated call answers `result()` instead (a factory, so lists are not
    shared), or, with `result=Unavailable`, raises Unavailable with SkyPilot's first line,
    prefixed by `what`."""

    def means(result):
        def wrap(fn):
            @functools.wraps(fn)
            def inner(*args, **kwargs):
                from sky import exceptions

                try:
                    return fn(*args, **kwargs)
                except tuple(getattr(exceptions, k) for k in kinds) as exc:
                    if result is Unavailable:
                        detail = one_line(exc)
                        raise Unavailable(f"{what} ({detail})" if what else detail) from None
                    return result()

            return inner

        return wrap

    return means


# No managed-jobs controller (ClusterNotUpError): nothing is in progress.
no_controller_means = _absent_means(("ClusterNotUpError",), "no managed-jobs controller is up")
# A cluster that no longer exists (or is not UP).
gone_means = _absent_means(("ClusterDoesNotExist", "ClusterNotUpError"), None)


def _nothing():
    return None


class _LineWriter(io.TextIOBase):
    """A text stream SkyPilot can print to; hands complete lines to a callback."""

    def __init__(self, on_line):
        self._on_line = on_line
        self._buf = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._on_line(line)
        return len(s)

    def flush(self) -> None:
        pass

    def close_out(self) -> None:
        if self._buf:
            self._on_line(self._buf)
            self._buf = ""


def _task(task_config: dict, secrets: dict[str, str] | None = None):
    """sky.Task from our rendered dict; secret values join only here, at launch time."""
    import copy

    import sky

    config = copy.deepcopy(task_config)
    declared = config.get("secrets") or {}
    if isinstance(declared, dict):
        # Names we have no value for are dropped rather than left as managed-secret references
        # that a plain SkyPilot install cannot resolve.
        config["secrets"] = {k: v for k, v in declared.items() if v is not None or k in (secrets or {})} or None
        if config["secrets"] is None:
            config.pop("secrets")
    overrides = list((secrets or {}).items()) or None
    return sky.Task.from_yaml_config(config, secrets_overrides=overrides)


class SkyBackend:
    """Real SkyPilot. Methods mirror what the commands need, nothing more.

    `down` and `jobs_cancel` are called only by launcher.backends.ownership, after it has proven
    the cluster or job is this run's and this user's."""

    def __init__(self):
        self._user: str | None = None

    def current_user(self) -> str:
        """The SkyPilot user hash the API server acts for: the authenticated user when the server
        sits behind an auth proxy or uses service-account tokens (`api_info().user`), else this
        client's hash, which the server then takes as the requester (sky.utils.common_utils)."""
        if self._user is None:
            from sky.client import sdk
            from sky.utils import common_utils

            info = sdk.api_info()
            user = getattr(info, "user", None)
            self._user = getattr(user, "id", None) or common_utils.get_user_hash()
        return self._user

    def offline(self):
        """The credential check and optimizer without an API server, for dry runs (sky_offline)."""
        from launcher.backends.sky_offline import OfflineSky

        return OfflineSky()

    def enabled_clouds(self, clouds: list[str]) -> dict[str, bool]:
        """cloud -> whether SkyPilot's check says it can launch compute there."""
        import sky
        from sky.client import sdk  # `sky.check` is the server-side module, not the SDK call

        wanted = [c for c in clouds if c in CLOUDS]
        if not wanted:
            return {}
        result = sky.get(sdk.check(tuple(wanted), verbose=False))
        enabled: set[str] = set()
        for per_cloud in (result or {}).values():
            for cloud_name, capabilities in (per_cloud or {}).items():
                if "compute" in [str(c).lower() for c in capabilities]:
                    enabled.add(str(cloud_name).lower())
        return {c: c in enabled for c in wanted}

    def optimize(self, task_config: dict) -> str:
        """SkyPilot's optimizer over the task (what `sky launch --dryrun` shows): the request's
        return value is dropped by the server, so its printed plan table is what we return."""
        import sky
        from sky.client import sdk

        lines: list[str] = []
        writer = _LineWriter(lines.append)
        try:
            sky.stream_and_get(sdk.optimize(_as_dag(_task(task_config))), output_stream=writer)
        finally:
            writer.close_out()
        return "\n".join(line for line in lines if line.strip()) or "(SkyPilot printed no plan)"

    def launch(self, task_config: dict, cluster_name: str, idle_minutes: int | None, down: bool,
               secrets: dict[str, str] | None = None, on_line=None) -> int | None:
        """Provision (or reuse) `cluster_name` and submit the task; returns the cluster job id."""
        import sky

        task = _task(task_config, secrets)
        request_id = sky.launch(
            task, cluster_name=cluster_name, idle_minutes_to_autostop=idle_minutes, down=down,
        )
        job_id, _handle = self._stream(request_id, on_line)
        return job_id

    def jobs_launch(self, task_config: dict, name: str, secrets: dict[str, str] | None = None,
                    on_line=None) -> int | None:
        """Submit a managed job (SkyPilot recovers it on preemption); returns its job id."""
        import sky

        task = _task(task_config, secrets)
        job_ids, _handle = self._stream(sky.jobs.launch(task, name=name), on_line)
        return job_ids[0] if job_ids else None

    def status(self, cluster_names: list[str] | None = None) -> list[Cluster]:
        import sky

        records = sky.get(sky.status(cluster_names=cluster_names))
        out = []
        for r in records or []:
            get = r.get if isinstance(r, dict) else (lambda k, _r=r: getattr(_r, k, None))
            status = get("status")
            out.append(Cluster(
                name=get("name"), status=getattr(status, "value", str(status)),
                labels=dict(get("labels") or {}), cloud=get("cloud"), region=get("region"),
                launched_at=get("launched_at"), resources=get("resources_str"),
                user_hash=get("user_hash"), user_name=get("user_name"),
            ))
        return out

    @no_controller_means(list)
    def jobs_queue(self) -> list[ManagedJob]:
        import sky

        result = sky.get(sky.jobs.queue_v2(refresh=False, fields=list(JOB_QUEUE_FIELDS)))
        records = result[0] if isinstance(result, tuple) else result
        out = []
        for r in records or []:
            get = r.get if isinstance(r, dict) else (lambda k, _r=r: getattr(_r, k, None))
            status = get("status")
            out.append(ManagedJob(
                job_id=int(get("job_id")), name=get("job_name") or "",
                status=getattr(status, "value", str(status)), labels=dict(get("labels") or {}),
                recovery_count=int(get("recovery_count") or 0), submitted_at=get("submitted_at"),
                end_at=get("end_at"), duration_s=get("job_duration"), cloud=get("cloud"),
                region=get("region"), failure_reason=get("failure_reason"),
                user_hash=get("user_hash"), user_name=get("user_name"),
            ))
        return out

    @gone_means(_nothing)
    def cluster_job_status(self, cluster_name: str, job_id: int | None) -> str | None:
        """SkyPilot's status of a job on a cluster (SUCCEEDED, FAILED, RUNNING, ...), None if unknown."""
        import sky

        statuses = sky.get(sky.job_status(cluster_name, [job_id] if job_id is not None else None))
        status = next(iter((statuses or {}).values()), None)
        return None if status is None else getattr(status, "value", str(status))

    def down(self, cluster_name: str) -> None:
        import sky
        from sky import exceptions

        try:
            sky.get(sky.down(cluster_name))
        except exceptions.ClusterDoesNotExist:
            pass  # already gone: teardown is idempotent

    @no_controller_means(_nothing)
    def jobs_cancel(self, job_id: int) -> None:
        """No controller up means every managed job has ended: nothing left to cancel."""
        import sky

        sky.get(sky.jobs.cancel(job_ids=[job_id]))

    @gone_means(Unavailable)
    def tail_logs(self, cluster_name: str, job_id: int | None, follow: bool, on_line) -> int | None:
        import sky

        writer = _LineWriter(on_line)
        try:
            return sky.tail_logs(cluster_name, job_id, follow=follow, output_stream=writer)
        finally:
            writer.close_out()

    @no_controller_means(Unavailable)
    def jobs_tail_logs(self, job_id: int, follow: bool, on_line) -> int | None:
        import sky

        seen = []
        writer = _LineWriter(lambda line: (seen.append(True), on_line(line)))
        try:
            code = sky.jobs.tail_logs(job_id=job_id, follow=follow, output_stream=writer)
        finally:
            writer.close_out()
        if not follow and code is None and not seen:
            # Without --follow SkyPilot returns None and drops the request's error (stream_response),
            # so "no controller" looks like an empty log: ask the queue, which raises it.
            sky.get(sky.jobs.queue_v2(refresh=False, job_ids=[job_id], fields=["job_id"]))
        return code

    def _stream(self, request_id, on_line):
        import sky

        if on_line is None:
            return sky.stream_and_get(request_id)
        writer = _LineWriter(on_line)
        try:
            return sky.stream_and_get(request_id, output_stream=writer)
        finally:
            writer.close_out()


def _as_dag(task):
    from sky.utils import dag_utils

    return dag_utils.convert_entrypoint_to_dag(task)


_backend_factory = SkyBackend


def get_backend():
    """The backend commands use; tests swap `_backend_factory` for a fake."""
    return _backend_factory()
