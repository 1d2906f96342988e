"""The SkyPilot adapter against the installed SkyPilot 0.14, offline.

No API server is started: each SDK function the adapter calls is replaced by a recorder that
binds the call against the real function's signature (so a renamed or removed parameter fails
here), and returns what the real request would return.
"""

from __future__ import annotations

import inspect

import pytest

pytestmark = pytest.mark.requires("sky")

from launcher.backends import sky as adapter  # noqa: E402
from launcher.render import Target, render_task  # noqa: E402
from sftcore.recipe import load_recipe  # noqa: E402
from tests.launcher.fake_backend import write_recipe  # noqa: E402

CANARY = "hf_CANARYadapter0123456789abcdefQ"


@pytest.fixture
def task_dict(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r", bucket="gs://sftl-test/runs"))
    mount = tmp_path / "recipe.yaml"
    mount.write_text("name: demo\n")
    return render_task(recipe, Target(cloud="gcp", gpu="H100", spot=False), "sftl-demo-abcd", str(mount))


class Recorder:
    def __init__(self, monkeypatch):
        self.calls = []
        self.results = {}
        self.monkeypatch = monkeypatch

    def patch(self, owner, name, result=None):
        real = getattr(owner, name)
        sig = inspect.signature(real)

        def fake(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)  # TypeError if the SDK's signature moved
            self.calls.append((name, bound.arguments))
            return f"req-{name}" if result is None else result

        self.monkeypatch.setattr(owner, name, fake)

    def returns(self, request_id, value):
        self.results[request_id] = value


@pytest.fixture
def rec(monkeypatch):
    import sky

    r = Recorder(monkeypatch)
    r.patch(sky, "stream_and_get")
    r.patch(sky, "get")

    def lookup(request_id, *a, **k):
        r.calls.append(("get", {"request_id": request_id, **k}))
        return r.results.get(request_id)

    monkeypatch.setattr(sky, "stream_and_get", lookup)
    monkeypatch.setattr(sky, "get", lookup)
    return r


def test_state_tables_cover_skypilots_enums():
    import sky
    from sky.jobs.state import ManagedJobStatus
    from sky.skylet.job_lib import JobStatus
    from sky.utils.status_lib import ClusterStatus

    assert {s.value for s in ManagedJobStatus} <= set(adapter.JOB_STATES)
    assert {s.value for s in JobStatus} <= set(adapter.CLUSTER_JOB_STATES)
    assert {s.value for s in ClusterStatus} <= set(adapter.CLUSTER_STATES)
    assert adapter.EXIT_SUCCEEDED == sky.exceptions.JobExitCode.SUCCEEDED
    assert adapter.EXIT_FAILED == sky.exceptions.JobExitCode.FAILED
    fields = set(sky.schemas.api.responses.ManagedJobRecord.model_fields)
    assert set(adapter.JOB_QUEUE_FIELDS) <= fields


def test_task_validates_and_secrets_join_only_at_launch(task_dict, monkeypatch):
    task = adapter._task(task_dict, {"HF_TOKEN": CANARY})
    assert task.name == "sftl-demo-abcd"
    assert list(task.secrets) == ["HF_TOKEN"]  # WANDB_API_KEY had no value: dropped, not a dangling ref
    assert task.secrets["HF_TOKEN"].get_secret_value() == CANARY
    # What SkyPilot records as the user's YAML (dashboard, job queue) never holds the value.
    assert CANARY not in str(task.to_yaml_config(use_user_specified_yaml=True))
    labels = next(iter(task.resources)).labels
    assert labels == {"sftlaunch-run": "sftl-demo-abcd"}
    assert task_dict["secrets"] == {"HF_TOKEN": None, "WANDB_API_KEY": None}  # the caller's dict untouched
    assert adapter._task(task_dict).secrets == {}


def test_launch_calls_the_sdk_as_0_14_expects(task_dict, rec, monkeypatch):
    import sky

    rec.patch(sky, "launch")
    rec.returns("req-launch", (4, object()))
    lines = []
    job_id = adapter.SkyBackend().launch(task_dict, "sftl-demo-abcd", 30, False, {"HF_TOKEN": CANARY}, lines.append)
    assert job_id == 4
    name, args = rec.calls[0]
    assert name == "launch" and args["cluster_name"] == "sftl-demo-abcd"
    assert args["idle_minutes_to_autostop"] == 30 and args["down"] is False
    assert isinstance(args["task"], sky.Task)
    assert rec.calls[1][0] == "get" and rec.calls[1][1]["request_id"] == "req-launch"
    assert "output_stream" in rec.calls[1][1]


def test_jobs_launch_queue_cancel_status_down(task_dict, rec):
    import sky

    b = adapter.SkyBackend()
    rec.patch(sky.jobs, "launch")
    rec.returns("req-launch", ([12], None))
    assert b.jobs_launch(task_dict, "sftl-demo-abcd") == 12
    assert rec.calls[0][1]["name"] == "sftl-demo-abcd"

    rec.patch(sky.jobs, "queue_v2")
    from sky.jobs.state import ManagedJobStatus
    from sky.schemas.api.responses import ManagedJobRecord

    record = ManagedJobRecord(job_id=12, job_name="sftl-demo-abcd", status=ManagedJobStatus.RECOVERING,
                              recovery_count=2, labels={"sftlaunch-run": "sftl-demo-abcd"})
    rec.returns("req-queue_v2", ([record], 1, {}, 1))
    (job,) = b.jobs_queue()
    assert (job.job_id, job.status, job.recovery_count, job.run_id) == (12, "RECOVERING", 2, "sftl-demo-abcd")
    assert "labels" in rec.calls[-2][1]["fields"]

    rec.patch(sky.jobs, "cancel")
    b.jobs_cancel(12)
    assert rec.calls[-2][1]["job_ids"] == [12]

    rec.patch(sky, "status")
    from sky.utils.status_lib import ClusterStatus

    rec.returns("req-status", [{"name": "sftl-demo-abcd", "status": ClusterStatus.UP, "labels": {"sftlaunch-run": "x"},
                                "cloud": "GCP", "region": "us-central1", "launched_at": 1}])
    (cluster,) = b.status(["sftl-demo-abcd"])
    assert (cluster.name, cluster.status, cluster.run_id) == ("sftl-demo-abcd", "UP", "x")

    rec.patch(sky, "down")
    b.down("sftl-demo-abcd")
    assert rec.calls[-2] == ("down", {"cluster_name": "sftl-demo-abcd"})


def test_optimize_returns_skypilots_printed_plan(task_dict, monkeypatch):
    import sky
    from sky.client import sdk

    sig = inspect.signature(sdk.optimize)
    seen = {}

    def fake_optimize(*a, **k):
        seen.update(sig.bind(*a, **k).arguments)
        return "req-opt"

    def fake_stream(request_id, output_stream=None, **k):
        print("Considered resources (1 node):\nGCP  a3-highgpu-1g  H100:1  us-central1  $ 11.06  ✔\n", end="",
              file=output_stream)

    monkeypatch.setattr(sdk, "optimize", fake_optimize)
    monkeypatch.setattr(sky, "stream_and_get", fake_stream)
    text = adapter.SkyBackend().optimize(task_dict)
    assert "a3-highgpu-1g" in text and isinstance(seen["dag"], sky.Dag)


def test_check_maps_skypilots_answer_per_cloud(rec):
    from sky.client import sdk

    rec.patch(sdk, "check")
    rec.returns("req-check", {"default": {"GCP": ["compute", "storage"], "RunPod": ["storage"]}})
    assert adapter.SkyBackend().enabled_clouds(["gcp", "runpod", "lambda"]) == {
        "gcp": True, "runpod": False, "lambda": False}
    assert rec.calls[0][1]["infra_list"] == ("gcp", "runpod", "lambda")
    assert set(adapter.CREDENTIAL_HINTS) == {"runpod", "lambda", "gcp", "kubernetes"}


def _raising(monkeypatch, exc):
    """Every request's result raises `exc`, as sky.get/stream_and_get do for a failed request."""
    import sky

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(sky, "get", boom)
    monkeypatch.setattr(sky, "stream_and_get", boom)


def test_no_jobs_controller_is_an_empty_queue_and_nothing_to_cancel(rec, monkeypatch):
    import sky
    from sky import exceptions

    # What sky/jobs/server/core.py raises in 0.14.1 when the controller is not up.
    rec.patch(sky.jobs, "queue_v2")
    rec.patch(sky.jobs, "cancel")
    _raising(monkeypatch, exceptions.ClusterNotUpError("No in-progress managed jobs.", cluster_status=None))
    b = adapter.SkyBackend()
    assert b.jobs_queue() == []
    assert b.jobs_cancel(3) is None
    assert [c[0] for c in rec.calls] == ["queue_v2", "cancel"]
    monkeypatch.setattr(sky.jobs, "tail_logs", lambda *a, **k: (_ for _ in ()).throw(
        exceptions.ClusterNotUpError("Jobs controller is stopped.")))
    with pytest.raises(adapter.Unavailable, match="no managed-jobs controller is up"):
        b.jobs_tail_logs(3, False, print)


def test_non_follow_managed_logs_without_a_controller_are_unavailable(rec, monkeypatch):
    """Checked against a real local API server: without --follow, sky.jobs.tail_logs returns None
    and prints nothing when no controller is up (stream_response drops the request's error), so
    the adapter asks the queue, which raises ClusterNotUpError, instead of showing an empty log."""
    import sky
    from sky import exceptions

    jsig = inspect.signature(sky.jobs.tail_logs)
    monkeypatch.setattr(sky.jobs, "tail_logs", lambda *a, **k: (jsig.bind(*a, **k), None)[1])
    rec.patch(sky.jobs, "queue_v2")
    _raising(monkeypatch, exceptions.ClusterNotUpError("\x1b[33mNo in-progress managed jobs.\x1b[0m"))
    with pytest.raises(adapter.Unavailable) as err:
        adapter.SkyBackend().jobs_tail_logs(3, False, print)
    assert str(err.value) == "no managed-jobs controller is up (No in-progress managed jobs.)"  # colours stripped
    assert rec.calls[-1][1]["job_ids"] == [3]
    rec.returns("req-queue_v2", ([], 0, {}, 0))
    monkeypatch.setattr(sky, "get", lambda request_id, **k: rec.results.get(request_id))
    assert adapter.SkyBackend().jobs_tail_logs(3, False, print) is None  # a controller, an empty log


def test_a_gone_cluster_is_already_down_and_has_no_logs(rec, monkeypatch):
    import sky
    from sky import exceptions

    for name in ("down", "job_status"):
        rec.patch(sky, name)
    _raising(monkeypatch, exceptions.ClusterDoesNotExist("Cluster 'sftl-x-0000' does not exist."))
    b = adapter.SkyBackend()
    assert b.down("sftl-x-0000") is None
    assert b.cluster_job_status("sftl-x-0000", 1) is None
    monkeypatch.setattr(sky, "tail_logs", lambda *a, **k: (_ for _ in ()).throw(
        exceptions.ClusterDoesNotExist("Cluster 'sftl-x-0000' does not exist.")))
    with pytest.raises(adapter.Unavailable, match="does not exist"):
        b.tail_logs("sftl-x-0000", 1, False, print)
    # Anything else is not swallowed: a real failure still reaches the caller.
    _raising(monkeypatch, RuntimeError("Failed to tear down the cluster"))
    with pytest.raises(RuntimeError):
        b.down("sftl-x-0000")
    rec.patch(sky.jobs, "queue_v2")
    with pytest.raises(RuntimeError):
        b.jobs_queue()


def test_credential_hints_say_what_skypilots_checks_read(monkeypatch, tmp_path):
    from sky import clouds
    from sky.adaptors import kubernetes
    from sky.provision.lambda_cloud import lambda_utils

    hints = adapter.CREDENTIAL_HINTS
    # RunPod: the check reads ~/.runpod/config.toml only; an API key in the environment is not enough.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_" + "x" * 30)
    ok, why = clouds.RunPod._check_runpod_credentials()
    assert not ok and "~/.runpod/config.toml" in why
    assert "~/.runpod/config.toml" in hints["runpod"] and "runpod config" in hints["runpod"]
    assert "RUNPOD_API_KEY is not enough" in hints["runpod"]
    (tmp_path / ".runpod").mkdir()
    (tmp_path / ".runpod" / "config.toml").write_text('[default]\napi_key = "x"\n')
    assert clouds.RunPod._check_runpod_credentials() == (True, None)  # the file is what counts
    assert lambda_utils.CREDENTIALS_PATH in hints["lambda"] and "api_key = " in hints["lambda"]
    assert "gcloud auth application-default login" in clouds.GCP._APPLICATION_CREDENTIAL_HINT
    assert "gcloud auth application-default login" in hints["gcp"] and "gcloud init" in hints["gcp"]
    assert "GOOGLE_APPLICATION_CREDENTIALS" in hints["gcp"]
    assert kubernetes.DEFAULT_KUBECONFIG_PATH in hints["kubernetes"] and "KUBECONFIG" in hints["kubernetes"]


def test_tail_logs_streams_lines_and_returns_the_exit_code(monkeypatch):
    import sky

    sig = inspect.signature(sky.tail_logs)

    def fake_tail(*args, **kwargs):
        bound = sig.bind(*args, **kwargs).arguments
        print("line one\nline", end="", file=bound["output_stream"])
        print(" two\n", end="", file=bound["output_stream"])
        print("partial", end="", file=bound["output_stream"])
        return 100

    monkeypatch.setattr(sky, "tail_logs", fake_tail)
    lines = []
    assert adapter.SkyBackend().tail_logs("c", 1, True, lines.append) == 100
    assert lines == ["line one", "line two", "partial"]
    jsig = inspect.signature(sky.jobs.tail_logs)
    monkeypatch.setattr(sky.jobs, "tail_logs", lambda *a, **k: (jsig.bind(*a, **k), 0)[1])
    assert adapter.SkyBackend().jobs_tail_logs(3, False, lines.append) == 0


# A two-row catalog snapshot in SkyPilot's v8 layout (RunPod's vms.csv columns from its fetcher),
# so the optimizer runs offline. Run in a fresh interpreter: SkyPilot fixes its catalog directory
# when it is first imported.
_OPTIMIZER_SCRIPT = r'''
import os, sys
home = os.environ["HOME"]
base = os.path.join(home, ".sky/catalogs/v8")
for sub in ("runpod", "common"):
    os.makedirs(os.path.join(base, sub))
gpu = "{'Gpus': [{'Name': 'H100', 'Manufacturer': 'NVIDIA', 'Count': 1.0, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 81920}"
with open(os.path.join(base, "runpod/vms.csv"), "w") as f:
    f.write("InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Region,SpotPrice,Price,AvailabilityZone,GpuInfo\n")
    f.write(f'1x_H100_SECURE,H100,1.0,16.0,188.0,US,1.25,2.39,US-KS-2,"{gpu}"\n')
with open(os.path.join(base, "common/accelerators.csv"), "w") as f:
    f.write('AcceleratorName,Clouds\nH100,"RunPod"\nA100-80GB,"RunPod"\n')
with open(os.path.join(base, "common/metadata.csv"), "w") as f:
    f.write("GPU,MemoryGB,Manufacturer\nH100,80,NVIDIA\nA100-80GB,80,NVIDIA\n")
sys.path.insert(0, os.environ["REPO"])
from pathlib import Path
import sky, sky.check
from sky import clouds, exceptions, optimizer
from launcher.backends import sky as adapter
from sftcore.recipe import load_recipe
from launcher.render import Target, render_task
from tests.launcher.fake_backend import write_recipe
sky.check.get_cached_enabled_clouds_or_refresh = lambda *a, **k: [clouds.RunPod()]
recipe = load_recipe(write_recipe(Path(home) / "r", bucket="gs://sftl-test/runs"))
mount = Path(home) / "recipe.yaml"
mount.write_text("name: demo\n")
def best(target):
    task = adapter._task(render_task(recipe, target, "sftl-demo-abcd", str(mount)))
    return optimizer.Optimizer.optimize(adapter._as_dag(task), quiet=True).tasks[0].best_resources
b = best(Target(cloud="runpod", gpu="H100"))
print("ON_DEMAND", b.cloud, b.instance_type, b.accelerators, b.labels, b.get_cost(3600))
try:
    best(Target(cloud="runpod", gpu="A100-80GB"))
    print("A100 FOUND")
except exceptions.ResourcesUnavailableError:
    print("A100 UNAVAILABLE")
'''


def test_optimizer_dry_run_on_a_catalog_snapshot(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    home = tmp_path / "opt-home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), SKY_RUNTIME_DIR=str(home), SKYPILOT_DISABLE_USAGE_COLLECTION="1",
               REPO=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-c", _OPTIMIZER_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if not line.startswith("<sky-payload>")]
    assert "ON_DEMAND RunPod 1x_H100_SECURE {'H100': 1} {'sftlaunch-run': 'sftl-demo-abcd'} 2.39" in lines
    assert "A100 UNAVAILABLE" in lines  # a GPU the catalog does not offer there: SkyPilot refuses


def test_owner_and_current_user_from_skypilots_own_records(rec, monkeypatch):
    """Ownership compares SkyPilot's owner of a cluster / managed job (StatusResponse.user_hash,
    ManagedJobRecord.user_hash in 0.14.1's schemas) with the user the API server acts for."""
    import sky
    from sky import models
    from sky.client import sdk
    from sky.jobs import utils as jobs_utils
    from sky.jobs.state import ManagedJobStatus
    from sky.schemas.api import responses
    from sky.utils import common_utils
    from sky.utils.status_lib import ClusterStatus

    b = adapter.SkyBackend()
    rec.patch(sky, "status")
    status = responses.StatusResponse.model_construct(
        name="sftl-demo-abcd", status=ClusterStatus.UP, labels={"sftlaunch-run": "sftl-demo-abcd"},
        user_hash="ab12cd34", user_name="alex", launched_at=1)
    rec.returns("req-status", [status])
    (cluster,) = b.status(None)
    assert (cluster.user_hash, cluster.user_name, cluster.run_id) == ("ab12cd34", "alex", "sftl-demo-abcd")

    rec.patch(sky.jobs, "queue_v2")
    job = responses.ManagedJobRecord(job_id=3, job_name="sftl-demo-abcd", status=ManagedJobStatus.RUNNING,
                                     labels=None, user_hash="ab12cd34", user_name="alex")
    rec.returns("req-queue_v2", ([job], 1, {}, 1))
    (queued,) = b.jobs_queue()
    assert (queued.user_hash, queued.labels) == ("ab12cd34", {})
    fields = rec.calls[-2][1]["fields"]
    assert {"user_hash", "user_name", "labels"} <= set(fields)
    assert jobs_utils._update_fields(list(fields))[0]  # SkyPilot's own field check accepts them

    # Behind an auth proxy / with service-account tokens the server's user is the authenticated one.
    health = responses.APIHealthResponse(status="healthy", user=models.User(id="sso-9f8e", name="alex@corp"))
    monkeypatch.setattr(sdk, "api_info", lambda: health)
    assert adapter.SkyBackend().current_user() == "sso-9f8e"
    # Without one, the server takes the client's own user hash as the requester.
    monkeypatch.setattr(sdk, "api_info", lambda: responses.APIHealthResponse(status="healthy"))
    assert adapter.SkyBackend().current_user() == common_utils.get_user_hash()
