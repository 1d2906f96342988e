"""`sftlaunch logs`: clusters, managed jobs, local runs, and finished runs from the bucket copy."""

from __future__ import annotations

from click.testing import CliRunner

from launcher.cli import cli
from launcher.runs import Registry
from tests.launcher.fake_backend import launched


def logs(*args):
    return CliRunner().invoke(cli, ["logs", *args])


def test_cluster_and_managed_job_logs(fake, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value-123")
    fake.log_lines = ["hello from the cluster", "key wandb-secret-value-123"]
    reg = Registry()
    launched(fake, reg, "sftl-demo-aaaa")
    launched(fake, reg, "sftl-demo-bbbb", kind="managed")
    res = logs("sftl-demo-aaaa")
    assert res.exit_code == 0 and "hello from the cluster" in res.output
    assert "wandb-secret-value-123" not in res.output
    assert ("tail_logs", "sftl-demo-aaaa", 1) in fake.calls
    assert logs("sftl-demo-bbbb").exit_code == 0 and ("jobs_tail_logs", 1) in fake.calls


def test_follow_to_the_end_records_it(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-cccc")
    res = logs("sftl-demo-cccc", "--follow")
    assert res.exit_code == 0 and reg.get("sftl-demo-cccc").state == "succeeded"


def test_ctrl_c_while_following(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-dddd")
    fake.interrupt_after = 1
    res = logs("sftl-demo-dddd", "-f")
    assert res.exit_code == 130 and "the run keeps going" in res.output
    assert reg.get("sftl-demo-dddd").state == "running"


def _job_writes_its_logs(tmp_path, bucket, run_id, **env):
    """docker/entrypoint.sh `all` as the cluster runs it, with the bucket set: what it leaves in
    `<bucket>/<run id>/` is what `logs` must read. The training/eval/publish jobs are a stub
    (tests/launcher/fake_backend.STUB_PYTHON); the entrypoint, the masking filter and the bucket
    copy (python -m jobs sync) are the real ones."""
    import os
    import subprocess
    from pathlib import Path

    from tests.launcher.fake_backend import STUB_RECIPE_YAML, stub_job_python

    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(STUB_RECIPE_YAML + f"output: {{bucket: {bucket}}}\n")  # the job's bucket
    entry = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"
    full = {**os.environ, "SFTLAUNCH_RECIPE": str(recipe), "SFTLAUNCH_OUT": str(tmp_path / "job-out"),
            "SFTLAUNCH_RUN_ID": run_id,
            "SFTLAUNCH_PYTHON": stub_job_python(tmp_path / "bin"), **env}
    proc = subprocess.run(["bash", str(entry), "all"], env=full, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_finished_run_reads_the_bucket_copy_the_job_wrote(fake, tmp_path):
    canary = "hf_CANARYlogsBUCKET0123456789abcdef"
    reg = Registry()
    bucket = tmp_path / "bucket"
    launched(fake, reg, "sftl-demo-eeee", bucket=str(bucket))
    _job_writes_its_logs(tmp_path, bucket, "sftl-demo-eeee", HF_TOKEN=canary)
    copied = sorted(p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file())
    assert copied == [f"sftl-demo-eeee/{n}" for n in
                      ("exit.json", "logs/eval.log", "logs/publish.log", "logs/train.log", "metrics.jsonl")]
    for f in bucket.rglob("*"):
        assert not f.is_file() or canary not in f.read_text(), f
    fake.down("sftl-demo-eeee")
    reg.set_state("sftl-demo-eeee", "succeeded")
    res = logs("sftl-demo-eeee")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "step 2/2 loss 1.0 debug token=****" in out and canary not in out
    assert out.index("step 2/2") < out.index("eval: tiny_mc") < out.index("publish: model card")  # step order
    # A cluster run still recorded as active but already gone also falls back to the copy, and
    # status reads its progress from the copied metrics.jsonl.
    launched(fake, reg, "sftl-demo-ffff", bucket=str(bucket))
    _job_writes_its_logs(tmp_path / "second", bucket, "sftl-demo-ffff")
    fake.down("sftl-demo-ffff")
    assert "publish: model card written" in logs("sftl-demo-ffff").output
    from launcher.run_outputs import bucket_progress

    assert bucket_progress(reg.get("sftl-demo-ffff")) == (2, 2)


def test_managed_run_without_a_jobs_controller_reads_the_bucket_copy(fake, tmp_path):
    reg = Registry()
    bucket = tmp_path / "bucket"
    launched(fake, reg, "sftl-demo-hhhh", kind="managed", bucket=str(bucket))
    _job_writes_its_logs(tmp_path, bucket, "sftl-demo-hhhh")
    fake.controller_up = False  # SkyPilot raises ClusterNotUpError: the adapter says Unavailable
    res = logs("sftl-demo-hhhh")
    assert res.exit_code == 0, res.output
    assert "step 2/2 loss 1.0" in res.output and "publish: model card written" in res.output
    res = logs("sftl-demo-hhhh", "--follow")
    assert res.exit_code == 0 and "eval: tiny_mc 0.9" in res.output


def test_finished_run_without_bucket_says_why(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-gggg")
    fake.down("sftl-demo-gggg")
    reg.set_state("sftl-demo-gggg", "succeeded")
    res = logs("sftl-demo-gggg")
    assert res.exit_code == 2 and "no output.bucket" in res.output
    assert logs("sftl-nope").exit_code == 2


def _read_only(monkeypatch, *paths):
    """What a user on a read-only home sees: nothing under `paths` can be written (os.access and
    writes; root would write through permissions, so both are made to say no)."""
    import builtins
    import os

    real_access, real_open = os.access, builtins.open
    roots = tuple(str(p) for p in paths)

    def access(p, mode, *a, **k):
        return False if mode & os.W_OK and str(p).startswith(roots) else real_access(p, mode, *a, **k)

    def guarded_open(file, mode="r", *a, **k):
        if any(m in mode for m in "wax+") and str(file).startswith(roots):
            raise OSError(30, "Read-only file system", str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(builtins, "open", guarded_open)


def test_logs_on_a_read_only_home_reads_without_writing(fake, tmp_path, monkeypatch):
    """`logs` on a read-only HOME. A local run's log is read without a write; a
    cluster's, where SkyPilot's client cannot write ~/.sky, is one line saying why."""
    import errno

    from launcher.runs import Registry, sftlaunch_home

    reg = Registry()
    d = tmp_path / "run"
    d.mkdir()
    (d / "run.log").write_text("local line\n")
    (d / "exit_code").write_text("0\n")
    reg.create("sftl-ro-0a0a", {"name": "ro"}, state="running", backend="local", local_dir=str(d), cloud="local",
               usd_per_hour=0.0, pid=None)
    launched(fake, reg, "sftl-demo-0ddd")
    reg.close()
    _read_only(monkeypatch, sftlaunch_home(), tmp_path)
    res = logs("sftl-ro-0a0a", "--follow")
    assert res.exit_code == 0 and "local line" in res.output, res.output

    def no_sky_home(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".sky"))

    monkeypatch.setattr(fake, "tail_logs", no_sky_home)
    res = logs("sftl-demo-0ddd")
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "a read-only home" in res.output and "Traceback" not in res.output, res.output
