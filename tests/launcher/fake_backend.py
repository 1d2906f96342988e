"""A fake of launcher.backends.sky.SkyBackend: SkyPilot's stateful side, in memory.

It behaves like the real thing where the launcher depends on it: clusters and managed jobs carry
the labels of the task they were launched from, log streams end with the job's exit code (0 ok,
100 failed), managed jobs can be preempted and recovered, and `down`/`jobs_cancel` are
idempotent. Scenarios are set with attributes before the command runs.

Ownership: what the fake launches belongs to its `user` (SkyPilot's user hash) and carries the
task's labels; tests add look-alikes (unlabelled, labelled for another run, another user's).
Every `down` / `jobs_cancel` on a resource that is not labelled for a run *and* owned by `user`
is appended to `foreign_actions` (and, with SFTLAUNCH_FAKE_AUDIT=<file>, to that file), so each
scenario can assert — and the report can count — destructive actions on what is not ours.

Where SkyPilot answers "nothing there" with an exception, the fake raises SkyPilot's real one
(`sky.exceptions.ClusterNotUpError` with no jobs controller, `ClusterDoesNotExist` for a gone
cluster) underneath the adapter's own decorators, so what the commands see is exactly what the
real adapter turns those exceptions into.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from launcher.backends.sky import (
    EXIT_FAILED,
    EXIT_SUCCEEDED,
    Cluster,
    ManagedJob,
    Unavailable,
    gone_means,
    no_controller_means,
)


def _nothing():
    return None


@contextlib.contextmanager
def installed(monkeypatch, fake: FakeSky | None = None):
    """The fake as the backend every command gets; on the way out, the scenario must not have
    downed or cancelled anything that is not ours(goal: 0 such actions)."""
    from launcher.backends import sky as sky_backend

    fake = fake if fake is not None else FakeSky()
    monkeypatch.setattr(sky_backend, "_backend_factory", lambda: fake)
    yield fake
    assert fake.foreign_actions == [], f"destroyed what is not ours: {fake.foreign_actions}"


def _no_controller():
    """What SkyPilot 0.14.1's jobs server raises when the controller is not up."""
    from sky import exceptions

    return exceptions.ClusterNotUpError("No in-progress managed jobs.", cluster_status=None)


def _no_cluster(name):
    from sky import exceptions

    return exceptions.ClusterDoesNotExist(f"Cluster {name!r} does not exist.")


