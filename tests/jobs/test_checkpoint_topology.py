"""jobs.checkpoint_topology: a checkpoint resumed on another GPU count. DDP/LoRA checkpoints resume
with grad_accum rescaled to keep the global batch (proved against the Trainer itself: the final
adapter equals an uninterrupted run's), ZeRO checkpoints are refused with one line naming both
topologies and the fix, before DeepSpeed is reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import checkpoint as ck
from jobs import checkpoint_manifest
from jobs import checkpoint_topology as ct
from sftcore.errors import JobFailed
from tests.jobs.test_train_support import build_tiny_model, write_data

REPO = Path(__file__).resolve().parents[2]


def _saved(world, ga=1, ds=None, nodes=1):
    return {"world_size": world, "nodes": nodes, "procs_per_node": world // nodes, "deepspeed": ds,
            "grad_accum": ga, "micro_batch_size": 2}


def test_ddp_resume_rescales_grad_accum_to_keep_the_global_batch(tmp_path):
    ga, note = ct.resume_grad_accum(tmp_path, _saved(2, ga=4), 1, 1, 1, None, 4)
    assert ga == 8 and "grad_accum 4 -> 8" in note
    assert ct.resume_grad_accum(tmp_path, _saved(1, ga=8), 4, 2, 2, None, 4)[0] == 2
    # Back on the saving GPU count: the saved grad_accum (which may itself be a rescaled one).
    assert ct.resume_grad_accum(tmp_path, _saved(4, ga=2), 4, 1, 4, None, 8) == (2, None)
    assert ct.resume_grad_accum(tmp_path, None, 3, 1, 3, None, 4) == (4, None)


def test_ddp_resume_refuses_when_no_whole_grad_accum_keeps_the_global_batch(tmp_path):
    with pytest.raises(JobFailed, match=r"with 3 processes no whole grad_accum keeps it.*divides 4"):
        ct.resume_grad_accum(tmp_path, _saved(2, ga=2), 3, 1, 3, None, 2)


@pytest.mark.parametrize("ds", ["zero2", "zero3", "zero3-offload"])
def test_zero_resume_on_another_world_size_is_refused_with_the_fix(tmp_path, ds):
    from deepspeed.runtime.constants import CHECKPOINT, LOAD_UNIVERSAL_CHECKPOINT

    with pytest.raises(JobFailed) as exc:
        ct.resume_grad_accum(tmp_path, _saved(4, ds=ds, nodes=2), 2, 1, 2, ds, 1)
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"ZeRO-{ct.zero_stage(ds)} optimizer shards of 4 processes (2 node(s) x 2)" in msg
    assert "this run has 2 processes (1 node(s) x 2)" in msg and "Relaunch with 4 GPUs in all" in msg
    # The conversion named is DeepSpeed's own: its module and its config key.
    import deepspeed.checkpoint.ds_to_universal  # noqa: F401

    assert "python -m deepspeed.checkpoint.ds_to_universal" in msg
    assert f'"{CHECKPOINT}": {{"{LOAD_UNIVERSAL_CHECKPOINT}": true}}' in msg
    # The same world size on another node layout is fine: ZeRO partitions by data-parallel rank.
    assert ct.resume_grad_accum(tmp_path, _saved(4, ds=ds, nodes=2), 4, 1, 4, ds, 1) == (1, None)


def test_a_changed_deepspeed_setting_is_refused(tmp_path):
    with pytest.raises(JobFailed, match="saved with train.deepspeed null, this run uses zero2"):
        ct.resume_grad_accum(tmp_path, _saved(1), 1, 1, 1, "zero2", 1)
    with pytest.raises(JobFailed, match="saved with train.deepspeed zero3, this run uses zero2"):
        ct.resume_grad_accum(tmp_path, _saved(2, ds="zero3"), 2, 1, 2, "zero2", 1)
    # zero3 and zero3-offload share the stage-3 checkpoint format.
    assert ct.resume_grad_accum(tmp_path, _saved(2, ds="zero3"), 2, 1, 2, "zero3-offload", 1) == (1, None)


def test_checkpoints_of_earlier_versions_take_their_topology_from_the_manifest(tmp_path):
    step = tmp_path / "step-5"
    step.mkdir()
    for name in ("latest", "trainer_state.json"):
        (step / name).write_text("x")
    checkpoint_manifest.write_manifest(step, 5, checkpoint_manifest.Topology(0, 2, 2))
    assert ct.saved_topology(step, {}, 4, "zero3") == {"world_size": 4, "nodes": 2, "procs_per_node": 2,
                                                       "deepspeed": "zero3", "grad_accum": 4}
    (step / "latest").unlink()
    checkpoint_manifest.write_manifest(step, 5, checkpoint_manifest.Topology(0, 1, 1))
    assert ct.saved_topology(step, {}, 4, None)["deepspeed"] is None
    assert ct.saved_topology(step, {"topology": _saved(2)}, 4, None) == _saved(2)


# -- real jobs: torchrun on CPU (gloo), the Trainer's own resume ---------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("topo")
    build_tiny_model(r / "model")
    write_data(r / "d.jsonl")
    return r


def _job(root, out, nproc: int, **overrides) -> tuple[int, str, float]:
    """The test_train_support job on `nproc` CPU processes (torchrun, gloo); (rc, log, seconds)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "tests.jobs.test_train_support", str(root), str(out), json.dumps(overrides)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - t0


