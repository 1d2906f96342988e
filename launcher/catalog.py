"""GPU facts, model shapes and workload assumptions (launcher/data/*.yaml), and every cloud's offers.

Why data files: MFU figures and datasheet TFLOP/s are assumptions worth arguing with; keeping
them out of code lets a reviewer see every number the planner uses in one place, with its source.
Offers (GPU types, counts, regions, prices) are not ours: they come from SkyPilot's catalog
(launcher/offers.py); gpus.yaml keeps only what that catalog lacks or gets wrong.

Inputs outside the package, under $SFTLAUNCH_HOME (default ~/.sftlaunch), belong to the user:
  offers-cache.json  the offers read from SkyPilot's catalog (launcher/offers.py);
  kubernetes.yaml    the GPUs of the user's own cluster (or env SFTLAUNCH_K8S_GPUS): a cluster
                     has no public catalog, so without it Kubernetes offers nothing to `gpu: auto`;
  model-configs/     config.json files fetched from the Hub (HF_ENDPOINT, default huggingface.co;
                     HF_TOKEN as a Bearer token; never asked when HF_HUB_OFFLINE=1) for models
                     not in models.yaml.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from launcher import offers as offers_mod
from launcher.home import sftlaunch_home
from sftcore.contract import Env
from sftcore.errors import UserError, one_line

DATA = Path(__file__).resolve().parent / "data"
K8S_ENV = Env.K8S_GPUS
K8S_PRICE_ENV = Env.K8S_USD_PER_GPU_HOUR
HUB_TIMEOUT_S = 5


@functools.cache
def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DATA / name).read_text())


@functools.lru_cache(maxsize=8)
def _load_user_yaml(path: str, _mtime: float) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path}: cannot read it ({one_line(exc)}); fix or delete the file") from None


def _user_yaml(path: Path) -> Any:
    """A user-owned YAML file, re-read when it changes (tests and refreshes rewrite them)."""
    return _load_user_yaml(str(path), path.stat().st_mtime)


# ---------------------------------------------------------------------------------------------
# GPUs: offers from SkyPilot's catalog (launcher.offers) + the facts it lacks (gpus.yaml)

Offer = offers_mod.Offer


def gpus() -> dict[str, dict[str, Any]]:
    """Per-GPU facts the catalog lacks (TFLOP/s, bf16, arch, memory where the catalog is wrong)."""
    return {k: v for k, v in _load("gpus.yaml").items() if k != "tflops_by_cloud"}


def gpu_names() -> list[str]:
    """Accelerator names a user may ask for: every catalog cloud's, spelled as SkyPilot spells
    them, plus the few only known locally (the CPU pseudo-entry is for local runs only)."""
    names = {n for per in offers_mod.catalog_names().values() for n in per}
    names |= {k for k in gpus() if k != "CPU"}
    return sorted(names)


def canonical_gpu(name: str) -> str | None:
    """The catalog's spelling of `name` (case-insensitive), or None when it is not a known GPU."""
    return {k.lower(): k for k in gpu_names()}.get(name.lower())


def did_you_mean(name: str, names: list[str]) -> str | None:
    """A near miss: a longer spelling of the same GPU first (H200 → H200-SXM), else the closest."""
    upper = {n.upper(): n for n in names}
    close = sorted(u for u in upper if u.startswith(name.upper()) and u != name.upper())[:1]
    close = close or difflib.get_close_matches(name.upper(), list(upper), n=1, cutoff=0.5)
    return upper[close[0]] if close else None


def unknown_gpu_message(name: str) -> str:
    names = gpu_names()
    guess = did_you_mean(name, names)
    hint = f"did you mean {guess}? " if guess else ""
    return f"unknown GPU {name!r}; {hint}known GPUs: {', '.join(names)}"


