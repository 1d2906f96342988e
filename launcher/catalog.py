"""GPU specs, prices, model shapes and workload assumptions, loaded from launcher/data/*.yaml.

Why data files: prices change monthly and MFU figures are assumptions worth arguing with; keeping
them out of code lets `plan --refresh-prices` rewrite prices and lets a reviewer see every number
the planner uses in one place, with its source and date.

Three inputs live outside the package, under $SFTLAUNCH_HOME (default ~/.sftlaunch), because they
belong to the user, not to a release:
  prices.yaml        the snapshot `plan --refresh-prices` wrote (preferred over the packaged one
                     unless the packaged snapshot is newer, e.g. after an upgrade);
  kubernetes.yaml    the GPUs of the user's own cluster (or env SFTLAUNCH_K8S_GPUS): a cluster
                     has no public catalog, so without it Kubernetes offers nothing to `gpu: auto`;
  model-configs/     config.json files fetched from the Hub (HF_ENDPOINT, default huggingface.co;
                     HF_TOKEN as a Bearer token; never asked when HF_HUB_OFFLINE=1) for models
                     not in models.yaml.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from launcher.contract import Env
from launcher.errors import UserError, one_line
from launcher.home import sftlaunch_home

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
# GPUs


def gpus() -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _load("gpus.yaml").items() if k != "tflops_by_cloud"}


def gpu_names() -> list[str]:
    """Accelerator names a user may ask for (the CPU pseudo-entry is for local runs only)."""
    return [k for k in gpus() if k != "CPU"]


def canonical_gpu(name: str) -> str | None:
    """The catalog's spelling of `name` (case-insensitive), or None when it is not a known GPU."""
    return {k.lower(): k for k in gpu_names()}.get(name.lower())


def unknown_gpu_message(name: str) -> str:
    names = gpu_names()
    upper = {n.upper(): n for n in names}
    close = difflib.get_close_matches(name.upper(), list(upper), n=1, cutoff=0.5)
    guess = f"did you mean {upper[close[0]]}? " if close else ""
    return f"unknown GPU {name!r}; {guess}known GPUs: {', '.join(names)}"


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


# ---------------------------------------------------------------------------------------------
# Prices


@dataclass(frozen=True)
class Offer:
    cloud: str
    gpu: str
    count: int
    on_demand: float  # $/h per GPU
    spot: float | None
    region: str | None
    assumed: bool = False  # not from a catalog or an inventory: an explicit gpu on Kubernetes


def user_prices_path() -> Path:
    return sftlaunch_home() / "prices.yaml"


def prices_path() -> Path:
    """The refreshed snapshot in $SFTLAUNCH_HOME when it exists and is not older than the packaged one."""
    user = user_prices_path()
    if user.is_file():
        data = _user_yaml(user)
        if not (isinstance(data, dict) and isinstance(data.get("clouds"), dict) and data.get("snapshot_date")):
            raise UserError(f"{user}: not a price snapshot (needs snapshot_date and clouds); delete it to use the "
                            "packaged prices, or rerun `sftlaunch plan RECIPE --refresh-prices`")
        if str(data["snapshot_date"]) >= str(_load("prices.yaml")["snapshot_date"]):
            return user
    return DATA / "prices.yaml"


def prices() -> dict[str, Any]:
    path = prices_path()
    data = _user_yaml(path) if path != DATA / "prices.yaml" else _load("prices.yaml")
    data["snapshot_date"] = str(data["snapshot_date"])  # an unquoted date in YAML loads as a date
    return data


def offers(cloud: str) -> list[Offer]:
    if cloud == "kubernetes":
        return kubernetes_offers()
    out = []
    for row in prices()["clouds"].get(cloud, []):
        for count in row["counts"]:
            out.append(Offer(cloud, row["gpu"], int(count), float(row["on_demand"]),
                             None if row.get("spot") is None else float(row["spot"]), row.get("region")))
    return out


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


# ---------------------------------------------------------------------------------------------
# Refreshing prices from SkyPilot's catalogs


