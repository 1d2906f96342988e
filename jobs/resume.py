"""Where an attempt picks up: the newest checkpoint every node can load (fetched from the bucket
where a node lacks it), grad_accum for the GPU count it now runs on, metrics.jsonl as of that
step, and whether the run already finished (DIR/final holds its steps).

Why a module of its own: these are the collective decisions jobs.train makes before it builds
the Trainer; each is tested on its own (tests/jobs/test_checkpoint*.py, test_train.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs import checkpoint as ckpt
from jobs import checkpoint_manifest
from jobs.collectives import (
    barrier,
    broadcast,
    gather,
    init_dist,
    local_rank,
    log,
    rank,
    shutdown,
    world_size,
)
from sftcore import contract


def _shared_disk(ckpt_root: Path, topo: checkpoint_manifest.Topology) -> bool:
    """Whether the nodes write to one disk (then node 0 alone prepares the checkpoint folder)."""
    import uuid

    nonce = broadcast(uuid.uuid4().hex if rank() == 0 else None)
    mark = ckpt_root / f".node-probe-{nonce}-{topo.node}"
    if local_rank() == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        mark.write_text("")
    barrier()
    seen = local_rank() == 0 and any(
        (ckpt_root / f".node-probe-{nonce}-{k}").exists() for k in range(topo.nodes) if k != topo.node)
    shared = any(gather(seen))
    barrier()
    if local_rank() == 0:
        mark.unlink(missing_ok=True)
    return shared


def resume_point(ckpt_root: Path, prefix: str | None, topo: checkpoint_manifest.Topology) -> Path | None:
    """The newest checkpoint every node can load, ready on each node's disk (collective).

    Each node's local rank 0 lists the steps complete on its disk or in the bucket; the newest
    step all nodes have is chosen and each node fetches what it lacks from the bucket (its own
    shards and the shared files). If a node cannot, the next older common step is tried."""
    init_dist()
    shared = topo.nodes > 1 and _shared_disk(ckpt_root, topo)
    speaks = local_rank() == 0 and (not shared or topo.node == 0)
    view = checkpoint_manifest.EveryRank(topo.node, topo.nodes, topo.procs_per_node) if shared else topo
    cands = ckpt.candidates(ckpt_root, prefix, view) if speaks else None
    per_node = [c for c in gather(cands) if c is not None]
    excluded: set[int] = set()
    while True:
        step = ckpt.common_step(per_node, excluded)
        ok = step is None or not speaks or ckpt.prepare(step, ckpt_root, prefix, view, cands) is not None
        if all(gather(ok)):
            break
        excluded.add(step)
    if speaks:  # the abandoned attempt's newer folders; its incomplete uploads too, by global rank 0 only
        ckpt.drop_newer(ckpt_root, step, prefix if topo.node == 0 else None)
    barrier()
    return ckpt_root / contract.step_dir(step) if step is not None else None


def attempt_grad_accum(resume: Path | None, saved: dict, recipe, topo: checkpoint_manifest.Topology) -> int:
    """grad_accum for this attempt: the recipe's, or rescaled when the checkpoint was saved on
    another GPU count; a checkpoint this topology cannot resume is refused (jobs.checkpoint_topology),
    every rank alike, after leaving the process group."""
    t = recipe.train
    if resume is None:
        return t.grad_accum
    from jobs import checkpoint_topology as ct
    from sftcore.errors import JobFailed

    try:
        ga, note = ct.resume_grad_accum(resume, ct.saved_topology(resume, saved, t.grad_accum, t.deepspeed),
                                        world_size(), topo.nodes, topo.procs_per_node, t.deepspeed, t.grad_accum)
    except JobFailed:
        shutdown()
        raise
    if note:
        log(note)
    return ga


def restore_metrics(out: Path, resumed: Path, step: int) -> None:
    """metrics.jsonl as of the resumed step: rows logged after it belong to the lost attempt and
    would repeat in the loss plot; on a fresh disk the checkpoint's copy brings the earlier rows."""
    path = contract.RunLayout(out).metrics
    copy = resumed / ckpt.METRICS_COPY
    if path.is_file():
        text = path.read_text()
    elif copy.is_file():
        text = copy.read_text()
    else:
        return
    kept = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a preemption
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def finished_steps(out: Path, run_id: str | None) -> int | None:
    """The steps DIR/final/sftlaunch.json records, None without a finished model. Why: a rerun of a
    finished run resumed from its last checkpoint, trained one step past max_steps (the Trainer
    checks the limit only after a step) and overwrote final/. Another run's final/ is refused."""
    try:
        meta = json.loads(contract.RunLayout(out).final_meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("steps"), int):
        return None
    if run_id and meta.get("run_id") and meta["run_id"] != run_id:
        from sftcore.errors import UserError

        raise UserError(f"{contract.RunLayout(out).final} holds the model of run {meta['run_id']}, not {run_id}; "
                        "refusing to overwrite it: give this run its own --out directory")
    return meta["steps"]


def finished_or_refused(out: Path, run_id: str | None) -> tuple[int | None, str | None]:
    """(finished_steps, None) or (None, why it is refused): rank 0 decides for every rank."""
    from sftcore.errors import UserError

    try:
        return finished_steps(out, run_id), None
    except UserError as exc:
        return None, str(exc)


def resumed_step(resume: Path) -> int:
    try:
        return int(json.loads((resume / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return int(resume.name.split("-")[1])