def gpu_tflops(gpu: str, cloud: str | None = None, count: int | None = None) -> float:
    """A cloud may sell a different card under one name, sometimes only at one count
    (Lambda's cheapest 1x H100 is gpu_1x_h100_pcie, its 2-8x are SXM5): "GPU:count" keys win."""
    by_cloud = _load("gpus.yaml").get("tflops_by_cloud", {})
    if cloud and count and f"{gpu}:{count}" in by_cloud.get(cloud, {}):
        return float(by_cloud[cloud][f"{gpu}:{count}"])
    if cloud and gpu in by_cloud.get(cloud, {}):
        return float(by_cloud[cloud][gpu])
    return float(gpus()[gpu]["bf16_tflops"])


def gpu_memory_gb(gpu: str, offer: Offer | None = None) -> float:
    """The catalog's device memory, unless it is implausible (RunPod writes GB in a MiB field,
    so SkyPilot reads 80 MiB for an 80 GB card) or absent: then gpus.yaml's figure."""
    if offer is not None and offer.memory_gib and offer.memory_gib >= 4:
        return float(offer.memory_gib)
    spec = gpus().get(gpu, {})
    if "memory_gb" in spec:
        return float(spec["memory_gb"])
    for cloud in offers_mod.CATALOG_CLOUDS:  # e.g. a Kubernetes GPU named as GCP sells it
        for o in offers_mod.catalog_offers(cloud):
            if o.gpu == gpu and o.memory_gib and o.memory_gib >= 4:
                return float(o.memory_gib)
    raise KeyError(gpu)


def unusable_reason(offer: Offer) -> str | None:
    """Why the planner cannot use a catalog offer (said in `plan`), or None."""
    spec = gpus().get(offer.gpu)
    if spec is not None and spec.get("vendor", "NVIDIA") != "NVIDIA":
        return f"{offer.gpu} is an {spec['vendor']} GPU; the sftlaunch image is built on CUDA"
    if spec is None or "bf16_tflops" not in spec:
        return f"{offer.gpu}: no TFLOP/s figure in launcher/data/gpus.yaml, so its time and cost cannot be estimated"
    if spec.get("arch", "x86_64") != "x86_64":
        return f"{offer.gpu} has an {spec['arch']} host; the sftlaunch image is built for amd64 only"
    try:
        gpu_memory_gb(offer.gpu, offer)
    except KeyError:
        return f"{offer.gpu}: the catalog's memory figure is implausible and gpus.yaml has none"
    return None


def has_bf16(gpu: str) -> bool:
    return bool(gpus().get(gpu, {}).get("bf16", True))


def offers(cloud: str) -> list[Offer]:
    if cloud == "kubernetes":
        return kubernetes_offers()
    return offers_mod.catalog_offers(cloud)


# ---------------------------------------------------------------------------------------------
# Kubernetes: the user's own cluster


def kubernetes_file() -> Path:
    return sftlaunch_home() / "kubernetes.yaml"


def _k8s_counts(count: int) -> list[int]:
    """A pod may ask for any share of a node's GPUs; offer the powers of two and the whole node."""
    return sorted({c for c in (1, 2, 4, 8, 16) if c <= count} | {count})


def _k8s_entry(name: Any, count: Any, price: Any, where: str) -> tuple[str, int, float]:
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: name: give the GPU model, e.g. H100")
    gpu = canonical_gpu(name)
    if gpu is None:
        raise UserError(f"{where}: name: {unknown_gpu_message(name)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"{where}: count: GPUs per node must be a positive integer, got {count!r}")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
        raise UserError(f"{where}: usd_per_hour: a price per GPU-hour ≥ 0, got {price!r}")
    return gpu, count, float(price)


def _env_price() -> float:
    raw = os.environ.get(K8S_PRICE_ENV, "") or "0"
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"{K8S_PRICE_ENV}={raw!r}: a price per GPU-hour ≥ 0, e.g. 1.20")
    return value


