"""jobs.checkpoint: complete-or-nothing checkpoints (manifest last), resume after kill -9 with the
same final weights, bucket round trips (moto S3 server, local path), corrupt ones skipped, pruning."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import checkpoint as ck
from tests.jobs.test_train_support import build_tiny_model, write_data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("ckpt")
    build_tiny_model(r / "model")
    write_data(r / "d.jsonl")
    return r


def _drive(root, out, env=None, **overrides):
    return subprocess.Popen([sys.executable, "-m", "tests.jobs.test_train_support", str(root), str(out),
                             json.dumps(overrides)], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _fake_ckpt(root: Path, step: int) -> Path:
    p = root / f"step-{step}"
    p.mkdir(parents=True)
    (p / "model.safetensors").write_bytes(os.urandom(64))
    (p / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    ck.write_manifest(p, step)
    return p


def test_kill_9_then_restart_resumes_and_matches_an_uninterrupted_run(root, tmp_path):
    settings = {"max_steps": 8, "micro_batch_size": 2, "grad_accum": 1, "learning_rate": 1e-2,
                "checkpoint_minutes": 0.0001, "keep_checkpoints": 2}
    ref = _drive(root, tmp_path / "ref", **settings)
    victim = _drive(root, tmp_path / "run", **settings)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpts.glob("step-*/MANIFEST.json")):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "final").exists()
    done = {int(p.parent.name.split("-")[1]) for p in ckpts.glob("step-*/MANIFEST.json")}
    assert done and max(done) < 8
    again = _drive(root, tmp_path / "run", **settings)
    log, _ = again.communicate(timeout=300)
    assert again.returncode == 0, log
    assert "resuming from checkpoint" in log
    ref_log, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_log
    a, b = _weights(tmp_path / "ref" / "final"), _weights(tmp_path / "run" / "final")
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-4, name
    # Pruned to keep_checkpoints, all complete.
    left = sorted(ckpts.glob("step-*"))
    assert len(left) == 2 and all(ck.verify(p) is None for p in left)


def test_incomplete_and_corrupt_checkpoints_are_skipped_with_a_warning(tmp_path, capsys):
    good = _fake_ckpt(tmp_path, 2)
    corrupt = _fake_ckpt(tmp_path, 4)
    (corrupt / "model.safetensors").write_bytes(b"flipped")
    partial = tmp_path / "step-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert ck.find_resume(tmp_path) == good
    err = capsys.readouterr().err
    assert "step-6: no MANIFEST.json" in err and "step-4: model.safetensors sha256 mismatch" in err


def test_prune_keeps_the_newest_complete(tmp_path):
    for s in (1, 2, 3, 4):
        _fake_ckpt(tmp_path, s)
    ck.prune(tmp_path, keep=2)
    assert [s for s, _ in ck.local_steps(tmp_path)] == [4, 3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ckpts")
    import fsspec

    fsspec.config.conf.clear()
    yield "s3://ckpts"
    server.stop()


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_bucket_round_trip_resumes_on_a_fresh_disk(root, tmp_path, request, kind):
    bucket = request.getfixturevalue("s3") if kind == "s3" else str(tmp_path / "bucket")
    env = {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}
    first = _drive(root, tmp_path / "a", env={**env, "SFTLAUNCH_BUCKET": bucket}, max_steps=2,
                   run_id="sftl-t-b0b0")
    log, _ = first.communicate(timeout=300)
    assert first.returncode == 0, log
    prefix = ck.bucket_prefix(bucket, "sftl-t-b0b0")
    assert ck.remote_steps(prefix) == [2]
    # A new machine: nothing local; the newest complete checkpoint comes from the bucket.
    second = _drive(root, tmp_path / "b", env={**env, "SFTLAUNCH_BUCKET": bucket}, max_steps=4,
                    run_id="sftl-t-b0b0")
    log, _ = second.communicate(timeout=300)
    assert second.returncode == 0, log
    assert "resuming from checkpoint" in log and "step-2" in log
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_incomplete_upload_in_the_bucket_is_skipped(tmp_path, capsys):
    bucket = tmp_path / "bucket"
    good = _fake_ckpt(tmp_path / "src", 2)
    prefix = ck.bucket_prefix(str(bucket), "sftl-x-0000")
    ck.upload(good, prefix)
    half = _fake_ckpt(tmp_path / "src", 5)
    ck.upload(half, prefix)
    (bucket / "sftl-x-0000" / "checkpoints" / "step-5" / "MANIFEST.json").unlink()
    got = ck.find_resume(tmp_path / "fresh", str(bucket), "sftl-x-0000")
    assert got == tmp_path / "fresh" / "step-2" and ck.verify(got) is None
    assert "step-5: no MANIFEST.json in the bucket" in capsys.readouterr().err
