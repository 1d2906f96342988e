"""The budget guard's rate: the $/h of the offer SkyPilot actually launched, not the dearest choice.

Why: `up` renders several choices (SkyPilot's ordered resources, regions left free) and SkyPilot
launches whichever has capacity. Charging the dearest of them stopped cheap runs long before
max_usd (an L4 at $0.70/h charged $27.95/h). render hands the job every choice with its price
(Env.RATES, one entry per ordered choice, with the price in each region that sells it); SkyPilot
tells the job where it runs: SKYPILOT_CLUSTER_INFO (JSON with cloud, region, zone; written by
sky.backends.cloud_vm_ray_backend's _skypilot_predefined_env_vars) and SKYPILOT_NUM_GPUS_PER_NODE;
the GPU itself is visible (its CUDA name and memory). The entry those facts single out is charged
at its region's price. When they single out none, or several at different prices, the dearest of
the ones still possible is charged and the log says why: the budget must hold whatever ran.

Without a table (local runs, tests) Env.USD_PER_HOUR is the rate as given. Standard library
only, and no sky import: it runs inside the container.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sftcore.contract import Env, JobEnv

CLUSTER_INFO = "SKYPILOT_CLUSTER_INFO"  # SkyPilot's, not ours: {"cluster_name", "cloud", "region", "zone"}
NUM_GPUS = "SKYPILOT_NUM_GPUS_PER_NODE"
MEMORY_TOLERANCE = 0.15  # a card's CUDA-reported GiB vs the catalog's GB (80 GB cards report ~79.2)


@dataclass(frozen=True)
class Rate:
    """What the guard charges and for what: the offer (as the model card and run record name it)."""

    usd_per_hour: float
    cloud: str | None = None
    region: str | None = None
    accelerator: str | None = None
    count: int | None = None
    nodes: int = 1
    spot: bool | None = None
    how: str = ""  # how it was resolved, for the log (and why it fell back)

    def describe(self) -> str:
        """`gcp us-central1 1×A100-80GB spot $2.95/h` (for the log and the model card)."""
        if self.cloud is None:
            return f"${self.usd_per_hour:.2f}/h"
        nodes = f"{self.nodes} nodes × " if self.nodes > 1 else ""
        where = f"{self.cloud} {self.region}" if self.region else self.cloud
        return (f"{where} {nodes}{self.count}×{self.accelerator}{' spot' if self.spot else ''} "
                f"${self.usd_per_hour:.2f}/h")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def _form(text: str) -> str | None:
    """The form factor a name states: PCIe and NVL cards say so in their CUDA name ("NVIDIA H100
    PCIe", "NVIDIA H100 NVL"); an SXM card does not ("NVIDIA H100 80GB HBM3"), a SkyPilot name may."""
    t = _norm(text)
    return next((f for f in ("PCIE", "NVL", "SXM") if f in t), None)


def _extras(entry: dict[str, Any]) -> str:
    """What a SkyPilot name says beyond the family: "SXM" of H100-SXM, "80GB" of A100-80GB."""
    return "-".join(str(entry["accelerator"]).split("-")[1:])


def _gpu_matches(entry: dict[str, Any], device: tuple[str, float | None] | None) -> bool:
    """Whether the visible GPU can be this entry's accelerator: its family (the name's first part,
    e.g. A100 of A100-80GB) is in the CUDA name, a form factor the name states agrees (H100-SXM is
    no "H100 PCIe"), and its memory is the catalog's (when both are known)."""
    if device is None:
        return True
    name, gib = device
    acc = str(entry["accelerator"])
    family = _norm(acc.split("-")[0])
    if family and family not in _norm(name):
        return False
    wanted, seen = _form(_extras(entry)), _form(name) or "SXM"
    if wanted and wanted != seen:
        return False
    mem = entry.get("memory_gb")
    return not (gib and mem and abs(gib - float(mem)) > MEMORY_TOLERANCE * float(mem))


def _price(entry: dict[str, Any], region: str | None) -> tuple[float, str]:
    """The entry's $/h in `region`: pinned → its price; free → that region's from the table, or the
    dearest region's when the region is unknown or not in the table."""
    if entry.get("region"):
        return float(entry["usd_per_hour"]), "pinned region"
    by_region = entry.get("region_usd_per_hour") or {}
    if not by_region:  # one price everywhere (a Kubernetes cluster's declared one)
        return float(entry.get("usd_per_hour_max") or entry["usd_per_hour"]), "its one price"
    if region and region in by_region:
        return float(by_region[region]), f"the price in {region}"
    dearest = float(entry.get("usd_per_hour_max") or entry["usd_per_hour"])
    why = f"{region} is not in the price table" if region else "SkyPilot did not say the region"
    return dearest, f"{why}; charging the dearest region"


def _cluster(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    try:
        info = json.loads(env.get(CLUSTER_INFO) or "{}")
    except ValueError:
        return None, None
    if not isinstance(info, dict):
        return None, None
    cloud = str(info["cloud"]).lower() if info.get("cloud") else None
    return cloud, (str(info["region"]) if info.get("region") else None)


def _gpus(env: Mapping[str, str]) -> int | None:
    try:
        return int(env.get(NUM_GPUS) or "")
    except ValueError:
        return None


def resolve(env: Mapping[str, str] | None = None, device: tuple[str, float | None] | None = None) -> Rate | None:
    """The rate to charge, or None when the run has no price (the guard is then off).

    `device`: the visible GPU's (CUDA name, GiB), or None when there is none to look at."""
    env = os.environ if env is None else env
    job = JobEnv.from_env(env)
    usd = job.usd_per_hour
    if not job.rates:
        return Rate(usd, how=f"{Env.USD_PER_HOUR} as given") if usd is not None else None
    try:
        table = [e for e in json.loads(job.rates) if isinstance(e, dict) and e.get("usd_per_hour") is not None]
    except (ValueError, TypeError):
        table = []
    if not table:
        return Rate(usd, how=f"{Env.RATES} unreadable; {Env.USD_PER_HOUR} as given") if usd is not None else None
    cloud, region = _cluster(env)
    gpus = _gpus(env)
    steps = [
        ("cloud", lambda e: cloud is not None and str(e["cloud"]).lower() == cloud),
        ("region", lambda e: not e.get("region") or region is None or e["region"] == region),
        ("GPU count", lambda e: gpus is None or int(e["count"]) == gpus),
        ("GPU", lambda e: _gpu_matches(e, device)),
    ]
    left, why = table, ""
    for label, keep in steps:
        narrowed = [e for e in left if keep(e)]
        if not narrowed:
            why = f"no choice matches the launched {label} ({_said(label, cloud, region, gpus, device)})"
            break
        left = narrowed
    if device is not None and not why:
        # A name that states the card's form factor beats one that states none: on RunPod,
        # "H100-SXM" is the SXM card and plain "H100" the PCIe one ("NVIDIA H100 PCIe").
        stated = [e for e in left if _form(_extras(e)) == (_form(device[0]) or "SXM")]
        left = stated or left
    priced = [(*_price(e, region), e) for e in left]
    usd, how, entry = max(priced, key=lambda x: x[0])
    if why:
        how = f"{why}; charging the dearest choice"
    elif len({round(p, 4) for p, _, _ in priced}) > 1:
        names = ", ".join(sorted({f"{e['count']}×{e['accelerator']}" for _, _, e in priced}))
        how = f"cannot tell {names} apart on this machine; charging the dearest"
    return Rate(usd, str(entry["cloud"]), entry.get("region") or region, str(entry["accelerator"]), int(entry["count"]),
                int(entry.get("nodes") or 1), bool(entry.get("spot")), how)


def _said(label: str, cloud, region, gpus, device) -> str:
    return {"cloud": f"cloud {cloud}", "region": f"region {region}", "GPU count": f"{gpus} GPUs per node",
            "GPU": f"device {device[0] if device else None!r}"}[label]


def visible_device() -> tuple[str, float | None] | None:
    """The first CUDA device's name and GiB, or None without one (CPU runs, no torch)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return props.name, props.total_memory / 2**30
    except Exception:  # noqa: BLE001 - a rate without the GPU check is still a rate
        return None
