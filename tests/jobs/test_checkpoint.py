"""jobs.checkpoint: complete-or-nothing checkpoints (manifests last), resume after kill -9 with the
same final weights, bucket round trips (moto S3 server, local path), corrupt ones skipped, pruning,
and ZeRO-3 on two loopback nodes with separate disks resuming through per-node manifests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import checkpoint as ck
from jobs import checkpoint_manifest
from jobs.resume import resume_point
from sftcore import store
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
    checkpoint_manifest.write_manifest(p, step)
    return p


@pytest.mark.slow
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
    assert len(left) == 2 and all(checkpoint_manifest.verify(p) is None for p in left)


def test_incomplete_and_corrupt_checkpoints_are_skipped_with_a_warning(tmp_path, capsys):
    good = _fake_ckpt(tmp_path, 2)
    corrupt = _fake_ckpt(tmp_path, 4)
    (corrupt / "model.safetensors").write_bytes(b"flipped")
    partial = tmp_path / "step-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert resume_point(tmp_path, None, checkpoint_manifest.SINGLE) == good
    err = capsys.readouterr().err
    assert "step-6: no MANIFEST.json" in err and "step-4: model.safetensors sha256 mismatch" in err


def test_prune_keeps_the_newest_complete(tmp_path):
    for s in (1, 2, 3, 4):
        _fake_ckpt(tmp_path, s)
    ck.prune(tmp_path, keep=2)
    assert [s for s, _ in ck.local_steps(tmp_path)] == [4, 3]


def _partial(folder: Path, files=("model.safetensors",)) -> Path:
    """What a kill during a save leaves: some files, no manifest."""
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"half")
    return folder


def test_partial_folders_are_pruned_once_a_newer_complete_checkpoint_exists(tmp_path):
    _fake_ckpt(tmp_path, 2)
    partial_step = _partial(tmp_path / "step-3")
    trainer_dir = _partial(tmp_path / "checkpoint-4", ("model.safetensors", "optimizer.pt"))
    download = _partial(tmp_path / ".download-step-1.node-0")
    ck.prune(tmp_path, keep=2)
    # The newest complete checkpoint is step 2: nothing newer is proven stale yet.
    assert partial_step.is_dir() and trainer_dir.is_dir() and not download.exists()
    _fake_ckpt(tmp_path, 5)
    removed = ck.prune(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["checkpoint-4", "step-3"]
    assert [s for s, _ in ck.local_steps(tmp_path)] == [5, 2] and ck.local_leftovers(tmp_path) == []


def test_prune_touches_only_this_runs_step_and_leftover_folders(tmp_path):
    outside = tmp_path / "elsewhere"
    _partial(outside)
    root = tmp_path / "checkpoints"
    for name in ("notes", "step-x", "checkpoint-abc", "checkpoint-1.bak"):
        _partial(root / name)
    (root / "checkpoint-1").symlink_to(outside)  # a link: never followed, never removed
    (root / "step-1.txt").write_text("mine")
    _fake_ckpt(root, 2)
    _fake_ckpt(root, 3)
    ck.prune(root, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-1", "checkpoint-1.bak", "checkpoint-abc", "notes",
                                                      "step-1.txt", "step-3", "step-x"]
    assert (outside / "model.safetensors").is_file()


def _upload_partial(prefix: str, step: int, tmp: Path) -> Path:
    src = _fake_ckpt(tmp / f"src-{step}", step)
    ck.upload(src, prefix)
    remote = Path(prefix) / f"step-{step}"
    (remote / checkpoint_manifest.MANIFEST).unlink()
    return remote


def test_incomplete_uploads_in_the_bucket_are_pruned_once_a_newer_complete_one_exists(tmp_path):
    prefix = ck.bucket_prefix(str(tmp_path / "bucket"), "sftl-x-0000")
    ck.upload(_fake_ckpt(tmp_path / "a", 2), prefix)
    _upload_partial(prefix, 3, tmp_path)
    newer = _upload_partial(prefix, 9, tmp_path)  # newer than anything complete: not proven stale
    local = tmp_path / "local"
    ck.upload(_fake_ckpt(local, 5), prefix)
    ck.prune(local, keep=2, prefix=prefix)
    assert ck.remote_steps(prefix) == [9, 5, 2] and newer.is_dir()
    assert [ck.remote_state(prefix, s) for s in (9, 5, 2)] == ["incomplete", "complete", "complete"]


def test_a_bucket_step_that_cannot_be_listed_is_never_pruned(tmp_path, monkeypatch):
    """A listing that fails for a moment must not make a complete checkpoint look partial."""
    prefix = ck.bucket_prefix(str(tmp_path / "bucket"), "sftl-x-0000")
    for s in (1, 2, 3):
        ck.upload(_fake_ckpt(tmp_path / "src", s), prefix)
    real_fs = store.filesystem

    class Flaky:
        def __init__(self, fs):
            self.fs = fs

        def ls(self, path, **kw):
            if path.rstrip("/").endswith("step-1"):
                raise OSError("503 Service Unavailable")
            return self.fs.ls(path, **kw)

        def __getattr__(self, name):
            return getattr(self.fs, name)

    monkeypatch.setattr(store, "filesystem", lambda url: (Flaky(real_fs(url)[0]), real_fs(url)[1]))
    assert ck.remote_state(prefix, 1) == "unknown"
    ck.prune(tmp_path / "src", keep=1, prefix=prefix)
    assert ck.remote_steps(prefix) == [3, 1]  # step 2 was old and complete: pruned; step 1 unknown: kept


def test_resume_drops_the_abandoned_attempts_partial_uploads(tmp_path, capsys):
    bucket = tmp_path / "bucket"
    prefix = ck.bucket_prefix(str(bucket), "sftl-x-0000")
    ck.upload(_fake_ckpt(tmp_path / "src", 2), prefix)
    _upload_partial(prefix, 5, tmp_path)
    leftover = _partial(tmp_path / "fresh" / "checkpoint-6")
    got = resume_point(tmp_path / "fresh", prefix, checkpoint_manifest.SINGLE)
    assert got == tmp_path / "fresh" / "step-2"
    assert ck.remote_steps(prefix) == [2] and not leftover.exists()
    assert "step-5: no MANIFEST.json in the bucket" in capsys.readouterr().err


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_nothing_behind_after_the_resumed_run(root, tmp_path):
    """The state a kill during a save leaves (the Trainer's checkpoint-N half written, a step
    folder without its manifest in the bucket, a download cut short), then the real job resumes:
    the resumed run's own checkpoints are complete and no partial folder is left, local or remote."""
    bucket = tmp_path / "bucket"
    settings = {"micro_batch_size": 2, "grad_accum": 1, "checkpoint_minutes": 0.0001, "keep_checkpoints": 2,
                "run_id": "sftl-t-c1c1", "bucket": str(bucket)}
    first = _drive(root, tmp_path / "run", max_steps=2, **settings)
    log, _ = first.communicate(timeout=300)
    assert first.returncode == 0, log
    ckpts, prefix = tmp_path / "run" / "checkpoints", ck.bucket_prefix(str(bucket), "sftl-t-c1c1")
    assert ck.remote_complete_steps(prefix) == [2, 1]
    _partial(ckpts / "checkpoint-3", ("model.safetensors", "rng_state.pth"))
    _partial(ckpts / ".download-step-1.node-0")
    stale = _partial(Path(prefix) / "step-3", ("model.safetensors", "stale-from-the-killed-attempt.bin"))
    again = _drive(root, tmp_path / "run", max_steps=4, **settings)
    log, _ = again.communicate(timeout=300)
    assert again.returncode == 0, log
    assert "resuming from checkpoint" in log and "step-2" in log
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-3", "step-4"]
    assert all(checkpoint_manifest.verify(p) is None for p in ckpts.iterdir())
    assert ck.remote_steps(prefix) == [4, 3] and ck.remote_complete_steps(prefix) == [4, 3]
    assert not (stale / "stale-from-the-killed-attempt.bin").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["s3", "local"])
