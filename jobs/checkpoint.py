"""Resumable checkpoints: local step-N folders with a manifest written last, bucket copies, resume.

Why a manifest: a spot VM can die mid-write, locally or mid-upload. A checkpoint counts only when
its MANIFEST.json exists and every file's sha256 matches, so resume never loads a half-written
optimizer state; the manifest is written (and uploaded) last so its presence means "complete".
Why by wall clock: the cost of a preemption is the time since the last checkpoint, not steps.

Layout: <out>/checkpoints/step-N/ (Trainer checkpoint: weights or adapter, optimizer, scheduler,
RNG states, trainer_state.json = data position) and <bucket>/<run id>/checkpoints/step-N/.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

MANIFEST = "MANIFEST.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(ckpt: Path, step: int) -> dict:
    files = {}
    for p in sorted(ckpt.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(ckpt).as_posix()] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    manifest = {"step": step, "files": files, "written_at": time.time()}
    tmp = ckpt / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(ckpt / MANIFEST)
    return manifest


def verify(ckpt: Path) -> str | None:
    """None when the checkpoint is complete and intact, else why not."""
    mpath = ckpt / MANIFEST
    if not mpath.is_file():
        return "no MANIFEST.json (incomplete write)"
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return "unreadable MANIFEST.json"
    if not files:
        return "empty manifest"
    for rel, info in files.items():
        p = ckpt / rel
        if not p.is_file():
            return f"{rel} missing"
        if p.stat().st_size != info["bytes"] or _sha256(p) != info["sha256"]:
            return f"{rel} sha256 mismatch"
    return None


def local_steps(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    out = []
    for p in ckpt_root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def bucket_prefix(bucket: str | None, run_id: str | None) -> str | None:
    if not bucket or not run_id:
        return None
    return f"{bucket.rstrip('/')}/{run_id}/checkpoints"


def _fs(url: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **_storage_options(url))
    return fs, path


def _storage_options(url: str) -> dict:
    # s3fs takes its endpoint from AWS_ENDPOINT_URL in recent botocore; set it explicitly too so an
    # S3-compatible store (MinIO, R2, a test server) works whatever the botocore version.
    if url.startswith("s3://"):
        endpoint = os.environ.get("FSSPEC_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def upload(ckpt: Path, prefix: str) -> str:
    """Copy one local checkpoint to <prefix>/step-N/, manifest last."""
    fs, base = _fs(prefix)
    dest = f"{base.rstrip('/')}/{ckpt.name}"
    files = [p for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MANIFEST]
    for p in files:
        remote = f"{dest}/{p.relative_to(ckpt).as_posix()}"
        fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(p), remote)
    fs.put_file(str(ckpt / MANIFEST), f"{dest}/{MANIFEST}")
    return dest


def remote_steps(prefix: str) -> list[int]:
    fs, base = _fs(prefix)
    try:
        entries = fs.ls(base, detail=False)
    except (FileNotFoundError, OSError):
        return []
    steps = []
    for e in entries:
        m = _STEP_RE.match(e.rstrip("/").rsplit("/", 1)[-1])
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps, reverse=True)


def download(prefix: str, step: int, ckpt_root: Path) -> Path | None:
    """Fetch <prefix>/step-N into ckpt_root; None (with a warning) when it is incomplete there."""
    fs, base = _fs(prefix)
    src = f"{base.rstrip('/')}/step-{step}"
    if not fs.exists(f"{src}/{MANIFEST}"):
        warn(f"{prefix}/step-{step}: no {MANIFEST} in the bucket (incomplete upload); skipped")
        return None
    dest = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".download-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifest = json.loads(fs.cat_file(f"{src}/{MANIFEST}"))
    for rel in manifest.get("files", {}):
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{src}/{rel}", str(target))
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    problem = verify(tmp)
    if problem:
        warn(f"{prefix}/step-{step}: {problem}; skipped")
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def find_resume(ckpt_root: Path, bucket: str | None = None, run_id: str | None = None) -> Path | None:
    """The newest complete checkpoint: local first, else the newest complete one in the bucket."""
    for _step, path in local_steps(ckpt_root):
        problem = verify(path)
        if problem is None:
            return path
        warn(f"{path}: {problem}; skipping this checkpoint")
    prefix = bucket_prefix(bucket, run_id)
    if prefix:
        for step in remote_steps(prefix):
            got = download(prefix, step, ckpt_root)
            if got is not None:
                return got
    return None


def prune(ckpt_root: Path, keep: int, prefix: str | None = None) -> list[Path]:
    """Keep the `keep` newest complete checkpoints (locally and in the bucket); drop older ones."""
    removed = []
    complete = [(s, p) for s, p in local_steps(ckpt_root) if (p / MANIFEST).is_file()]
    keep_steps = {s for s, _ in complete[:keep]}
    newest = complete[0][0] if complete else None
    for s, p in local_steps(ckpt_root):
        # Older than the newest complete one and not kept: stale (incomplete ones older too).
        if s not in keep_steps and newest is not None and s < newest:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if prefix:
        fs, base = _fs(prefix)
        for s in remote_steps(prefix):
            if s not in keep_steps and newest is not None and s < newest:
                try:
                    fs.rm(f"{base.rstrip('/')}/step-{s}", recursive=True)
                except (FileNotFoundError, OSError) as exc:
                    warn(f"{prefix}/step-{s}: could not prune ({exc})")
    return removed


def finalize(trainer_dir: Path, ckpt_root: Path, step: int, keep: int, prefix: str | None) -> Path:
    """Turn the Trainer's checkpoint-N into a complete step-N: rename, manifest, upload, prune."""
    dest = ckpt_root / f"step-{step}"
    if trainer_dir != dest:
        shutil.rmtree(dest, ignore_errors=True)
        trainer_dir.rename(dest)
    write_manifest(dest, step)
    if prefix:
        where = upload(dest, prefix)
        print(f"checkpoint step {step} uploaded to {where}", flush=True)
    prune(ckpt_root, keep, prefix)
    return dest