def kubernetes_inventory() -> tuple[list[tuple[str, int, float]], str | None]:
    """(gpu, GPUs per node, $ per GPU-hour) the user declared, and where it came from.

    SFTLAUNCH_K8S_GPUS="H100:8,A100-80GB:8" wins over $SFTLAUNCH_HOME/kubernetes.yaml
    (`gpus: [{name: H100, count: 8, usd_per_hour: 0}]`); entries from the variable are priced at
    SFTLAUNCH_K8S_USD_PER_GPU_HOUR (default 0).
    """
    env = os.environ.get(K8S_ENV, "").strip()
    if env:
        out = []
        for item in (p.strip() for p in env.split(",")):
            name, sep, count = item.partition(":")
            if not sep or not count.strip().isdigit():
                raise UserError(f'{K8S_ENV}: {item!r}: write NAME:COUNT entries, e.g. "H100:8,A100-80GB:8"')
            out.append(_k8s_entry(name.strip(), int(count), _env_price(), f"{K8S_ENV}: {item}"))
        return out, K8S_ENV
    path = kubernetes_file()
    if not path.is_file():
        return [], None
    data = _user_yaml(path)
    entries = data.get("gpus") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: gpus: list your cluster's GPUs, e.g. `gpus: [{{name: H100, count: 8, usd_per_hour: 0}}]`")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise UserError(f"{path}: gpus[{i}]: a mapping {{name, count, usd_per_hour}}, got {e!r}")
        unknown = sorted(set(e) - {"name", "count", "usd_per_hour"})
        if unknown:
            raise UserError(f"{path}: gpus[{i}]: unknown key {unknown[0]}; use name, count, usd_per_hour")
        out.append(_k8s_entry(e.get("name"), e.get("count"), e.get("usd_per_hour", 0), f"{path}: gpus[{i}]"))
    return out, str(path)


def kubernetes_offers() -> list[Offer]:
    inventory, _ = kubernetes_inventory()
    return [Offer("kubernetes", gpu, c, price, None, None) for gpu, count, price in inventory for c in _k8s_counts(count)]


def kubernetes_assumed_offer(gpu: str, count: int) -> Offer:
    """An explicit GPU on Kubernetes: the cluster is assumed to have it, at its declared price or $0."""
    inventory, _ = kubernetes_inventory()
    price = next((p for g, _c, p in inventory if g == gpu), 0.0)
    return Offer("kubernetes", gpu, count, price, None, None, assumed=True)


def kubernetes_help(suggest_explicit_gpu: bool = True) -> str:
    """How to tell the planner what the cluster has; the explicit-GPU way out only where it helps
    (a note about an explicit GPU that was assumed would only repeat it)."""
    text = (f"declare your cluster's GPUs in {kubernetes_file()} (gpus: [{{name: H100, count: 8, usd_per_hour: 0}}]) "
            f'or {K8S_ENV}="H100:8"')
    return text + ", or set resources.gpu explicitly" if suggest_explicit_gpu else text


# ---------------------------------------------------------------------------------------------
# Models


def models() -> dict[str, dict[str, Any]]:
    return _load("models.yaml")


def workloads() -> dict[str, Any]:
    return _load("workloads.yaml")


class HubConfigError(Exception):
    """The Hub answered but would not give config.json (gated, private, missing)."""


class HubUnreachable(Exception):
    """The Hub could not be asked (offline, HF_HUB_OFFLINE, timeout)."""


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _config_cache(model_id: str, revision: str | None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "--", model_id)
    rev = re.sub(r"[^A-Za-z0-9._-]", "--", revision or "main")
    host = re.sub(r"[^A-Za-z0-9._-]", "_", urllib.parse.urlsplit(hub_endpoint()).netloc or "hub")
    return sftlaunch_home() / "model-configs" / host / f"{safe}@{rev}.json"


