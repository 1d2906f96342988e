"""Which container image a run uses, and the record of what `sftlaunch image push` pushed.

A recipe's `image:` wins; otherwise the image built from docker/ for this package version. A tag
can be moved, so once `sftlaunch image push` has recorded the digest it pushed for a tag
($SFTLAUNCH_HOME/images.json), runs use `repo@sha256:…`: the GPU host then runs exactly the
image that was pushed, not whatever the tag points at later.

RunPod gets the `-root` variant: SkyPilot logs into a RunPod pod over SSH as root, which an
image whose default user is unprivileged cannot offer (see docker/Dockerfile, IMAGE_USER).

Light imports only: `render` and `plan` read this.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from launcher import __version__

DEFAULT_REPOSITORY = "ghcr.io/sftlaunch/sftlaunch"
REPOSITORY_ENV = "SFTLAUNCH_IMAGE_REPO"  # e.g. docker.io/me/sftlaunch for your own registry
ROOT_SUFFIX = "-root"
ROOT_CLOUDS = frozenset({"runpod"})
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def sftlaunch_home() -> Path:
    return Path(os.environ.get("SFTLAUNCH_HOME") or Path.home() / ".sftlaunch")


def images_file() -> Path:
    return sftlaunch_home() / "images.json"


def repository() -> str:
    return os.environ.get(REPOSITORY_ENV) or DEFAULT_REPOSITORY


def default_tag(root: bool = False) -> str:
    return f"{repository()}:{__version__}{ROOT_SUFFIX if root else ''}"


def needs_root(cloud: str | None) -> bool:
    return cloud in ROOT_CLOUDS


def split_tag(tag: str) -> tuple[str, str | None]:
    """`host:5000/a/b:t` -> (`host:5000/a/b`, `t`); a port is not a tag."""
    name, sep, last = tag.rpartition(":")
    if sep and "/" not in last:
        return name, last
    return tag, None


def _load() -> dict[str, str]:
    try:
        data = json.loads(images_file().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}


def recorded_digest(tag: str | None = None) -> str | None:
    """The `repo@sha256:…` reference recorded by `image push` for this tag, if any."""
    ref = _load().get(tag or default_tag())
    return ref if ref and "@sha256:" in ref else None


def record_digest(tag: str, digest: str) -> str:
    """Remember that `tag` was pushed as `digest`; returns the `repo@sha256:…` reference."""
    if not DIGEST_RE.match(digest):
        raise ValueError(f"not an image digest: {digest!r}")
    ref = f"{split_tag(tag)[0]}@{digest}"
    data = _load()
    data[tag] = ref
    path = images_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves half a file for `render` to misread
    return ref


def resolve_image(recipe_image: str | None, cloud: str | None = None) -> str:
    """The image reference a run on `cloud` uses (without SkyPilot's `docker:` prefix)."""
    if recipe_image:
        return recipe_image
    tag = default_tag(root=needs_root(cloud))
    return recorded_digest(tag) or tag
