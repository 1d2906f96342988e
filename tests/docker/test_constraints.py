"""docker/constraints-dev.txt (what the README and CI install with) is generated from the tested
venv, agrees with the image's docker/constraints.txt, and covers everything the README installs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "docker" / "constraints-dev.txt"
IMAGE = REPO / "docker" / "constraints.txt"


def _pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", path.read_text(), re.M))


def _gen():
    sys.path.insert(0, str(REPO / "docker"))
    try:
        import gen_constraints
    finally:
        sys.path.pop(0)
    return gen_constraints


def test_dev_constraints_match_the_tested_venv():
    assert DEV.read_text() == _gen().render(dev=True), "run `python docker/gen_constraints.py`"


def test_the_image_and_the_readme_pin_the_same_versions():
    image, dev = _pins(IMAGE), _pins(DEV)
    assert image and all(dev.get(name) == version for name, version in image.items() if name in dev)
    assert {"torch", "transformers", "peft", "lm-eval"} <= set(image) & set(dev)


def test_every_package_the_readme_installs_is_pinned():
    """Each direct requirement of sftlaunch[cloud,train,eval,dev] is in the file, and so is boto3:
    unpinned beside the pinned botocore, pip backtracked through 20 boto3 releases."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dev = _pins(DEV)
    for extra in ("cloud", "train", "eval", "dev"):
        for raw in project["optional-dependencies"][extra]:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate():
                assert canonicalize_name(req.name) in dev, req.name
    assert "boto3" in dev and "botocore" in dev and "aiodns" in dev
