"""The image and the `eval` extra carry what lm-eval's leaderboard-v2 tasks import, as lm-eval's
own metadata declares it (its `ifeval` and `math` extras), pinned in docker/constraints.txt."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "docker" / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def test_eval_extra_asks_lm_eval_for_the_v2_task_extras():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["eval"]
    lm_eval = next(Requirement(r) for r in extra if Requirement(r).name == "lm-eval")
    assert {"ifeval", "math"} <= lm_eval.extras


def test_every_requirement_of_those_extras_is_pinned_and_satisfied():
    pins = _pins()
    needed = [Requirement(r) for r in metadata.requires("lm-eval") or []
              if any(Requirement(r).marker and Requirement(r).marker.evaluate({"extra": e}) for e in ("ifeval", "math"))]
    names = {canonicalize_name(r.name) for r in needed}
    assert {"langdetect", "immutabledict", "nltk", "sympy", "antlr4-python3-runtime", "math-verify"} <= names
    for req in needed:
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} (lm-eval's ifeval/math extra) is not pinned in docker/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (name, str(req.specifier), pins[name])


def test_image_build_imports_them():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"import langdetect, immutabledict, nltk, sympy, math_verify", dockerfile)


def test_image_ships_nltks_punkt_tab_for_ifeval():
    # lm-eval's ifeval instructions_util downloads punkt_tab at import unless nltk finds it.
    import lm_eval

    util = (Path(lm_eval.__file__).parent / "tasks" / "leaderboard" / "ifeval" / "instructions_util.py").read_text()
    assert 'nltk.data.find("tokenizers/punkt_tab")' in util
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "nltk.downloader -d /opt/venv/nltk_data punkt_tab" in dockerfile
    assert 'nltk.data.find("tokenizers/punkt_tab")' in dockerfile.split("FROM nvidia/cuda")[-1]
