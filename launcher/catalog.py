"""GPU specs, prices, model shapes and workload assumptions, loaded from launcher/data/*.yaml.

Why data files: prices change monthly and MFU figures are assumptions worth arguing with; keeping
them out of code lets `plan --refresh-prices` rewrite prices and lets a reviewer see every number
the planner uses in one place, with its source and date.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).resolve().parent / "data"


@functools.cache
def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DATA / name).read_text())


def gpus() -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _load("gpus.yaml").items() if k != "tflops_by_cloud"}


def gpu_tflops(gpu: str, cloud: str | None = None, count: int | None = None) -> float:
    """A cloud may sell a different card under one name, sometimes only at one count
    (Lambda's 1x H100 is gpu_1x_h100_pcie, its 2-8x are SXM5): "GPU:count" keys win."""
    by_cloud = _load("gpus.yaml").get("tflops_by_cloud", {})
    if cloud and count and f"{gpu}:{count}" in by_cloud.get(cloud, {}):
        return float(by_cloud[cloud][f"{gpu}:{count}"])
    if cloud and gpu in by_cloud.get(cloud, {}):
        return float(by_cloud[cloud][gpu])
    return float(gpus()[gpu]["bf16_tflops"])


def gpu_memory_gb(gpu: str) -> float:
    return float(gpus()[gpu]["memory_gb"])


@dataclass(frozen=True)
class Offer:
    cloud: str
    gpu: str
    count: int
    on_demand: float  # $/h per GPU
    spot: float | None
    region: str | None


def prices() -> dict[str, Any]:
    return _load("prices.yaml")


def offers(cloud: str) -> list[Offer]:
    out = []
    for row in prices()["clouds"].get(cloud, []):
        for count in row["counts"]:
            out.append(Offer(cloud, row["gpu"], int(count), float(row["on_demand"]),
                             None if row.get("spot") is None else float(row["spot"]), row.get("region")))
    return out


def models() -> dict[str, dict[str, Any]]:
    return _load("models.yaml")


def workloads() -> dict[str, Any]:
    return _load("workloads.yaml")


def model_shape(model_id: str) -> dict[str, Any] | None:
    """The offline table first; for a local model directory, its config.json."""
    table = models()
    if model_id in table:
        return table[model_id]
    lowered = {k.lower(): v for k, v in table.items()}
    if model_id.lower() in lowered:
        return lowered[model_id.lower()]
    cfg = Path(model_id).expanduser() / "config.json"
    if cfg.is_file():
        return shape_from_config(yaml.safe_load(cfg.read_text()))
    return None


def shape_from_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A Llama-like shape from a Hugging Face config.json (used for local model directories)."""
    h = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    inter = int(cfg.get("intermediate_size") or 4 * h)
    heads = int(cfg.get("num_attention_heads", 1))
    kv = int(cfg.get("num_key_value_heads") or heads)
    vocab = int(cfg.get("vocab_size", 32000))
    kv_dim = h // heads * kv
    linear = {"q_proj": [h, h], "k_proj": [h, kv_dim], "v_proj": [h, kv_dim], "o_proj": [h, h],
              "gate_proj": [h, inter], "up_proj": [h, inter], "down_proj": [inter, h]}
    per_layer = sum(i * o for i, o in linear.values())
    tied = bool(cfg.get("tie_word_embeddings", False))
    params = layers * per_layer + vocab * h * (1 if tied else 2)
    return {"params_b": params / 1e9, "hidden": h, "layers": layers, "intermediate": inter, "heads": heads,
            "kv_heads": kv, "vocab": vocab, "tied": tied, "linear": linear}


def refresh_prices() -> str:
    """Rewrite prices.yaml from SkyPilot's catalogs (needs network and the cloud extra)."""
    from datetime import date

    try:
        from sky import catalog as sky_catalog  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("needs SkyPilot: pip install 'sftlaunch[cloud]'") from exc
    from sky import catalog as sky_catalog

    data = prices()
    changed = 0
    for cloud, rows in data["clouds"].items():
        if cloud == "kubernetes":
            continue  # the user's own cluster has no list price
        for row in rows:
            count = row["counts"][0]
            found = sky_catalog.list_accelerators(gpus_only=True, name_filter=row["gpu"], quantity_filter=count,
                                                   clouds=cloud, case_sensitive=True)
            items = [i for i in found.get(row["gpu"], []) if i.accelerator_count == count]
            if not items:
                continue
            best = min(items, key=lambda i: i.price)
            row["on_demand"] = round(float(best.price) / count, 2)
            spot = [i.spot_price for i in items if i.spot_price == i.spot_price and i.spot_price]
            row["spot"] = round(float(min(spot)) / count, 2) if spot else None
            row["region"] = best.region
            changed += 1
    data["snapshot_date"] = date.today().isoformat()
    data["source"] = "SkyPilot catalogs via sftlaunch plan --refresh-prices"
    (DATA / "prices.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    _load.cache_clear()
    return f"updated {changed} price rows (snapshot {data['snapshot_date']})"
