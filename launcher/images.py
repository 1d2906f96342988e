"""Which container image a run uses.

A recipe's `image:` wins; otherwise the image built from docker/ for this version. When
`sftlaunch image push` has recorded a digest for this version, that digest is used so the GPU
host runs exactly the image that was pushed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from launcher import __version__

DEFAULT_REPOSITORY = "ghcr.io/sftlaunch/sftlaunch"


def sftlaunch_home() -> Path:
    return Path(os.environ.get("SFTLAUNCH_HOME") or Path.home() / ".sftlaunch")


def default_tag() -> str:
    return f"{DEFAULT_REPOSITORY}:{__version__}"


def recorded_digest(tag: str | None = None) -> str | None:
    """The `repo@sha256:…` reference recorded by `image push` for this tag, if any."""
    path = sftlaunch_home() / "images.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ref = data.get(tag or default_tag()) if isinstance(data, dict) else None
    return ref if isinstance(ref, str) and "@sha256:" in ref else None


def resolve_image(recipe_image: str | None) -> str:
    if recipe_image:
        return recipe_image
    return recorded_digest() or default_tag()
