"""Bucket I/O for the job: the one module in jobs/ that opens a bucket URI (gs://, s3://, a local
path: anything fsspec opens).

Why one module: every copy to or from `<bucket>/<run id>/` (checkpoints, metrics and logs,
results, the published model, the stop flag) must reach the same store the same way. An
S3-compatible store (MinIO, R2, a test server) is reached through an endpoint override that s3fs
only honours when it is passed in explicitly on some botocore versions; a bare `fsspec` call that
forgets it writes to AWS instead, or fails. tests/jobs/test_store.py fails when another module in
jobs/ calls fsspec directly. fsspec is imported when a bucket is first used, not at import.
"""

from __future__ import annotations

import os
from pathlib import Path

# The endpoint of an S3-compatible store, in the order they are honoured: fsspec's own
# configuration variable, then the AWS SDK's.
S3_ENDPOINT_VARS = ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")


def storage_options(uri: str) -> dict:
    """fsspec options for `uri`: the endpoint override for s3:// (read from the environment now,
    so a value set after fsspec was imported still counts); nothing for other stores."""
    if uri.startswith("s3://"):
        endpoint = next((os.environ[v] for v in S3_ENDPOINT_VARS if os.environ.get(v)), None)
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def filesystem(uri: str):
    """(filesystem, path) for a bucket URI or a local path, with the endpoint override applied."""
    import fsspec

    return fsspec.core.url_to_fs(uri, **storage_options(uri))


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
