"""Resumable checkpoints: local step-N folders, bucket copies, pruning, and choosing where to resume.

Why by wall clock: the cost of a preemption is the time since the last checkpoint, not steps.
A step counts only when complete: its manifests, written last, and every file's sha256
(jobs.checkpoint_manifest, which also says which node owns which file). Each node's local rank 0
uploads the files its node owns, its manifest last; on resume the newest step every node can load
is chosen (jobs.resume.resume_point) and each node fetches what it lacks from the bucket. Manifests
and uploads run in the background, outside the collectives (jobs.checkpoint_upload).

Layout: <out>/checkpoints/step-N/ (Trainer checkpoint: weights or adapter, optimizer, scheduler,
RNG states, trainer_state.json = data position, sftlaunch_state.json = cumulative elapsed time)
and <bucket>/<run id>/checkpoints/step-N/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from jobs.checkpoint_manifest import (
    _NODE_MANIFEST_RE,
    SINGLE,
    Topology,
    _file_ok,
    _missing_manifests,
    _needed,
    _parse_manifest,
    manifest_name,
    verify,
)
from sftcore import contract, store

STATE = "sftlaunch_state.json"  # cumulative run state the Trainer does not keep (elapsed seconds)
METRICS_COPY = "sftlaunch_metrics.jsonl"  # metrics.jsonl up to this step, for a resume on a fresh disk
# Partial folders a kill leaves beside the step folders: the Trainer's own checkpoint-N (killed
# while saving, before finalize_node made it step-N) and materialize's download folder.
_LEFTOVER_RES = (re.compile(r"^checkpoint-(\d+)$"), re.compile(rf"^\.download-{contract.STEP_PREFIX}(\d+)\.node-\d+$"))


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def local_steps(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    out = []
    for p in ckpt_root.iterdir():
        step = contract.step_of(p.name)
        if step is not None and p.is_dir():
            out.append((step, p))
    return sorted(out, reverse=True)


def bucket_prefix(bucket: str | None, run_id: str | None) -> str | None:
    if not bucket or not run_id:
        return None
    return contract.RunLayout.in_bucket(bucket, run_id).checkpoints


def upload(ckpt: Path, prefix: str, topo: Topology = SINGLE) -> str:
    """Copy this node's files of one local checkpoint to <prefix>/step-N/, its manifest last."""
    fs, base = store.filesystem(prefix)
    dest = f"{base.rstrip('/')}/{ckpt.name}"
    name = manifest_name(topo.node)
    manifest = json.loads((ckpt / name).read_text())
    for rel in sorted(manifest["files"]):
        remote = f"{dest}/{rel}"
        fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(ckpt / rel), remote)
    fs.makedirs(dest, exist_ok=True)
    fs.put_file(str(ckpt / name), f"{dest}/{name}")
    return dest


def remote_steps(prefix: str) -> list[int]:
    fs, base = store.filesystem(prefix)
    try:
        entries = fs.ls(base, detail=False)
    except (FileNotFoundError, OSError):
        return []
    steps = []
    for e in entries:
        step = contract.step_of(e.rstrip("/").rsplit("/", 1)[-1])
        if step is not None:
            steps.append(step)
    return sorted(steps, reverse=True)


def remote_manifests(prefix: str, step: int) -> dict[int, dict | None]:
    fs, base = store.filesystem(prefix)
    src = store.join(base, contract.step_dir(step))
    try:
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(src, detail=False)]
    except (FileNotFoundError, OSError):
        return {}
    out: dict[int, dict | None] = {}
    for name in names:
        m = _NODE_MANIFEST_RE.match(name)
        if m:
            out[int(m.group(1) or 0)] = _parse_manifest(fs.cat_file(f"{src}/{name}").decode())
    return out


def remote_complete_steps(prefix: str) -> list[int]:
    """Steps whose every node manifest is in the bucket (newest first); the others are warned about."""
    done = []
    for step in remote_steps(prefix):
        problem = _missing_manifests(remote_manifests(prefix, step), " in the bucket")
        if problem:
            warn(f"{store.join(prefix, contract.step_dir(step))}: {problem}; skipped")
        else:
            done.append(step)
    return done


