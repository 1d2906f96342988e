"""Resuming on another GPU count: what carries over, what is refused (before DeepSpeed or the
Trainer could fail on it, or silently train on the wrong samples).

Each checkpoint records the topology that saved it (sftlaunch_state.json "topology": world size,
nodes, processes per node, train.deepspeed, grad_accum, micro_batch_size). What depends on the
world size, read from transformers' Trainer (5.x):

- The data position. `_init_training_state` turns `global_step` into batches to skip on each rank
  (`global_step % num_update_steps_per_epoch * gradient_accumulation_steps`), and accelerate's
  seedable sampler shuffles once for all ranks, then deals batches round-robin to the ranks. So a
  resume lands on the right samples exactly when micro_batch_size x grad_accum x world size (the
  global batch) is unchanged. Plain DDP / LoRA / QLoRA checkpoints keep full optimizer state, so
  on another GPU count grad_accum is rescaled to keep the global batch (2 GPUs x 4 -> 1 x 8), which
  also keeps the loss normalisation and the learning-rate schedule; when it cannot be kept (no
  integer grad_accum) the resume is refused.
- RNG states. `_load_rng_state` reads rng_state_<process index>.pth (rng_state.pth on one
  process) and only logs when it is missing: on another GPU count the per-rank RNG (dropout) is
  not restored, which the log says; the data order does not depend on it.
- DeepSpeed ZeRO shards the optimizer state by data-parallel rank; DeepSpeed itself refuses a
  different world size deep inside engine.load_checkpoint. We refuse first, saying what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs.checkpoint_manifest import local_manifests

DS_CONFIGS = Path(__file__).resolve().parent.parent / "docker" / "deepspeed"


def zero_stage(name: str | None) -> int | None:
    """ZeRO stage of a train.deepspeed config name (None: plain DDP)."""
    if not name:
        return None
    try:
        return int(json.loads((DS_CONFIGS / f"{name}.json").read_text())["zero_optimization"]["stage"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def saved_topology(resume: Path, state: dict, grad_accum: int, deepspeed: str | None) -> dict | None:
    """The topology a checkpoint was saved with: its state file, or for checkpoints of earlier
    versions the node manifest (nodes x processes per node) and its files (DeepSpeed's `latest`:
    taken as this run's config, the name is not recorded) with the recipe's grad_accum (earlier
    versions never changed it). None when unknown."""
    topo = state.get("topology")
    if isinstance(topo, dict) and isinstance(topo.get("world_size"), int):
        return topo
    head = local_manifests(resume).get(0)
    if not head:
        return None
    nodes, ppn = int(head.get("nodes", 1)), int(head.get("procs_per_node", 1))
    ds = "latest" in head.get("files", {})
    return {"world_size": nodes * ppn, "nodes": nodes, "procs_per_node": ppn,
            "deepspeed": (deepspeed or "unknown") if ds else None, "grad_accum": grad_accum}


def _where(t: dict) -> str:
    gpus = t["world_size"]
    return f"{gpus} process{'es' if gpus != 1 else ''} ({t.get('nodes', 1)} node(s) x {t.get('procs_per_node', gpus)})"


def resume_grad_accum(resume: Path, saved: dict | None, world: int, nodes: int, procs_per_node: int,
                      deepspeed: str | None, grad_accum: int) -> tuple[int, str | None]:
    """(grad_accum to train with, a line to log or None); raises JobFailed when the checkpoint
    cannot be resumed on this topology. Every rank decides the same from the same files."""
    from sftcore.errors import JobFailed

    if saved is None:
        return grad_accum, None
    now = {"world_size": world, "nodes": nodes, "procs_per_node": procs_per_node}
    s_ds = saved.get("deepspeed")
    s_stage = -1 if s_ds and zero_stage(s_ds) is None else zero_stage(s_ds)  # -1: a config we do not know
    if s_ds != deepspeed and s_stage != zero_stage(deepspeed):
        raise JobFailed(
            f"checkpoint {resume} was saved with train.deepspeed {s_ds or 'null'}, this run uses "
            f"{deepspeed or 'null'}: their optimizer states are not interchangeable. Relaunch with "
            f"train.deepspeed {s_ds or 'null'}, or start a new run (a new run id).")
    s_world = int(saved["world_size"])
    s_ga = int(saved.get("grad_accum") or grad_accum)
    if s_world == world:
        return s_ga, None
    if deepspeed:
        raise JobFailed(
            f"checkpoint {resume} holds DeepSpeed ZeRO{f'-{s_stage}' if s_stage and s_stage > 0 else ''} optimizer shards of {_where(saved)}; this run "
            f"has {_where(now)} and ZeRO cannot re-partition them. Relaunch with {s_world} GPUs in all "
            f"(resources.gpu x resources.nodes). sftlaunch does not convert it; DeepSpeed's universal "
            f"checkpoint can, outside it: python -m deepspeed.checkpoint.ds_to_universal --input_folder "
            f"{resume}/<global_stepN> --output_folder <dir>, loaded with \"checkpoint\": "
            f"{{\"load_universal\": true}} in the DeepSpeed config.")
    samples = s_world * s_ga
    if samples % world:
        mb = saved.get("micro_batch_size", "micro_batch_size")
        raise JobFailed(
            f"checkpoint {resume} was saved by {_where(saved)} with a global batch of {mb} x {s_ga} x "
            f"{s_world}; with {world} processes no whole grad_accum keeps it, and the Trainer's data "
            f"position (optimizer steps x global batch) would point at the wrong samples. Relaunch with "
            f"a GPU count that divides {samples}.")
    ga = samples // world
    return ga, (f"resuming a checkpoint of {_where(saved)} on {_where(now)}: grad_accum {s_ga} -> {ga} keeps "
                f"the global batch and the data position; per-rank RNG states (dropout) are not restored")