def hub_config(model_id: str, revision: str | None = None) -> dict[str, Any]:
    """config.json of a Hub model: from the cache, else fetched (stdlib only, HF_TOKEN as Bearer)."""
    cache = _config_cache(model_id, revision)
    if cache.is_file():
        try:
            return json.loads(cache.read_text(encoding="utf-8"))
        except ValueError:
            cache.unlink(missing_ok=True)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise HubUnreachable("HF_HUB_OFFLINE is set, so the Hub was not asked")
    url = f"{hub_endpoint()}/{model_id}/resolve/{urllib.parse.quote(revision or 'main', safe='')}/config.json"
    request = urllib.request.Request(url, headers={"User-Agent": "sftlaunch-planner"})
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        page = f"{hub_endpoint()}/{model_id}"
        if exc.code in (401, 403):
            fix = ("the token in HF_TOKEN was refused: accept the model's licence with that account at "
                   f"{page}" if token else f"set HF_TOKEN to a token whose account has accepted the licence at {page}")
            raise HubConfigError(f"the Hub refused config.json (HTTP {exc.code}: gated or private model); {fix}") from None
        if exc.code == 404:
            raise HubConfigError(f"the Hub has no config.json for it at revision {revision or 'main'} (HTTP 404); "
                                 "check model.id and model.revision") from None
        raise HubUnreachable(f"the Hub answered HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HubUnreachable(f"the Hub at {hub_endpoint()} was unreachable ({reason})") from None
    try:
        cfg = json.loads(body)
    except ValueError:
        raise HubConfigError(f"{url} is not JSON") from None
    if not isinstance(cfg, dict):
        raise HubConfigError(f"{url} is not a config mapping")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(cfg), encoding="utf-8")
    return cfg


def model_shape(model_id: str, revision: str | None = None) -> dict[str, Any] | None:
    """The offline table first; then a local model directory's config.json; then the Hub's.

    None when `model_id` is neither in the table nor a Hub id; HubUnreachable when the Hub could
    not be asked (offline) and HubConfigError when it answered without a usable config (gated,
    missing): each needs a different fix, so the caller words them differently.
    """
    table = models()
    if model_id in table:
        return table[model_id]
    lowered = {k.lower(): v for k, v in table.items()}
    if model_id.lower() in lowered:
        return lowered[model_id.lower()]
    cfg = Path(model_id).expanduser() / "config.json"
    if cfg.is_file():
        return shape_from_config(yaml.safe_load(cfg.read_text()))
    if model_id.count("/") != 1 or model_id.startswith((".", "/", "~")):
        return None
    try:
        return shape_from_config(hub_config(model_id, revision))
    except (KeyError, TypeError, ValueError) as exc:
        raise HubConfigError(f"its config.json lacks what the planner needs ({exc}); add its shape to "
                             "launcher/data/models.yaml") from None


def shape_from_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A Llama-like (or Mixtral-like MoE) shape from a Hugging Face config.json."""
    h = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    inter = int(cfg.get("intermediate_size") or 4 * h)
    heads = int(cfg.get("num_attention_heads", 1))
    kv = int(cfg.get("num_key_value_heads") or heads)
    vocab = int(cfg.get("vocab_size", 32000))
    head_dim = int(cfg.get("head_dim") or h // heads)
    q_dim, kv_dim = head_dim * heads, head_dim * kv
    attn = {"q_proj": [h, q_dim], "k_proj": [h, kv_dim], "v_proj": [h, kv_dim], "o_proj": [q_dim, h]}
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    tied = bool(cfg.get("tie_word_embeddings", False))
    emb = vocab * h * (1 if tied else 2)
    attn_params = sum(i * o for i, o in attn.values())
    shape: dict[str, Any] = {"hidden": h, "layers": layers, "intermediate": inter, "heads": heads,
                             "kv_heads": kv, "vocab": vocab, "tied": tied}
    if experts > 1:
        inter = int(cfg.get("moe_intermediate_size") or inter)
        active = int(cfg.get("num_experts_per_tok") or 2)
        mlp = {"w1": [h, inter], "w3": [h, inter], "w2": [inter, h]}
        mlp_params = sum(i * o for i, o in mlp.values())
        router = h * experts
        shape.update(params_b=(layers * (attn_params + experts * mlp_params + router) + emb) / 1e9,
                     active_params_b=(layers * (attn_params + active * mlp_params + router) + emb) / 1e9,
                     experts={"total": experts, "active": active}, linear={**attn, **mlp})
        return shape
    mlp = {"gate_proj": [h, inter], "up_proj": [h, inter], "down_proj": [inter, h]}
    per_layer = attn_params + sum(i * o for i, o in mlp.values())
    shape.update(params_b=(layers * per_layer + emb) / 1e9, linear={**attn, **mlp})
    return shape