def materialize(prefix: str, step: int, ckpt_root: Path, topo: Topology = SINGLE) -> Path | None:
    """Make ckpt_root/step-N hold what this node needs from the bucket copy (files already here
    with the right sha256 are kept, the rest downloaded); None, with a warning, when the bucket
    copy is incomplete or corrupt."""
    fs, base = store.filesystem(prefix)
    src = store.join(base, contract.step_dir(step))
    manifests = remote_manifests(prefix, step)
    problem = _missing_manifests(manifests, " in the bucket")
    if problem:
        warn(f"{store.join(prefix, contract.step_dir(step))}: {problem}; skipped")
        return None
    dest = ckpt_root / contract.step_dir(step)
    tmp = ckpt_root / f".download-{contract.step_dir(step)}.node-{topo.node}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel, info in _needed(manifests, topo).items():  # type: ignore[arg-type]
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if _file_ok(dest / rel, info):
            os.replace(dest / rel, target)
        else:
            fs.get_file(f"{src}/{rel}", str(target))
    for node, m in manifests.items():
        (tmp / manifest_name(node)).write_text(json.dumps(m))
    problem = verify(tmp, topo)
    if problem:
        warn(f"{store.join(prefix, contract.step_dir(step))}: {problem}; skipped")
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def local_complete_steps(ckpt_root: Path, topo: Topology = SINGLE) -> list[int]:
    """Local steps complete for this node (newest first); the others are warned about."""
    done = []
    for step, path in local_steps(ckpt_root):
        problem = verify(path, topo)
        if problem is None:
            done.append(step)
        elif topo.nodes == 1 or not problem.startswith("no MANIFEST"):
            # On several nodes a missing manifest of another node is the normal local state.
            warn(f"{path}: {problem}; skipping this checkpoint")
    return done


def candidates(ckpt_root: Path, prefix: str | None, topo: Topology = SINGLE) -> dict:
    """What this node could resume from: {"local": [...], "bucket": [...]} steps, newest first."""
    return {"local": local_complete_steps(ckpt_root, topo),
            "bucket": remote_complete_steps(prefix) if prefix else []}


def common_step(per_node: list[dict], excluded: set[int] = frozenset()) -> int | None:
    """The newest step every node can resume from (from its disk or the bucket)."""
    sets = [set(c["local"]) | set(c["bucket"]) for c in per_node]
    common = set.intersection(*sets) - set(excluded) if sets else set()
    return max(common) if common else None


def prepare(step: int, ckpt_root: Path, prefix: str | None, topo: Topology, cands: dict) -> Path | None:
    """This node's local step-N ready to load: as it is when complete here, else from the bucket."""
    path = ckpt_root / contract.step_dir(step)
    if step in cands["local"]:
        return path
    if prefix and step in cands["bucket"]:
        return materialize(prefix, step, ckpt_root, topo)
    return None


def drop_newer(ckpt_root: Path, step: int | None, prefix: str | None = None) -> None:
    """Local step folders newer than the one resumed from belong to an abandoned attempt, as do
    its partial leftovers (the Trainer's checkpoint-N, download folders) and, with `prefix` (one
    process only), its incomplete uploads: each is proven incomplete before it goes."""
    for s, p in local_steps(ckpt_root) + local_leftovers(ckpt_root):
        if step is None or s > step:
            shutil.rmtree(p, ignore_errors=True)
    if prefix:
        for s in remote_steps(prefix):
            if (step is None or s > step) and remote_state(prefix, s) == "incomplete":
                _remove_remote(prefix, s, "an incomplete upload of an abandoned attempt")


