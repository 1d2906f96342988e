"""Bucket I/O for both halves: the one module that opens a bucket URI (gs://, s3://, a local
path: anything fsspec opens).

Why one module: every copy to or from `<bucket>/<run id>/` (checkpoints, metrics and logs,
results, the published model, the stop flag), by the job or by the launcher reading it back, must
reach the same store the same way. An S3-compatible store (MinIO, R2, a test server) is reached
through an endpoint override that s3fs only honours when it is passed in explicitly on some
botocore versions; a bare `fsspec` call that forgets it writes to AWS instead, or fails. The
launcher's reads add `fail_fast` options (short per-request timeouts, bounded retries, no GCE
metadata probe): a status that cannot reach the bucket says "unknown" instead of hanging.
tests/sftcore/test_store.py fails when any other module calls fsspec directly. fsspec is imported
when a bucket is first used, never at import (the one import pyproject's layering allows here).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

# The endpoint of an S3-compatible store, in the order they are honoured: fsspec's own
# configuration variable, then the AWS SDK's.
S3_ENDPOINT_VARS = ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")


_STORAGE_LOGGERS = ("gcsfs", "s3fs")  # they log retries and give-ups as ERROR with a traceback


def storage_options(uri: str, fail_fast: bool = False) -> dict:
    """fsspec options for `uri`: the endpoint override for s3:// (read from the environment now,
    so a value set after fsspec was imported still counts); with `fail_fast`, options that make
    one failed request fail fast (the launcher's reads and its small stop flag)."""
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    opts: dict = {}
    if protocol in ("s3", "s3a"):
        endpoint = next((os.environ[v] for v in S3_ENDPOINT_VARS if os.environ.get(v)), None)
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        if fail_fast:
            # botocore's `total_max_attempts` counts the first try (its `max_attempts` does not).
            opts["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 10, "retries": {"total_max_attempts": 2}}
    elif protocol in ("gs", "gcs") and fail_fast:
        import fsspec

        opts["requests_timeout"] = 10
        configured = {**fsspec.config.conf.get("gs", {}), **fsspec.config.conf.get("gcs", {})}
        if "token" not in configured:
            # Application Default Credentials only (what `gcloud auth application-default login`
            # and SkyPilot's GCP set-up write; on a GCE VM it finds the VM's account): gcsfs's
            # default also probes the GCE metadata server, ~15 s of retries off Google Cloud.
            opts["token"] = "google_default"
    return opts


@contextlib.contextmanager
def quiet_logs():
    """gcsfs/s3fs keep quiet for the block: a read that may fail says so in one line of ours."""
    loggers = [logging.getLogger(name) for name in _STORAGE_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def filesystem(uri: str, fail_fast: bool = False, fresh: bool = False):
    """(filesystem, path) for a bucket URI or a local path, with the endpoint override applied;
    `fresh`: a new filesystem instance, not fsspec's cached one (a probe must see the store now)."""
    import fsspec

    extra = {"skip_instance_cache": True} if fresh else {}
    return fsspec.core.url_to_fs(uri, **extra, **storage_options(uri, fail_fast))


def is_async(fs) -> bool:
    """Whether `fs` takes fsspec's per-call `timeout=` (its async filesystems: gcsfs, s3fs)."""
    from fsspec.asyn import AsyncFileSystem

    return isinstance(fs, AsyncFileSystem)


def join(base: str, *parts: str) -> str:
    """`base/part/...` with exactly one slash between the pieces."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open(path, "r") as fh:
        return fh.read()


def write_text(uri: str, text: str) -> None:
    """Write `text` to `uri`, making the parent folder on a local path (object stores have none)."""
    fs, path = filesystem(uri)
    _parent(fs, path)
    with fs.open(path, "w") as fh:
        fh.write(text)


def put_file(local: Path | str, uri: str) -> None:
    fs, path = filesystem(uri)
    _parent(fs, path)
    fs.put_file(str(local), path)


def put_files(pairs: list[tuple[Path, str]], base: str) -> None:
    """Copy local files to paths relative to `base` (one filesystem for all of them), in order."""
    fs, root = filesystem(base)
    for local, rel in pairs:
        target = join(root, rel)
        _parent(fs, target)
        fs.put_file(str(local), target)


def get_tree(uri: str, dest: Path) -> int:
    """Copy every file under `uri` to the same relative path under `dest`; the number copied.
    Raises FileNotFoundError when `uri` holds nothing."""
    fs, src = filesystem(uri)
    if not fs.exists(src):
        raise FileNotFoundError(uri)
    n = 0
    for path in fs.find(src):
        rel = path[len(src.rstrip("/")) + 1:]
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(dest / rel))
        n += 1
    return n


def _parent(fs, path: str) -> None:
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem) and "/" in path:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