@dataclass
class FakeSky:
    enabled: set = field(default_factory=lambda: {"runpod", "lambda", "gcp", "kubernetes"})
    outcome: str = "SUCCEEDED"  # how jobs end: SUCCEEDED | FAILED
    log_lines: list = field(default_factory=lambda: [
        "loading model",
        '{"step": 5, "total_steps": 20, "loss": 2.1}',
        '{"step": 10, "total_steps": 20, "loss": 1.7}',
        '{"step": 20, "total_steps": 20, "loss": 1.2}',
        "training done",
    ])
    preemptions: int = 0  # managed jobs: how many times the job is preempted (and recovered)
    interrupt_after: int | None = None  # raise KeyboardInterrupt after this many streamed lines
    launch_error: Exception | None = None
    check_error: Exception | None = None
    controller_up: bool = True  # False: no managed-jobs controller (never started, or autostopped)
    clusters: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)
    cluster_jobs: dict = field(default_factory=dict)  # cluster name -> job status
    calls: list = field(default_factory=list)
    launched: list = field(default_factory=list)  # (kind, task, secrets, autostop)
    user: str = "u-me0001"  # the SkyPilot user hash this client acts as
    foreign_actions: list = field(default_factory=list)
    submitted: set = field(default_factory=set)  # managed job ids this fake launched (sftlaunch's)

    def current_user(self):
        return self.user

    def _audit(self, action, resource) -> None:
        """Note a destructive call on something that is not labelled for a run and this user's
        (a PENDING managed job of ours has no labels yet: its name is then a run id)."""
        import os

        if resource is None:
            return
        labelled = bool((resource.labels or {}).get("sftlaunch-run")) or (
            not resource.labels and action == "jobs_cancel" and resource.job_id in self.submitted)
        foreign = not (labelled and resource.user_hash == self.user)
        if foreign:
            self.foreign_actions.append((action, resource.name, resource.user_hash))
        audit = os.environ.get("SFTLAUNCH_FAKE_AUDIT")
        if audit:
            with open(audit, "a") as fh:
                fh.write(f"{action} {resource.name} {'foreign' if foreign else 'ours'}\n")

    # -- credentials / optimizer ----------------------------------------------------------------
    def offline(self):
        """A dry run's server-free view (SkyBackend.offline): the fake has no server to avoid."""
        self.calls.append(("offline",))
        return self

    def enabled_clouds(self, clouds):
        self.calls.append(("check", tuple(clouds)))
        if self.check_error:
            raise self.check_error
        return {c: c in self.enabled for c in clouds}

    @staticmethod
    def _first(task) -> dict:
        """The choice SkyPilot launches when it has capacity: the first of `ordered`, if any."""
        res = task["resources"]
        return {**res, **res["ordered"][0]} if "ordered" in res else res

    def optimize(self, task):
        self.calls.append(("optimize", task["name"]))
        res = self._first(task)
        return f"{res['cloud']}({res['accelerators']}{', spot' if res.get('use_spot') else ''})"

    # -- launching --------------------------------------------------------------------------------
    def launch(self, task, cluster_name, idle_minutes, down, secrets=None, on_line=None):
        self.calls.append(("launch", cluster_name))
        self.launched.append(("cluster", task, dict(secrets or {}), {"idle_minutes": idle_minutes, "down": down}))
        if on_line:
            on_line(f"Launching a new cluster {cluster_name!r}.")
        if self.launch_error:
            self.clusters[cluster_name] = Cluster(cluster_name, "INIT", dict(task["resources"]["labels"]),
                                                  self._first(task)["cloud"], user_hash=self.user)
            raise self.launch_error
        self.clusters[cluster_name] = Cluster(
            cluster_name, "UP", dict(task["resources"]["labels"]), self._first(task)["cloud"], self._first(task).get("region"),
            user_hash=self.user,
        )
        self.cluster_jobs[cluster_name] = "RUNNING"
        return 1

    def jobs_launch(self, task, name, secrets=None, on_line=None):
        self.calls.append(("jobs_launch", name))
        self.launched.append(("managed", task, dict(secrets or {}), None))
        if self.launch_error:
            raise self.launch_error
        job_id = max(self.jobs, default=0) + 1
        self.jobs[job_id] = ManagedJob(job_id, name, "RUNNING", dict(task["resources"]["labels"]),
                                       cloud=self._first(task)["cloud"], user_hash=self.user)
        self.controller_up = True  # launching a managed job starts the controller
        self.submitted.add(job_id)
        return job_id

    # -- queries ----------------------------------------------------------------------------------
    def status(self, cluster_names=None):
        self.calls.append(("status", tuple(cluster_names) if cluster_names else None))
        return [c for n, c in self.clusters.items() if cluster_names is None or n in cluster_names]

    @no_controller_means(list)
    def jobs_queue(self):
        self.calls.append(("jobs_queue",))
        if not self.controller_up:
            raise _no_controller()
        return list(self.jobs.values())

    @gone_means(_nothing)
    def cluster_job_status(self, cluster_name, job_id):
        if cluster_name not in self.clusters:
            raise _no_cluster(cluster_name)
        return self.cluster_jobs.get(cluster_name)

    # -- ending -----------------------------------------------------------------------------------
    def down(self, cluster_name):
        self.calls.append(("down", cluster_name))
        self._audit("down", self.clusters.get(cluster_name))
        self.clusters.pop(cluster_name, None)

    @no_controller_means(_nothing)
    def jobs_cancel(self, job_id):
        self.calls.append(("jobs_cancel", job_id))
        if not self.controller_up:
            raise _no_controller()
        job = self.jobs.get(job_id)
        self._audit("jobs_cancel", job)
        if job and not job.finished:
            job.status = "CANCELLED"

    # -- logs -------------------------------------------------------------------------------------
    def _emit(self, on_line, lines, count):
        for line in lines:
            if self.interrupt_after is not None and count >= self.interrupt_after:
                raise KeyboardInterrupt
            on_line(line)
            count += 1
        return count

    @gone_means(Unavailable)
    def tail_logs(self, cluster_name, job_id, follow, on_line):
        self.calls.append(("tail_logs", cluster_name, job_id))
        if cluster_name not in self.clusters:
            raise _no_cluster(cluster_name)
        self._emit(on_line, self.log_lines, 0)
        if follow:
            self.cluster_jobs[cluster_name] = self.outcome
        return EXIT_SUCCEEDED if self.cluster_jobs.get(cluster_name) == "SUCCEEDED" else EXIT_FAILED

    @no_controller_means(Unavailable)
    def jobs_tail_logs(self, job_id, follow, on_line):
        self.calls.append(("jobs_tail_logs", job_id))
        if not self.controller_up:
            raise _no_controller()
        job = self.jobs[job_id]
        count = 0
        for i in range(self.preemptions):
            count = self._emit(on_line, self.log_lines[:2], count)
            job.status, job.recovery_count = "RECOVERING", i + 1
            on_line(f"(sky) the spot instance was preempted; recovering (attempt {i + 1})")
            job.status = "RUNNING"
        self._emit(on_line, self.log_lines, count)
        if follow:
            job.status = self.outcome
        return EXIT_SUCCEEDED if job.status == "SUCCEEDED" else EXIT_FAILED