def local_leftovers(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the partial folders a kill during a save or a download leaves behind."""
    if not ckpt_root.is_dir():
        return []
    out = []
    for p in ckpt_root.iterdir():
        for pattern in _LEFTOVER_RES:
            m = pattern.match(p.name)
            if m and p.is_dir() and not p.is_symlink():
                out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def remote_state(prefix: str, step: int) -> str:
    """"complete", "incomplete" (proven: the folder lists and lacks a readable node manifest) or
    "unknown" (it could not be listed or read now). Only "incomplete" may ever be deleted: a
    listing that fails for a moment must not make a good checkpoint look partial."""
    fs, base = store.filesystem(prefix)
    src = store.join(base, contract.step_dir(step))
    manifests: dict[int, dict | None] = {}
    try:
        for entry in fs.ls(src, detail=False):
            m = _NODE_MANIFEST_RE.match(entry.rstrip("/").rsplit("/", 1)[-1])
            if m:
                manifests[int(m.group(1) or 0)] = _parse_manifest(fs.cat_file(f"{src}/{m.group(0)}").decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001 - any storage error: not proven either way
        return "unknown"
    return "complete" if _missing_manifests(manifests, "") is None else "incomplete"


def _remove_remote(prefix: str, step: int, why: str) -> None:
    fs, base = store.filesystem(prefix)
    try:
        fs.rm(store.join(base, contract.step_dir(step)), recursive=True)
    except (FileNotFoundError, OSError) as exc:
        warn(f"{store.join(prefix, contract.step_dir(step))}: could not prune {why} ({exc})")


def read_state(ckpt: Path | None) -> dict:
    """sftlaunch_state.json of a checkpoint ({} when absent: checkpoints of older versions)."""
    if ckpt is None or not (ckpt / STATE).is_file():
        return {}
    try:
        state = json.loads((ckpt / STATE).read_text())
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def _has_own_manifest(path: Path, topo: Topology) -> bool:
    return (path / manifest_name(topo.node)).is_file()


def prune(ckpt_root: Path, keep: int, prefix: str | None = None, topo: Topology = SINGLE) -> list[Path]:
    """Keep the `keep` newest checkpoints this node finished (locally) and the `keep` newest
    complete ones in the bucket; drop older ones, and every partial folder (a kill during a save)
    once a newer complete checkpoint exists. Call with `prefix` on one process only, after every
    node has uploaded. Returns the local folders removed."""
    removed = []
    complete = [(s, p) for s, p in local_steps(ckpt_root) if _has_own_manifest(p, topo)]
    keep_steps = {s for s, _ in complete[:keep]}
    newest = complete[0][0] if complete else None
    # Older than the newest complete one and not kept: stale (incomplete ones and leftovers too).
    stale = [(s, p) for s, p in local_steps(ckpt_root) if s not in keep_steps] + local_leftovers(ckpt_root)
    for s, p in stale:
        if newest is not None and s < newest:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if prefix:
        steps = remote_steps(prefix)
        states = {s: remote_state(prefix, s) for s in steps}
        remote_done = [s for s in steps if states[s] == "complete"]
        keep_remote = set(remote_done[:keep])
        for s in steps:
            if s not in keep_remote and states[s] != "unknown" and remote_done and s < remote_done[0]:
                _remove_remote(prefix, s, "an old checkpoint" if states[s] == "complete" else "an incomplete upload")
    return removed


def _move_into(src: Path, dest: Path) -> None:
    """Rename src to dest; when dest exists already (a disk another node shares), merge into it."""
    try:
        src.rename(dest)
        return
    except FileNotFoundError:
        if dest.is_dir():
            return  # another node on this disk renamed it first
        raise
    except OSError:
        pass
    for p in sorted(src.rglob("*")):
        if p.is_file():
            target = dest / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, target)
    shutil.rmtree(src, ignore_errors=True)


def finalize_node(trainer_dir: Path, ckpt_root: Path, step: int) -> Path:
    """This node's part of a save, the collective part: the Trainer's checkpoint-N becomes step-N.
    Run by each node's local rank 0; its manifest and upload follow in the background
    (jobs.checkpoint_upload), so until the manifest is there the folder does not count."""
    dest = ckpt_root / contract.step_dir(step)
    if trainer_dir != dest and trainer_dir.exists():
        _move_into(trainer_dir, dest)
    dest.mkdir(parents=True, exist_ok=True)  # a node whose processes wrote nothing still signs off
    return dest