def _adapter(out: Path):
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_lora_under_ddp_resumes_on_another_gpu_count_and_matches_an_uninterrupted_run(root, tmp_path):
    """2 processes x grad_accum 1 for 2 steps, then 1 process (grad_accum rescaled to 2) to step 4
    ends with the adapter of an uninterrupted 1 x 2 run: the Trainer's data skip, optimizer,
    scheduler and loss normalisation all carried over. (The reverse, 1 -> 2, cannot run on CPU:
    the Trainer loads optimizer.pt with map_location=args.device whenever world_size > 1, and on
    CPU that device is cpu:0, which torch.load refuses whatever the checkpoint; the unit tests
    above cover its grad_accum.)"""
    common = {"method": "lora", "micro_batch_size": 2, "learning_rate": 1e-2, "checkpoint_minutes": 60}
    rc, log, _ = _job(root, tmp_path / "ref", 1, max_steps=4, grad_accum=2, **common)
    assert rc == 0, log[-3000:]
    out = tmp_path / "2to1"
    rc, log, _ = _job(root, out, 2, max_steps=2, grad_accum=1, **common)
    assert rc == 0, log[-3000:]
    rc, log, _ = _job(root, out, 1, max_steps=4, grad_accum=1, **common)
    assert rc == 0, log[-3000:]
    assert "grad_accum 1 -> 2 keeps the global batch" in log, log[-3000:]
    ref, got = _adapter(tmp_path / "ref"), _adapter(out)
    assert set(ref) == set(got)
    for name in ref:
        assert (ref[name] - got[name]).abs().max() < 1e-5, name
    state = json.loads((out / "checkpoints" / "step-4" / ck.STATE).read_text())
    assert state["topology"]["world_size"] == 1 and state["topology"]["grad_accum"] == 2


@pytest.mark.slow
def test_zero2_resume_on_another_gpu_count_exits_1_with_the_reason_before_deepspeed(root, tmp_path):
    common = {"deepspeed": "zero2", "micro_batch_size": 2, "grad_accum": 1, "checkpoint_minutes": 60}
    for first, then in ((2, 1), (1, 2)):
        out = tmp_path / f"{first}to{then}"
        rc, log, _ = _job(root, out, first, max_steps=1, **common)
        assert rc == 0, log[-3000:]
        rc, log, took = _job(root, out, then, max_steps=2, **common)
        assert rc == 1, log[-3000:]
        assert (f"failed: checkpoint {out / 'checkpoints' / 'step-1'} holds DeepSpeed ZeRO-2 optimizer shards "
                f"of {first} process") in log, log[-3000:]
        assert "Traceback" not in log.split("failed: checkpoint")[0] and "deepspeed/runtime" not in log
        assert not (out / "checkpoints" / "step-2").exists()
        print(f"zero2 {first} -> {then}: refused in {took:.1f} s (process start to exit)")
