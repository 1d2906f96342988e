"""Ranks and collectives for the job's processes (torchrun / accelerate); no-ops in one process.

Why a module of its own: the training loop and its callbacks (jobs.train, jobs.callbacks) both
make decisions that every rank must share (rank 0's clock, a save some ranks skip deadlocks
DeepSpeed/DDP), and print only on rank 0. torch is imported only when a process group exists.
"""

from __future__ import annotations

import os


def log(msg: str) -> None:
    if rank() == 0:
        print(msg, flush=True)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_dist(deepspeed: bool = False) -> None:
    """Join the process group torchrun/accelerate set up, before the Trainer does; with
    `deepspeed`, DeepSpeed's own communication layer too.

    Why DeepSpeed's: deepspeed.zero.Init (a ZeRO-3 from_pretrained) sizes its config with
    deepspeed.comm's world size before it initializes anything itself, and reads 1 when that layer
    is not up. On GPUs the TrainingArguments' device set-up brings it up; on CPU (use_cpu)
    accelerate skips it, so it is done here, reusing the torch process group."""
    if world_size() <= 1:
        return
    if _dist() is None:
        from accelerate import PartialState

        PartialState()
    if deepspeed:
        from deepspeed import comm

        if not comm.is_initialized():
            import deepspeed as ds

            ds.init_distributed(auto_mpi_discovery=False)


def broadcast_flags(*flags: bool) -> list[bool]:
    """Rank 0's decisions for everyone: clocks differ per rank, and a save that only some ranks
    enter deadlocks DeepSpeed/DDP."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return list(flags)
    import torch

    t = torch.tensor([int(f) for f in flags], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.cpu().tolist()]


def gather(obj) -> list:
    dist = _dist()
    if dist is None:
        return [obj]
    box = [None] * dist.get_world_size()
    dist.all_gather_object(box, obj)
    return box


def broadcast(obj):
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def shutdown() -> None:
    """Every rank done, leave the process group: a process that reaches interpreter teardown with
    gloo's worker threads still up can die there with SIGABRT ("terminate called without an active
    exception", pytorch/pytorch#190489), turning a finished run into a failed one. torch asks every
    program to call destroy_process_group before it exits."""
    dist = _dist()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
