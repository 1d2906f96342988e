"""`sftlaunch logs`: clusters, managed jobs, local runs, and finished runs from the bucket copy."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from launcher.backends import sky as sky_backend
from launcher.cli import cli
from launcher.runs import Registry
from tests.launcher.fake_backend import FakeSky
from tests.launcher.test_status import launched


@pytest.fixture
def fake(monkeypatch):
    fake = FakeSky()
    monkeypatch.setattr(sky_backend, "_backend_factory", lambda: fake)
    return fake


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


def test_finished_run_reads_the_bucket_copy(fake, tmp_path):
    reg = Registry()
    bucket = tmp_path / "bucket"
    launched(fake, reg, "sftl-demo-eeee", bucket=str(bucket))
    logdir = bucket / "sftl-demo-eeee" / "logs"
    logdir.mkdir(parents=True)
    (logdir / "1-train.log").write_text("train line\n")
    (logdir / "2-eval.log").write_text("eval line\n")
    fake.down("sftl-demo-eeee")
    reg.set_state("sftl-demo-eeee", "succeeded")
    res = logs("sftl-demo-eeee")
    assert res.exit_code == 0, res.output
    assert res.output.index("train line") < res.output.index("eval line")
    # A cluster run still recorded as active but already gone also falls back to the copy.
    launched(fake, reg, "sftl-demo-ffff", bucket=str(bucket))
    (bucket / "sftl-demo-ffff" / "logs").mkdir(parents=True)
    (bucket / "sftl-demo-ffff" / "logs" / "run.log").write_text("copied\n")
    fake.down("sftl-demo-ffff")
    assert "copied" in logs("sftl-demo-ffff").output


def test_finished_run_without_bucket_says_why(fake):
    reg = Registry()
    launched(fake, reg, "sftl-demo-gggg")
    fake.down("sftl-demo-gggg")
    reg.set_state("sftl-demo-gggg", "succeeded")
    res = logs("sftl-demo-gggg")
    assert res.exit_code == 2 and "no output.bucket" in res.output
    assert logs("sftl-nope").exit_code == 2