@dataclass
class FakeCandidate:
    """The planner's Candidate shape (launcher.estimate), with chosen numbers."""

    cloud: str
    gpu: str = "H100"
    gpus_per_node: int = 1
    nodes: int = 1
    spot: bool = False
    usd_per_hour: float = 2.5
    region: str | None = None
    mem_needed_gb: float = 40.0
    mem_available_gb: float = 80.0
    fits: bool = True
    borderline: bool = False
    eta_hours: float = 2.0
    total_usd: float = 5.0

    @property
    def accelerators(self) -> str:
        return f"{self.gpu}:{self.gpus_per_node}"


@dataclass
class FakePlan:
    candidates: list
    chosen: FakeCandidate | None = None
    reason: str | None = None


def write_recipe(dir_, name="demo", clouds=("runpod", "gcp"), spot=False, bucket=True, max_usd=50,
                 hub_repo=None, eval_=True):
    """A small cloud recipe file (local data beside it); returns its path. `bucket`: True for a
    local-path bucket beside it (readable by the test), a URI string, or False for none."""
    import yaml

    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "train.jsonl").write_text('{"instruction": "add 1 and 2", "input": "", "output": "3"}\n')
    data = {
        "name": name,
        "model": {"id": "sftlaunch/tiny-llama"},
        "method": "full",
        "data": {"sources": [{"path": "train.jsonl", "format": "alpaca"}], "template": "plain"},
        "resources": {"clouds": list(clouds), "gpu": "H100:1", "spot": spot, "max_usd": max_usd},
        "output": {"bucket": bucket if isinstance(bucket, str) else str(dir_ / "bucket") if bucket else None,
                   "hub_repo": hub_repo},
    }
    if not eval_:
        data["eval"] = None
    path = dir_ / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# A valid recipe for runs of the stub job: `jobs sync push` (the real module) loads it for its
# output.bucket, which it names none of.
STUB_RECIPE_YAML = ("name: local\nmodel: {id: sftlaunch/tiny-llama}\nmethod: full\n"
                    "data: {sources: [{path: stub/data, format: alpaca}]}\nresources: {clouds: [local]}\n")

STUB_PYTHON = """#!/usr/bin/env bash
# Stands in for the job's Python under docker/entrypoint.sh (SFTLAUNCH_PYTHON): the training,
# eval and publish jobs only print, write metrics.jsonl and leave a ran-<step> file, so the
# entrypoint's own logic runs in a second; `jobs sync` (masking, bucket copy, exit record) is
# the real module. STUB_TRAIN_EXIT sets train's exit code; STUB_STOP=1 writes the STOPPED marker
# the way jobs.train does when its budget guard stops training.
if [ "$1" = "-m" ] && [ "$2" = "jobs" ] && [ "$3" = "sync" ]; then exec {python} "$@"; fi
case "$2 $3" in
  "jobs.dist info") echo "python (stub job)"; echo "recipe $4 token=${{HF_TOKEN:-}}" ;;
  "jobs.dist train")
    echo '{{"step": 1, "total_steps": 2, "loss": 2.0}}' >> "$SFTLAUNCH_OUT/metrics.jsonl"
    echo '{{"step": 2, "total_steps": 2, "loss": 1.0}}' >> "$SFTLAUNCH_OUT/metrics.jsonl"
    echo "step 2/2 loss 1.0 debug token=${{HF_TOKEN:-}}"
    if [ "${{STUB_STOP:-0}}" = "1" ]; then echo '{{"reason": "budget", "checkpoint": "step-2"}}' > "$SFTLAUNCH_OUT/STOPPED"; fi
    touch "$SFTLAUNCH_OUT/ran-train"
    exit "${{STUB_TRAIN_EXIT:-0}}" ;;
  "jobs eval") echo "eval: tiny_mc 0.9"; touch "$SFTLAUNCH_OUT/ran-eval" ;;
  "jobs publish") echo "publish: model card written"; touch "$SFTLAUNCH_OUT/ran-publish" ;;
  *) echo "stub python: unexpected $*" >&2; exit 99 ;;
esac
"""


def stub_job_python(dir_) -> str:
    """Path of an executable STUB_PYTHON in `dir_` (see above)."""
    import stat
    import sys

    dir_.mkdir(parents=True, exist_ok=True)
    exe = dir_ / "stub-python"
    exe.write_text(STUB_PYTHON.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def launched(fake, reg, run_id, kind="cluster", usd=3.0, max_usd=None, bucket=None, hours_ago=1.0):
    """A run as `up --detach` leaves it, started `hours_ago`."""
    task = {"name": run_id, "resources": {"cloud": "gcp", "labels": {"sftlaunch-run": run_id}}}
    reg.create(run_id, {"name": "demo"}, backend=kind, cloud="gcp", gpu="A100-80GB", gpus_per_node=2,
               spot=kind == "managed", usd_per_hour=usd, max_usd=max_usd, bucket=bucket,
               cluster_name=run_id if kind == "cluster" else None)
    reg.set_state(run_id, "running", at=time.time() - hours_ago * 3600)
    if kind == "cluster":
        fake.launch(task, run_id, 30, False)
        reg.update(run_id, job_id="1")
    else:
        reg.update(run_id, job_id=str(fake.jobs_launch(task, run_id)))