def test_bucket_round_trip_resumes_on_a_fresh_disk(root, tmp_path, request, kind):
    bucket = request.getfixturevalue("s3") if kind == "s3" else str(tmp_path / "bucket")
    env = {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}
    first = _drive(root, tmp_path / "a", env=env, max_steps=2, run_id="sftl-t-b0b0", bucket=bucket)
    log, _ = first.communicate(timeout=300)
    assert first.returncode == 0, log
    prefix = ck.bucket_prefix(bucket, "sftl-t-b0b0")
    assert ck.remote_steps(prefix) == [2]
    # A new machine: nothing local; the newest complete checkpoint comes from the bucket.
    second = _drive(root, tmp_path / "b", env=env, max_steps=4, run_id="sftl-t-b0b0", bucket=bucket)
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
    got = resume_point(tmp_path / "fresh", prefix, checkpoint_manifest.SINGLE)
    assert got == tmp_path / "fresh" / "step-2" and checkpoint_manifest.verify(got) is None
    assert "step-5: no MANIFEST.json in the bucket" in capsys.readouterr().err


def _node(root, out, rank: int, port: int, bucket: Path, **overrides):
    """One of two loopback "nodes": torchrun with one gloo process, its own output dir."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "TORCHELASTIC_RENDEZVOUS_TIMEOUT": "120"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--master_addr", "127.0.0.1", "--master_port", str(port), "--nproc_per_node", "1",
         "-m", "tests.jobs.test_train_support", str(root), str(out), json.dumps({**overrides, "bucket": str(bucket)})],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_nodes(root, outs, bucket, **overrides) -> list[str]:
    port = _free_port()
    procs = [_node(root, outs[k], k, port, bucket, **overrides) for k in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    return logs


@pytest.mark.slow
def test_zero3_on_two_nodes_without_a_shared_disk_resumes_from_the_bucket(root, tmp_path):
    """Each node holds only its own ZeRO-3 shards and RNG state; both nodes' files reach the
    bucket under per-node manifests, and a node with an empty disk resumes from there."""
    settings = {"deepspeed": "zero3", "micro_batch_size": 2, "grad_accum": 1, "checkpoint_minutes": 0.0001,
                "keep_checkpoints": 2, "run_id": "sftl-t-2n2n"}
    outs, bucket = [tmp_path / "node0", tmp_path / "node1"], tmp_path / "bucket"
    _two_nodes(root, outs, bucket, max_steps=2, **settings)
    prefix = ck.bucket_prefix(str(bucket), "sftl-t-2n2n")
    assert ck.remote_complete_steps(prefix) == [2, 1]
    manifests = ck.remote_manifests(prefix, 2)
    assert sorted(manifests) == [0, 1] and {m["nodes"] for m in manifests.values()} == {2}
    node1 = set(manifests[1]["files"])
    assert "rng_state_1.pth" in node1 and any("zero_pp_rank_1_" in f for f in node1)
    assert not any("zero_pp_rank_0_" in f or f == "trainer_state.json" for f in node1)
    assert {"trainer_state.json", "latest", "rng_state_0.pth"} <= set(manifests[0]["files"])
    local0 = {p.relative_to(outs[0] / "checkpoints" / "step-2").as_posix()
              for p in (outs[0] / "checkpoints" / "step-2").rglob("*")}
    assert not any("zero_pp_rank_1_" in f for f in local0)  # no shared disk: node 1's shards are not here
    # Node 1 comes back on a fresh disk; node 0 keeps its own (incomplete without node 1's manifest).
    shutil.rmtree(outs[1])
    logs = _two_nodes(root, outs, bucket, max_steps=4, **settings)
    for k in (0, 1):
        assert f"node {k}: resuming from checkpoint {outs[k] / 'checkpoints' / 'step-2'}" in logs[k], logs[k][-3000:]
        mine = {p.name for p in (outs[k] / "checkpoints" / "step-4").rglob("*")}
        assert f"rng_state_{k}.pth" in mine and any(f"zero_pp_rank_{k}_" in n for n in mine)
    state = json.loads((outs[0] / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert ck.remote_complete_steps(prefix) == [4, 3]  # pruned to keep_checkpoints, all complete
    steps = [json.loads(line)["step"] for line in (outs[0] / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_per_node_manifests_split_files_by_rank_and_nodes_fetch_only_what_they_need(tmp_path):
    step = tmp_path / "disk" / "step-3"
    names = ["trainer_state.json", "latest", "model.safetensors", "rng_state_0.pth", "rng_state_1.pth",
             "global_step3/zero_pp_rank_0_mp_rank_00_model_states.pt",
             "global_step3/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
             "global_step3/zero_pp_rank_1_mp_rank_00_model_states.pt",
             "global_step3/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    for name in names:
        (step / name).parent.mkdir(parents=True, exist_ok=True)
        (step / name).write_bytes(os.urandom(32))
    n0, n1 = checkpoint_manifest.Topology(0, 2, 1), checkpoint_manifest.Topology(1, 2, 1)
    assert checkpoint_manifest.Topology.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}) == checkpoint_manifest.Topology(1, 2, 2)
    m0 = checkpoint_manifest.write_manifest(step, 3, n0)
    assert set(m0["files"]) == set(names[:4] + names[5:7])  # shared files + rank 0's
    assert "MANIFEST.node-1.json" in checkpoint_manifest.verify(step, n0)  # node 1 has not finished yet
    m1 = checkpoint_manifest.write_manifest(step, 3, n1)
    assert set(m1["files"]) == {"rng_state_1.pth", "global_step3/zero_pp_rank_1_mp_rank_00_model_states.pt",
                                "global_step3/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    assert checkpoint_manifest.verify(step, n0) is None and checkpoint_manifest.verify(step, n1) is None
    bucket = tmp_path / "bucket"
    prefix = ck.bucket_prefix(str(bucket), "sftl-n-0001")
    ck.upload(step, prefix, n0)
    assert ck.remote_complete_steps(prefix) == []  # node 1's manifest is not in the bucket yet
    ck.upload(step, prefix, n1)
    assert ck.remote_complete_steps(prefix) == [3]
    got = ck.materialize(prefix, 3, tmp_path / "fresh1", n1)
    have = {p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file() and "MANIFEST" not in p.name}
    assert have == {"trainer_state.json", "latest", "model.safetensors"} | set(m1["files"])
    assert checkpoint_manifest.verify(got, n1) is None and "missing" in checkpoint_manifest.verify(got, n0)


_RESUME_SCRIPT = """
import json, os, sys
from pathlib import Path
os.environ["LOCAL_WORLD_SIZE"], os.environ["LOCAL_RANK"] = "1", "0"  # each process plays one node
import torch.distributed as dist
from jobs.checkpoint_manifest import Topology
from jobs.resume import resume_point
dist.init_process_group("gloo")
roots, prefix, out = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
rank = dist.get_rank()
got = resume_point(Path(roots[rank]), prefix or None, Topology.from_env())
files = sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) if got else None
(out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "path": str(got) if got else None, "files": files}))
dist.destroy_process_group()
"""


def _resume_on_two_nodes(tmp_path, roots, prefix) -> dict:
    script, out = tmp_path / "resume.py", tmp_path / "results"
    script.write_text(_RESUME_SCRIPT)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), json.dumps([str(r) for r in roots]), prefix or "", str(out)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {k: json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)}


def _node_step(root: Path, step: int, node: int, names: list[str]) -> None:
    d = root / f"step-{step}"
    for name in names:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(os.urandom(16))
    checkpoint_manifest.write_manifest(d, step, checkpoint_manifest.Topology(node, 2, 1))


@pytest.mark.slow
def test_resume_point_agrees_across_nodes_with_and_without_a_shared_disk(tmp_path):
    shared = ["trainer_state.json", "latest", "model.safetensors"]
    # Separate disks, the bucket holds step 4; node 1 also finished step 6 locally, node 0 did not.
    a, b, bucket = tmp_path / "a", tmp_path / "b", tmp_path / "bucket"
    prefix = ck.bucket_prefix(str(bucket), "sftl-r-0001")
    _node_step(a, 4, 0, shared + ["rng_state_0.pth"])
    _node_step(b, 4, 1, ["rng_state_1.pth"])
    ck.upload(a / "step-4", prefix, checkpoint_manifest.Topology(0, 2, 1))
    ck.upload(b / "step-4", prefix, checkpoint_manifest.Topology(1, 2, 1))
    _node_step(b, 6, 1, ["rng_state_1.pth"])
    got = _resume_on_two_nodes(tmp_path, [a, b], prefix)
    assert got[0]["path"] == str(a / "step-4")
    assert got[1]["path"] == str(b / "step-4")
    assert "rng_state_1.pth" not in got[0]["files"] and "rng_state_0.pth" not in got[1]["files"]
    assert set(shared) <= set(got[1]["files"])  # node 1 fetched the shared files from the bucket
    assert not (b / "step-6").exists()  # newer than the common step: an abandoned attempt
    # One disk for both nodes, no bucket: found where it is, nothing downloaded.
    c = tmp_path / "shared"
    _node_step(c, 8, 0, shared + ["rng_state_0.pth"])
    _node_step(c, 8, 1, ["rng_state_1.pth"])
    got = _resume_on_two_nodes(tmp_path, [c, c], None)
    assert got[0]["path"] == got[1]["path"] == str(c / "step-8")
    assert {"rng_state_0.pth", "rng_state_1.pth", "MANIFEST.node-1.json"} <= set(got[0]["files"])
    # One disk, the local copy lacks node 1's part but the bucket has it: node 0 alone fetches
    # what both nodes need (two nodes renaming one folder would race).
    f, src = tmp_path / "shared2", tmp_path / "elsewhere"
    _node_step(src, 10, 0, shared + ["rng_state_0.pth"])
    _node_step(src, 10, 1, ["rng_state_1.pth"])
    for node in (0, 1):
        ck.upload(src / "step-10", prefix, checkpoint_manifest.Topology(node, 2, 1))
    shutil.copytree(src / "step-10", f / "step-10", ignore=shutil.ignore_patterns("*node-1*", "rng_state_1.pth"))
    got = _resume_on_two_nodes(tmp_path, [f, f], prefix)
    assert got[0]["path"] == got[1]["path"] == str(f / "step-10")
    assert checkpoint_manifest.verify(f / "step-10", checkpoint_manifest.EveryRank(0, 2, 1)) is None
    # Nothing both nodes can load: start fresh everywhere.
    d, e = tmp_path / "d", tmp_path / "e"
    _node_step(d, 2, 0, shared + ["rng_state_0.pth"])
    assert _resume_on_two_nodes(tmp_path, [d, e], None) == {0: {"rank": 0, "path": None, "files": None},
                                                            1: {"rank": 1, "path": None, "files": None}}
