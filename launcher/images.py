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
from launcher.home import sftlaunch_home
from sftcore.contract import Env

DEFAULT_REPOSITORY = "ghcr.io/sftlaunch/sftlaunch"
REPOSITORY_ENV = Env.IMAGE_REPO  # e.g. docker.io/me/sftlaunch for your own registry
ROOT_SUFFIX = "-root"
ROOT_CLOUDS = frozenset({"runpod"})
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

# The image reference grammar of distribution/reference (what `docker build -t` accepts):
#   name := [domain "/"] path-component ["/" path-component]*   (name ≤ 255 characters)
#   domain := host [":" port], host a DNS name, IPv4 or [IPv6]; a first component is a domain
#             only if it holds "." or ":" or is "localhost" (else it is part of the path)
#   path-component := [a-z0-9]+ (("." | "_" | "__" | "-"+) [a-z0-9]+)*
#   tag := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
NAME_MAX = 255


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


def reference_problem(ref: str) -> str | None:
    """Why `ref` is not a `name[:tag]` image reference docker accepts, or None when it is."""
    if not ref or ref != ref.strip():
        return "empty, or surrounded by spaces"
    if "@" in ref:
        return "a digest (@sha256:...) names an existing image; a build needs REPO[:TAG]"
    name, tag = ref, None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = ref.rpartition(":")
        if not _TAG_RE.match(tag):
            return (f"tag {tag!r} is not valid: 1-128 of letters, digits, '_', '.', '-', "
                    "not starting with '.' or '-'")
    if len(name) > NAME_MAX:
        return f"the repository name is longer than {NAME_MAX} characters"
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.match(first):
            return f"registry {first!r} is not a host[:port]"
        parts = parts[1:]
    for part in parts:
        if not _PATH_COMPONENT_RE.match(part):
            return (f"repository component {part!r} is not valid: lowercase letters and digits, "
                    "separated by '.', '_', '__' or '-'")
    return None


def check_reference(ref: str, flag: str = "--tag") -> str:
    """`ref` itself when docker would accept it as a build tag, else the UserError (exit 2)."""
    problem = reference_problem(ref)
    if problem:
        from sftcore.errors import UserError

        raise UserError(f"{flag} {ref!r}: not a valid image reference ({problem}); "
                        "use [REGISTRY/]REPO[:TAG], e.g. ghcr.io/me/sftlaunch:0.1.0")
    return ref


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
