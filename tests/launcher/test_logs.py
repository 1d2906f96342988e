"""`sftlaunch logs`: clusters, managed jobs, local runs, and finished runs from the bucket copy."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.runs import Registry
from tests.launcher.fake_backend import installed
from tests.launcher.test_status import launched


@pytest.fixture
def fake(monkeypatch):
    with installed(monkeypatch) as fake:
        yield fake


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
    assert res.exit_code == 0 and reg.get("sftl-demo-cccc")["state"] == "succeeded"


def test_ctrl_c_while_following(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-dddd")
    fake.interrupt_after = 1
    res = logs("sftl-demo-dddd", "-f")
    assert res.exit_code == 130 and "the run keeps going" in res.output
    assert reg.get("sftl-demo-dddd")["state"] == "running"


def _job_writes_its_logs(tmp_path, bucket, run_id, **env):
    """docker/entrypoint.sh `all` as the cluster runs it, with the bucket set: what it leaves in
    `<bucket>/<run id>/` is what `logs` must read. The training/eval/publish jobs are a stub
    (tests/launcher/fake_backend.STUB_PYTHON); the entrypoint, the masking filter and the bucket
    copy (python -m jobs sync) are the real ones."""
    import os
    import subprocess
    from pathlib import Path

    from tests.launcher.fake_backend import stub_job_python

    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: demo\n")
    entry = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"
    full = {**os.environ, "SFTLAUNCH_RECIPE": str(recipe), "SFTLAUNCH_OUT": str(tmp_path / "job-out"),
            "SFTLAUNCH_RUN_ID": run_id, "SFTLAUNCH_BUCKET": str(bucket),
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
    from launcher.lifecycle import bucket_progress

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