def _sky_accelerators(sky_catalog: Any, cloud: str) -> dict[str, list[Any]]:
    """SkyPilot's offers for one cloud, with its spinner payloads and log lines kept off the terminal."""
    import logging

    from sky import sky_logging

    logging.disable(logging.CRITICAL)
    try:
        with sky_logging.silent():
            return sky_catalog.list_accelerators(gpus_only=True, clouds=cloud, case_sensitive=True)
    finally:
        logging.disable(logging.NOTSET)


def _price_rows(rows: list[dict[str, Any]], found: dict[str, list[Any]]) -> tuple[list[dict[str, Any]], int]:
    """Each count priced from its own catalog row (a 1x and an 8x instance differ per GPU);
    counts with equal prices are merged back into one row. Offers SkyPilot does not list keep
    their previous price. Returns the rows and how many counts were priced from the catalog."""
    priced: list[dict[str, Any]] = []
    matched = 0
    for row in rows:
        for count in row["counts"]:
            items = [i for i in found.get(row["gpu"], []) if int(i.accelerator_count) == int(count)
                     and i.price == i.price and i.price]
            new = dict(row, counts=[int(count)])
            if items:
                best = min(items, key=lambda i: i.price)
                spots = [i.spot_price for i in items if i.spot_price == i.spot_price and i.spot_price]
                new.update(on_demand=round(float(best.price) / count, 2),
                           spot=round(float(min(spots)) / count, 2) if spots else None, region=best.region)
                matched += 1
            priced.append(new)
    merged: list[dict[str, Any]] = []
    for row in priced:
        last = merged[-1] if merged else None
        same = last is not None and all(last.get(k) == row.get(k) for k in set(last) | set(row) if k != "counts")
        if same:
            last["counts"].append(row["counts"][0])
        else:
            merged.append(row)
    return merged, matched


def refresh_prices() -> str:
    """Write $SFTLAUNCH_HOME/prices.yaml from SkyPilot's catalogs (needs network and the cloud extra).

    Never writes into the package; leaves the snapshot (and its date) alone when nothing changed.
    Raises RuntimeError with one line when no cloud's catalog could be read.
    """
    from datetime import date

    try:
        from sky import catalog as sky_catalog
    except ImportError:
        raise RuntimeError("needs SkyPilot: pip install 'sftlaunch[cloud]'") from None

    current = prices()
    data = copy.deepcopy(current)
    failed: dict[str, str] = {}
    matched = 0
    for cloud, rows in current["clouds"].items():
        if cloud == "kubernetes":
            continue  # the user's own cluster has no list price (see kubernetes.yaml)
        try:
            found = _sky_accelerators(sky_catalog, cloud)
        except Exception as exc:  # noqa: BLE001 - offline, or a catalog SkyPilot cannot parse
            failed[cloud] = one_line(exc, with_type=True, limit=200)
            continue
        data["clouds"][cloud], n = _price_rows(rows, found)
        matched += n
    if failed and len(failed) == len([c for c in current["clouds"] if c != "kubernetes"]):
        cloud, why = next(iter(failed.items()))
        raise RuntimeError(f"{cloud}: {why}")
    skipped = f"; not read: {', '.join(f'{c} ({w})' for c, w in failed.items())}" if failed else ""
    if data["clouds"] == current["clouds"]:
        return f"prices unchanged since the snapshot of {current['snapshot_date']}; nothing written{skipped}"
    data["snapshot_date"] = date.today().isoformat()
    data["source"] = "SkyPilot catalogs via sftlaunch plan --refresh-prices"
    out = user_prices_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Written by `sftlaunch plan --refresh-prices` from SkyPilot's catalogs; preferred over the\n"
              "# packaged launcher/data/prices.yaml while its snapshot_date is not older. Delete it to go back.\n")
    tmp = out.with_suffix(".yaml.tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(out)
    return f"wrote {out}: {matched} offers priced from SkyPilot's catalogs (snapshot {data['snapshot_date']}){skipped}"
