"""Estimate the compressed size of the sftlaunch image, layer by layer, without building it.

Why an estimate: the image needs a Docker engine (and ~20 GB of downloads) to build, which the
development machine lacks. What can be measured cheaply is the size of every wheel that goes
into it: PyPI's JSON API gives each file's size, and PEP 658 `.metadata` files give each wheel's
dependencies, so the whole pip closure (torch's CUDA wheels included) is resolved from metadata
alone; nothing big is downloaded. A wheel is a deflate-compressed zip and a pushed layer is a
gzip-compressed tar of the same files, so a layer's compressed size ~ the sum of its wheels.

Proxies, printed as such:
- The nvidia/cuda *runtime* base's CUDA libraries are the same .so files NVIDIA ships as pip
  wheels (cublas, cufft, curand, cusolver, cusparse, npp, nvjpeg, nvrtc, nvjitlink, cudart, nccl),
  so those wheels' sizes stand in for that layer; Ubuntu 24.04 itself is ~30 MB compressed.
- apt packages: sizes of the .deb files from this machine's apt index (Debian 12, not Ubuntu
  24.04: same packages, similar sizes), for the dependency closure minus packages of priority
  required/important (already in the base).
- deepspeed ships only an sdist; the FUSED_ADAM op compiled for 7 architectures adds a few MB.

Run: python bench/image_size.py   (needs https access to pypi.org; ~1 min)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/pypi"
ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}
GOOD_TAGS = ("cp312", "abi3", "py3", "py2.py3")
RUNTIME_BASE_WHEELS = [
    "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-nvrtc==13.0.88", "nvidia-cublas==13.1.1.3",
    "nvidia-cufft==12.0.0.61", "nvidia-curand==10.4.0.35", "nvidia-cusolver==12.0.4.66",
    "nvidia-cusparse==12.6.3.3", "nvidia-npp==13.0.1.2", "nvidia-nvjpeg==13.0.1.86",
    "nvidia-nvjitlink==13.0.88", "nvidia-nccl-cu13==2.29.7",
]
APT_FINAL = ("python3 python3-venv python3-dev python3-pip g++ git sudo ca-certificates openssh-server "
             "rsync curl wget patch fuse procps").split()
UBUNTU_BASE_MB = 30  # ubuntu:24.04 amd64 compressed, approximately


@cache
def project(name: str) -> dict:
    with urllib.request.urlopen(f"{PYPI}/{name}/json", timeout=60) as r:
        return json.load(r)


def pick_version(req: Requirement) -> str:
    releases = project(req.name)["releases"]
    versions = sorted((Version(v) for v, files in releases.items() if files), reverse=True)
    for v in versions:
        if v.is_prerelease:
            continue
        if req.specifier.contains(v, prereleases=False):
            return str(v)
    raise SystemExit(f"no release of {req.name} satisfies {req.specifier}")


def pick_file(name: str, version: str) -> dict:
    files = project(name)["releases"][version]
    wheels = []
    for f in files:
        if not f["filename"].endswith(".whl"):
            continue
        _, _, _, tags = parse_wheel_filename(f["filename"])
        for t in tags:
            if t.interpreter in ("cp312", "py3", "py2") and t.abi in ("cp312", "abi3", "none") and (
                t.platform == "any" or ("manylinux" in t.platform and t.platform.endswith("x86_64"))
            ):
                wheels.append(f)
                break
    if wheels:
        return max(wheels, key=lambda f: f["filename"])  # newest manylinux tag sorts last
    sdists = [f for f in files if f["filename"].endswith((".tar.gz", ".zip"))]
    if not sdists:
        raise SystemExit(f"{name}=={version}: no usable file")
    return sdists[0]


@cache
def requires(name: str, version: str) -> tuple[str, ...]:
    f = pick_file(name, version)
    if f["filename"].endswith(".whl"):
        url = urllib.parse.urljoin(f"{PYPI}/{name}/json", f["url"] + ".metadata")
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                text = r.read().decode()
        except OSError:
            text = None
        if text is not None:
            return tuple(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:"))
    # No .metadata file (sdists, some mirrors): the tested venv's copy of that release, else the
    # newest release's declared deps (close enough for small pure-Python packages).
    try:
        dist = metadata.distribution(name)
        if dist.version.split("+")[0] == version:
            return tuple(dist.requires or ())
    except metadata.PackageNotFoundError:
        pass
    return tuple(project(name)["info"].get("requires_dist") or ())


def resolve(roots: list[str], pins: dict[str, str]) -> dict[str, tuple[str, dict]]:
    """name -> (version, file) for the closure of `roots`, honouring exact `pins` and every
    specifier seen on the way (a package re-picked when a later edge narrows it, as pip would)."""
    out: dict[str, tuple[str, dict]] = {}
    specs: dict[str, SpecifierSet] = {}
    extras: dict[str, set[str]] = {}
    queue = [Requirement(r) for r in roots]
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        specs[name] = specs.get(name, SpecifierSet()) & req.specifier
        new_extras = set(req.extras) - extras.get(name, set())
        extras.setdefault(name, set()).update(req.extras)
        current = out.get(name)
        if name in pins:
            version = pins[name]
        elif current and specs[name].contains(Version(current[0]), prereleases=True):
            version = current[0]
        else:
            version = pick_version(Requirement(f"{req.name}{specs[name]}"))
        if current and current[0] == version and not new_extras:
            continue
        out[name] = (version, pick_file(name, version))
        for raw in requires(name, version):
            child = Requirement(raw)
            if child.marker is None or any(child.marker.evaluate({**ENV, "extra": e}) for e in ("", *extras[name])):
                queue.append(child)
    return out


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "docker" / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def apt_mb(packages: list[str]) -> float | None:
    try:
        deps = subprocess.run(
            ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
             "--no-breaks", "--no-replaces", "--no-enhances", *packages],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    names = sorted({line.strip() for line in deps.splitlines() if line and not line.startswith(" ") and "<" not in line})
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True).stdout
    total = 0
    for block in show.split("\n\n"):
        if re.search(r"^Priority: (required|important)$", block, re.M):
            continue
        m = re.search(r"^Size: (\d+)$", block, re.M)
        total += int(m.group(1)) if m else 0
    return total / 1e6


def mb(files: dict[str, tuple[str, dict]]) -> float:
    return sum(f["size"] for _, f in files.values()) / 1e6


def main() -> int:
    pins = constraints()
    torch_layer = resolve([f"torch=={pins['torch']}", "setuptools", "ninja", "packaging", "py-cpuinfo"], pins)
    everything = resolve([f"{n}=={v}" for n, v in pins.items()], pins)
    rest = {k: v for k, v in everything.items() if k not in torch_layer}
    base_cuda = resolve(RUNTIME_BASE_WHEELS, {})
    base_cuda = {k: base_cuda[k] for k in (canonicalize_name(r.split("==")[0]) for r in RUNTIME_BASE_WHEELS)}
    apt = apt_mb(APT_FINAL)
    project_mb = sum(p.stat().st_size for d in ("launcher", "jobs", "docker", "recipes")
                     for p in (REPO / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts) / 1e6

    rows = [
        ("nvidia/cuda:13.0.2-runtime-ubuntu24.04 (proxy: Ubuntu ~30 MB + the same CUDA libs as pip wheels)",
         UBUNTU_BASE_MB + mb(base_cuda)),
        ("apt layer: python3-dev, g++, openssh-server, ... (proxy: Debian 12 .deb sizes)", apt or 0.0),
        (f"venv: torch {pins['torch']} + its CUDA 13 wheels ({len(torch_layer)} files)", mb(torch_layer)),
        (f"venv: rest of sftlaunch[train,eval] closure ({len(rest)} files)", mb(rest)),
        ("project source (launcher, jobs, docker, recipes)", project_mb),
    ]
    print("Estimated compressed layer sizes (MB); ESTIMATES, the image was not built here")
    for label, size in rows:
        print(f"{size:10.0f}  {label}")
    total = sum(s for _, s in rows)
    print(f"{total:10.0f}  TOTAL (goal < 10000)")
    print()
    print("Largest wheels:")
    for name, (version, f) in sorted(everything.items(), key=lambda kv: -kv[1][1]["size"])[:12]:
        print(f"{f['size'] / 1e6:10.0f}  {name}=={version}  ({f['filename']})")
    dup = sum(base_cuda[k][1]["size"] for k in base_cuda if k in everything) / 1e6
    print()
    print(f"CUDA libraries present twice (runtime base and torch's wheels): ~{dup:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
