"""Checkpoint manifests: what makes a step-N folder complete, and which node owns which file.

Why a manifest: a spot VM can die mid-write, locally or mid-upload. A checkpoint counts only when
its manifests exist and every file's sha256 matches, so resume never loads a half-written
optimizer state; each manifest is written (and uploaded) last so its presence means "complete".

Why one manifest per node: with several nodes and no shared disk, each node's processes write
their own shards into the node's local step folder (DeepSpeed's zero_pp_rank_<r>_* files, the
Trainer's rng_state_<r>.pth); global rank 0 writes the rest (weights, trainer_state.json,
DeepSpeed's `latest`, our sftlaunch_state.json). So each node's local rank 0 lists the files its
node owns and writes `MANIFEST.json` (node 0) or `MANIFEST.node-K.json`, each recording the node
count; a step is complete only when every node's manifest is there. On resume a node needs the
shared files plus its own ranks' shards, never the other nodes' shards. Copies, pruning and
resume are jobs.checkpoint's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "MANIFEST.json"
_NODE_MANIFEST_RE = re.compile(r"^MANIFEST(?:\.node-(\d+))?\.json$")
# Files written by one process, named by its global rank (data-parallel rank for DeepSpeed).
_RANK_FILE_RES = (re.compile(r"zero_pp_rank_(\d+)_"), re.compile(r"^rng_state_(\d+)\.pth$"))


@dataclass(frozen=True)
class Topology:
    """Which node this process is on; ranks are laid out node by node (torchrun, accelerate)."""

    node: int = 0
    nodes: int = 1
    procs_per_node: int = 1

    @classmethod
    def from_env(cls, env=None) -> Topology:
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE") or 1)
        local = int(env.get("LOCAL_WORLD_SIZE") or world)
        rank = int(env.get("RANK") or 0)
        return cls(node=rank // max(local, 1), nodes=max(1, world // max(local, 1)), procs_per_node=max(local, 1))

    def rank_node(self, rank: int) -> int:
        return rank // self.procs_per_node

    def owns(self, rel: str) -> bool:
        """Files this node lists in its manifest: its ranks' files; node 0 also every shared file."""
        rank = file_rank(rel)
        return self.node == 0 if rank is None else self.rank_node(rank) == self.node

    def needs(self, rel: str) -> bool:
        """Files this node must have to resume: the shared ones and its own ranks' files."""
        rank = file_rank(rel)
        return rank is None or self.rank_node(rank) == self.node


SINGLE = Topology()


class EveryRank(Topology):
    """Needs every file (one node materialising a checkpoint for a disk all nodes share)."""

    def needs(self, rel: str) -> bool:
        return True


def file_rank(rel: str) -> int | None:
    name = rel.rsplit("/", 1)[-1]
    for pattern in _RANK_FILE_RES:
        m = pattern.search(name)
        if m:
            return int(m.group(1))
    return None


def manifest_name(node: int) -> str:
    return MANIFEST if node == 0 else f"MANIFEST.node-{node}.json"


def _is_manifest(name: str) -> bool:
    return bool(_NODE_MANIFEST_RE.match(name)) or name.startswith("MANIFEST") and name.endswith(".tmp")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(ckpt: Path, step: int, topo: Topology = SINGLE) -> dict:
    """This node's manifest: sha256 and size of the files it owns, written atomically."""
    files = {}
    for p in sorted(ckpt.rglob("*")):
        rel = p.relative_to(ckpt).as_posix()
        if p.is_file() and not _is_manifest(p.name) and topo.owns(rel):
            files[rel] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    manifest = {"step": step, "node": topo.node, "nodes": topo.nodes, "procs_per_node": topo.procs_per_node,
                "files": files, "written_at": time.time()}
    name = manifest_name(topo.node)
    tmp = ckpt / (name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(ckpt / name)
    return manifest


def _parse_manifest(text: str) -> dict | None:
    try:
        m = json.loads(text)
    except ValueError:
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None


def _missing_manifests(manifests: dict[int, dict | None], where: str) -> str | None:
    """Why a set of node manifests is not a complete checkpoint, or None."""
    head = manifests.get(0)
    if 0 not in manifests:
        return f"no {MANIFEST}{where} (incomplete write)"
    if head is None:
        return f"unreadable {MANIFEST}{where}"
    nodes = int(head.get("nodes", 1))
    for k in range(1, nodes):
        if k not in manifests:
            return f"no {manifest_name(k)}{where} (node {k} has not finished this checkpoint)"
        if manifests[k] is None:
            return f"unreadable {manifest_name(k)}{where}"
    return None


def _needed(manifests: dict[int, dict], topo: Topology) -> dict[str, dict]:
    files: dict[str, dict] = {}
    for _node, m in sorted(manifests.items()):
        for rel, info in m["files"].items():
            if topo.needs(rel):
                files.setdefault(rel, info)
    return files


def local_manifests(ckpt: Path) -> dict[int, dict | None]:
    out: dict[int, dict | None] = {}
    if not ckpt.is_dir():
        return out
    for p in ckpt.iterdir():
        m = _NODE_MANIFEST_RE.match(p.name)
        if m:
            out[int(m.group(1) or 0)] = _parse_manifest(p.read_text())
    return out


def _file_ok(path: Path, info: dict) -> bool:
    return path.is_file() and path.stat().st_size == info["bytes"] and _sha256(path) == info["sha256"]


def verify(ckpt: Path, topo: Topology = SINGLE) -> str | None:
    """None when the checkpoint is complete (every node's manifest) and the files this node needs
    are intact, else why not."""
    manifests = local_manifests(ckpt)
    problem = _missing_manifests(manifests, "")
    if problem:
        return problem
    files = _needed(manifests, topo)  # type: ignore[arg-type]
    if not files:
        return "empty manifest"
    for rel, info in files.items():
        p = ckpt / rel
        if not p.is_file():
            return f"{rel} missing"
        if not _file_ok(p, info):
            return f"{rel} sha256 mismatch"
    return None
