"""jobs.checkpoint_upload: manifests and bucket copies sealed in the background (outside every
collective), manifest last, failures leaving no manifest, pruning that spares the step in flight,
and the job waiting for its uploads at the end (a real training process against a slow bucket)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jobs import checkpoint as ck
from jobs import checkpoint_manifest
from jobs.checkpoint_upload import Uploader
from jobs.resume import resume_point
from sftcore import store
from tests.jobs.test_train_support import build_tiny_model, write_data

REPO = Path(__file__).resolve().parents[2]


def _trainer_save(root: Path, step: int, files=("model.safetensors", "optimizer.pt", "trainer_state.json")) -> Path:
    """A step folder as the collective part of a save leaves it: files, no manifest yet."""
    d = ck.finalize_node(_partial_trainer_dir(root, step, files), root, step)
    assert not (d / checkpoint_manifest.MANIFEST).exists()
    return d


def _partial_trainer_dir(root: Path, step: int, files) -> Path:
    src = root / f"checkpoint-{step}"
    src.mkdir(parents=True)
    for name in files:
        (src / name).write_bytes(os.urandom(256))
    return src


class GatedFs:
    """The bucket's filesystem with put_file held at a gate (or failing at the n-th file); records
    the order of the files put."""

    def __init__(self, fs, fail_at: int | None = None):
        self.fs, self.fail_at = fs, fail_at
        self.gate, self.entered = threading.Event(), threading.Event()
        self.puts: list[str] = []

    def put_file(self, lpath, rpath, **kw):
        self.entered.set()
        assert self.gate.wait(30)
        if self.fail_at is not None and len(self.puts) + 1 == self.fail_at:
            raise OSError("503 Slow Down (connection reset mid-upload)")
        self.fs.put_file(lpath, rpath, **kw)
        self.puts.append(rpath.rsplit("/", 1)[-1])

    def __getattr__(self, name):
        return getattr(self.fs, name)


def _gate_bucket(monkeypatch, **kw) -> GatedFs:
    real = store.filesystem
    gated = GatedFs(real("/")[0], **kw)
    monkeypatch.setattr(store, "filesystem", lambda url: (gated, real(url)[1]))
    return gated


def test_the_upload_runs_in_the_background_and_the_manifest_goes_last(tmp_path, monkeypatch):
    prefix = ck.bucket_prefix(str(tmp_path / "bucket"), "sftl-u-0001")
    gated = _gate_bucket(monkeypatch)
    root = tmp_path / "ckpts"
    up = Uploader(root, prefix, keep=2, topo=checkpoint_manifest.SINGLE)
    _trainer_save(root, 3)
    up.submit(3)
    assert gated.entered.wait(30)  # the thread is mid-upload, held at the gate ...
    assert up.busy() and up.any_busy()  # ... and submit() returned: the caller trains on
    assert checkpoint_manifest.verify(root / "step-3") is None  # the local manifest is written before the upload
    assert ck.remote_state(prefix, 3) == "incomplete"
    gated.gate.set()
    up.finish()
    assert not up.busy() and up.failed == []
    assert gated.puts[-1] == checkpoint_manifest.MANIFEST and len(gated.puts) == 4
    assert ck.remote_complete_steps(prefix) == [3]


def test_a_failure_mid_upload_leaves_no_manifest_and_resume_ignores_the_step(tmp_path, monkeypatch, capsys):
    prefix = ck.bucket_prefix(str(tmp_path / "bucket"), "sftl-u-0002")
    root = tmp_path / "ckpts"
    up = Uploader(root, prefix, keep=2, topo=checkpoint_manifest.SINGLE)
    _trainer_save(root, 2)
    up.submit(2)
    up.finish()
    gated = _gate_bucket(monkeypatch, fail_at=2)
    gated.gate.set()
    _trainer_save(root, 4)
    up.submit(4)
    up.finish()
    assert up.failed == [4]
    assert "checkpoint step 4: upload to" in capsys.readouterr().err
    assert ck.remote_steps(prefix) == [4, 2] and ck.remote_state(prefix, 4) == "incomplete"
    monkeypatch.undo()
    got = resume_point(tmp_path / "fresh", prefix, checkpoint_manifest.SINGLE)  # a new machine: only the bucket
    assert got == tmp_path / "fresh" / "step-2" and checkpoint_manifest.verify(got) is None
    assert ck.remote_steps(prefix) == [2]  # the abandoned partial upload is dropped


def test_prune_never_removes_the_step_being_uploaded(tmp_path, monkeypatch):
    """keep=1 and three older complete steps: while step 7 is mid-upload (as it is for node 1 when
    node 0's thread prunes), pruning keeps it, locally and in the bucket."""
    prefix = ck.bucket_prefix(str(tmp_path / "bucket"), "sftl-u-0003")
    root = tmp_path / "ckpts"
    up = Uploader(root, prefix, keep=1, topo=checkpoint_manifest.SINGLE)
    for s in (1, 2, 3):
        _trainer_save(root, s)
        up.submit(s)
        up.finish()
    assert ck.remote_steps(prefix) == [3] and [s for s, _ in ck.local_steps(root)] == [3]
    gated = _gate_bucket(monkeypatch)
    _trainer_save(root, 7)
    up.submit(7)
    assert gated.entered.wait(30)
    ck.prune(root, 1, prefix)
    assert (root / "step-7").is_dir() and 7 in ck.remote_steps(prefix)
    gated.gate.set()
    up.finish()
    assert ck.remote_complete_steps(prefix) == [7] and [s for s, _ in ck.local_steps(root)] == [7]


def test_without_a_bucket_the_thread_writes_the_manifest_and_prunes(tmp_path):
    root = tmp_path / "ckpts"
    up = Uploader(root, None, keep=1, topo=checkpoint_manifest.SINGLE)
    for s in (1, 2):
        _trainer_save(root, s)
        up.submit(s)
        up.finish()
    assert ck.local_complete_steps(root) == [2] and [s for s, _ in ck.local_steps(root)] == [2]


_SLOW_FS = '''
import os, time
from fsspec.implementations.local import LocalFileSystem


from sftcore import store


class SlowFs(LocalFileSystem):
    """A bucket whose uploads take SLOW_PUT_S per file (logged with times)."""

    def put_file(self, lpath, rpath, **kw):
        time.sleep(float(os.environ["SLOW_PUT_S"]))
        super().put_file(lpath, rpath, **kw)
        print(f"bucket put {rpath.rsplit('/', 2)[-2]}/{rpath.rsplit('/', 1)[-1]}", flush=True)


_filesystem = store.filesystem


def filesystem(uri):
    """The recipe's bucket (a local path under SLOW_BUCKET) through SlowFs; anything else as is."""
    fs, path = _filesystem(uri)
    return (SlowFs(), path) if uri.startswith(os.environ["SLOW_BUCKET"]) else (fs, path)


store.filesystem = filesystem
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("slowbucket")
    build_tiny_model(r / "model")
    write_data(r / "d.jsonl")
    return r


def _slow_job(root, tmp_path, settings: dict, env: dict | None = None) -> tuple[str, list[str], str]:
    """The test_train_support job against a bucket whose uploads take 1 s per file; (log, lines, prefix)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SLOW_FS)
    bucket = str(tmp_path / "bucket")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "SLOW_PUT_S": "1", "SLOW_BUCKET": bucket, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "tests.jobs.test_train_support", str(root), str(tmp_path / "run"),
                           json.dumps({**settings, "bucket": bucket})], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log, log.splitlines(), ck.bucket_prefix(str(tmp_path / "bucket"), settings["run_id"])


def _first(lines: list[str], pattern: str) -> int:
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


@pytest.mark.slow
def test_a_stop_writes_stopped_only_once_its_checkpoint_is_in_the_bucket(root, tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    (control / "stop").write_text("{}")
    settings = {"max_steps": 50, "micro_batch_size": 2, "grad_accum": 1, "checkpoint_minutes": 60,
                "run_id": "sftl-t-5106"}
    log, lines, prefix = _slow_job(root, tmp_path, settings, {"SFTLAUNCH_CONTROL": str(control)})
    stopped = json.loads((tmp_path / "run" / "STOPPED").read_text())
    assert stopped["reason"] == "control" and stopped["step"] == 1
    assert _first(lines, r"^checkpoint step 1 uploaded to ") < _first(lines, r"^training stopped at step 1"), log[-3000:]
    assert ck.remote_complete_steps(prefix) == [1]


@pytest.mark.slow
def test_training_goes_on_while_a_slow_upload_runs_and_the_job_waits_for_it_at_the_end(root, tmp_path):
    """A real training process, a bucket taking 1 s per file: the optimizer steps after the first
    save run while its upload is in flight (the next timer save is skipped, not waited for), the
    final save waits for it, and the process exits only once the last checkpoint is complete."""
    settings = {"max_steps": 6, "micro_batch_size": 2, "grad_accum": 1, "checkpoint_minutes": 0.0001,
                "keep_checkpoints": 2, "run_id": "sftl-t-5105"}
    log, lines, prefix = _slow_job(root, tmp_path, settings)

    def first(pattern: str) -> int:
        return _first(lines, pattern)

    uploaded_1 = first(r"^checkpoint step 1 uploaded to ")
    assert first(r"^step 2/6 ") < uploaded_1 and first(r"^step 3/6 ") < uploaded_1, log[-4000:]
    assert first(r"checkpoint at step 2 skipped: the upload of step 1 is still in flight") < uploaded_1
    assert first(r"waiting for the upload of checkpoint step 1") < uploaded_1 < first(r"^checkpoint saved: .*step-6$")
    assert ck.remote_complete_steps(prefix) == [6, 1]  # the last upload finished before the exit
    puts = [line.split()[-1] for line in lines if line.startswith("bucket put step-6/")]
    assert puts[-1] == "step-6/MANIFEST.json" and len(puts) > 5
