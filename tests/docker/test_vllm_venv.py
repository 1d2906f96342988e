"""docker/Dockerfile's vLLM venv (stage `vllm`, /opt/vllm) for eval.backend vllm, checked
statically (no Docker engine or GPU here): its own stage on the final stage's base, copied into the
final image where contract.VLLM_PYTHON points, pinned by docker/vllm-constraints.txt, whose vLLM
is the Dockerfile's and satisfies lm-eval's own `vllm` extra (read from the installed lm-eval's
metadata), with lm-eval at the training venv's version and the leaderboard-v2 task extras."""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sftcore import contract
from tests.docker.test_dockerfile import REPO, TEXT, arg_defaults, constraint_pins, kv_pairs, stages

VLLM_CONSTRAINTS = REPO / "docker" / "vllm-constraints.txt"


def vllm_pins() -> dict[str, str]:
    out = {}
    for line in VLLM_CONSTRAINTS.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def _stage(name: str):
    return next(s for s in stages(TEXT) if s[0][1].endswith(f" AS {name}"))


def test_vllm_stage_builds_the_venv_on_the_final_base_and_final_copies_it():
    vllm = _stage("vllm")
    final = stages(TEXT)[-1]
    assert vllm[0][1].split(" AS ")[0] == final[0][1].split(" AS ")[0]  # same python3 the venv links to
    runs = " ".join(args for word, args in vllm if word == "RUN")
    assert "python3 -m venv /opt/vllm" in runs and "/opt/vllm/bin/pip install -r /tmp/vllm-constraints.txt" in runs
    assert "pip check" in runs and "punkt_tab" in runs
    assert ("COPY", "docker/vllm-constraints.txt /tmp/vllm-constraints.txt") in vllm
    assert ("COPY", "--from=vllm /opt/vllm /opt/vllm") in final
    assert contract.VLLM_PYTHON == "/opt/vllm/bin/python"
    # The final stage checks the installed vLLM against what the job assumes.
    checks = " ".join(args for word, args in final if word == "RUN")
    assert "MaxLoRARanks" in checks and "lm_eval_vllm_params" in checks


def test_vllm_pins_are_the_dockerfiles_and_satisfy_lm_evals_vllm_extra():
    pins = vllm_pins()
    args = arg_defaults(TEXT)
    assert pins["vllm"] == args["VLLM_VERSION"]
    labels = {}
    for word, a in stages(TEXT)[-1]:
        if word == "LABEL":
            labels.update(kv_pairs(a))
    assert labels["dev.sftlaunch.versions.vllm"] == "${VLLM_VERSION}"
    sys.path.insert(0, str(REPO / "docker"))
    try:
        import gen_vllm_constraints
    finally:
        sys.path.pop(0)
    assert gen_vllm_constraints.VLLM_VERSION == pins["vllm"]
    assert " ".join(gen_vllm_constraints.requirements()) in VLLM_CONSTRAINTS.read_text()  # resolved from these
    # lm-eval: the training venv's version, and its own declared requirement for the vllm extra.
    assert pins["lm-eval"] == constraint_pins()["lm-eval"] == metadata.version("lm_eval")
    extra = [Requirement(r) for r in metadata.requires("lm_eval") or []
             if Requirement(r).marker and Requirement(r).marker.evaluate({"extra": "vllm"})
             and canonicalize_name(Requirement(r).name) == "vllm"]
    assert extra and all(r.specifier.contains(Version(pins["vllm"])) for r in extra), extra


def test_vllm_venv_holds_what_the_eval_job_imports():
    pins = vllm_pins()
    for ext in ("ifeval", "math"):  # leaderboard-v2's IFEval and MATH, as lm-eval declares them
        for raw in metadata.requires("lm_eval") or []:
            req = Requirement(raw)
            if req.marker and req.marker.evaluate({"extra": ext}):
                name = canonicalize_name(req.name)
                assert name in pins, f"lm-eval[{ext}] needs {req.name}"
                assert req.specifier.contains(Version(pins[name]), prereleases=True), (req, pins[name])
    for pkg in ("ray", "pydantic", "pyyaml", "gcsfs", "s3fs", "fsspec", "torch", "transformers"):
        assert pkg in pins, pkg
    # Its torch is vLLM's, not the training venv's: the reason it is a venv of its own.
    assert pins["torch"] != constraint_pins()["torch"]
