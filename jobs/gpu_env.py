"""What the host's GPUs, driver and CUDA build are, and the refusal to train on a GPU host that
shows no GPU.

Why: a node rented with GPUs whose driver is older than the image's CUDA needs (or whose GPUs
are not passed into the container) still runs Python, and torch then quietly says "no CUDA".
Left alone, the job trains on the CPU and exits 0 hours later, billed all the while. The check
runs before anything is loaded and fails in seconds with the facts a user needs: the driver
version, the CUDA version the image's torch was built for, the minimum driver that CUDA needs,
and what to do.

Minimum drivers (Linux) are NVIDIA's, from the CUDA Toolkit release notes, table "CUDA Toolkit
and Corresponding Driver Versions" / minor version compatibility: a CUDA 12.x build runs on a
driver >= 525.60.13, a CUDA 13.x build on >= 580.65.06.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# CUDA major version → the oldest Linux driver that runs any toolkit of that major version.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
PROC_VERSION = Path("/proc/driver/nvidia/version")


@dataclass
class GpuFacts:
    torch_version: str | None = None
    torch_cuda: str | None = None  # the CUDA torch was built for ("13.0"); None for a CPU build
    visible: int = 0  # GPUs torch can use
    names: list[str] = field(default_factory=list)
    driver: str | None = None  # the host's NVIDIA driver, when one is loaded
    cuda_error: str | None = None  # torch's own reason for "no CUDA", when it gives one

    def min_driver(self) -> str | None:
        if not self.torch_cuda:
            return None
        return MIN_DRIVER.get(int(self.torch_cuda.split(".")[0]))

    def driver_too_old(self) -> bool:
        need = self.min_driver()
        return bool(self.driver and need and _version(self.driver) < _version(need))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def driver_version(proc_file: Path = PROC_VERSION) -> str | None:
    """The loaded NVIDIA kernel driver's version: /proc first (no binary needed), then nvidia-smi."""
    try:
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", proc_file.read_text())
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else None


def gather() -> GpuFacts:
    """The facts, without raising: a broken CUDA set-up is exactly what this must describe."""
    facts = GpuFacts(driver=driver_version())
    try:
        import torch
    except ImportError as exc:
        facts.cuda_error = f"torch not importable ({exc})"
        return facts
    facts.torch_version = torch.__version__
    facts.torch_cuda = torch.version.cuda
    try:
        torch.cuda.init()  # raises with torch's own reason ("driver too old", "no NVIDIA driver")
        facts.visible = torch.cuda.device_count()
        facts.names = [torch.cuda.get_device_name(i) for i in range(facts.visible)]
    except Exception as exc:  # noqa: BLE001 - any failure here is the fact to report
        facts.cuda_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return facts


def describe(facts: GpuFacts) -> str:
    driver = facts.driver or "no NVIDIA driver loaded"
    cuda = f"CUDA {facts.torch_cuda}" if facts.torch_cuda else "a CPU-only build"
    return f"driver {driver}; torch {facts.torch_version or '?'} built for {cuda}"


def missing_gpus(expected: int, facts: GpuFacts) -> str | None:
    """Why this node cannot train on the `expected` GPUs it was rented with; None when it can."""
    if expected <= 0 or facts.visible >= expected:
        return None
    seen = f"torch sees {facts.visible} of the {expected} GPU(s) this node was launched with"
    reason = f" ({facts.cuda_error})" if facts.cuda_error else ""
    need = facts.min_driver()
    if not facts.torch_cuda:
        fix = "the image has a CPU-only torch: use the sftlaunch CUDA image (docs/image.md)"
    elif facts.driver_too_old():
        fix = (f"the driver {facts.driver} is older than CUDA {facts.torch_cuda} needs (>= {need}): pick "
               "another cloud/region, or build the image for an older CUDA (docs/image.md, CUDA_VERSION and "
               "TORCH_INDEX_URL)")
    elif not facts.driver:
        fix = ("no NVIDIA driver is loaded in the container: the GPUs were not passed in (docker --gpus / the "
               "NVIDIA container runtime) or the host has no driver; check `nvidia-smi` on the host")
    else:
        fix = ("the driver is recent enough, so the devices were not passed into the container or are in a bad "
               "state: run `nvidia-smi` on the node; relaunching on another node usually helps")
    return f"{seen}{reason}: {describe(facts)}. Not training on the CPU of a GPU node; {fix}"
