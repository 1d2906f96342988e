"""GPU offers derived from SkyPilot's own catalog, cached so `plan` never imports sky.

Why: a hand-kept price list drifts from what SkyPilot will actually launch (names RunPod does
not sell, counts Lambda does not sell, GCP prices off by 2x). SkyPilot already keeps every
cloud's GPU types, counts, regions and on-demand/spot prices in its catalog CSVs
(`~/.sky/catalogs/v8/<cloud>/vms.csv`); the planner reads those, through SkyPilot's own
`sky.catalog.list_accelerators(..., all_regions=True)`, and keeps only the facts the catalog
lacks in launcher/data/gpus.yaml (launcher.catalog).

Sources, in order:
  1. the user's SkyPilot catalog: when `sky` is installed and its CSVs exist, SkyPilot is run
     once in a subprocess (importing sky costs seconds) and the result is stored compactly in
     $SFTLAUNCH_HOME/offers-cache.json, keyed on each CSV's mtime and size; a warm `plan`
     reads only that JSON. When SkyPilot re-downloads a CSV, the key changes and the cache is
     rebuilt.
  2. the packaged snapshot launcher/data/offers-snapshot.json, written by
     scripts/snapshot_offers.py from SkyPilot's CSVs (never typed by hand), for installs
     without the `cloud` extra.
Each offer is one (cloud, GPU, count): priced at the cheapest region that sells it, with the
most expensive region's price kept so `plan` can show the spread.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from launcher.home import sftlaunch_home
from sftcore.errors import UserError, one_line

CATALOG_CLOUDS = ("lambda", "runpod", "gcp")  # clouds with a public SkyPilot catalog
CATALOG_VERSION = "v8"  # sky.skylet.constants.CATALOG_SCHEMA_VERSION in SkyPilot 0.14
SNAPSHOT = Path(__file__).resolve().parent / "data" / "offers-snapshot.json"
CACHE_FORMAT = 2  # 2: per-region prices (region_prices, spot_region_prices)
BUILD_TIMEOUT_S = 120


@dataclass(frozen=True)
class Offer:
    cloud: str
    gpu: str
    count: int
    on_demand: float  # $/h per GPU, cheapest region
    spot: float | None
    region: str | None  # cheapest on-demand region (None: any)
    assumed: bool = False  # not from a catalog or an inventory: an explicit gpu on Kubernetes
    on_demand_max: float | None = None  # $/h per GPU in the dearest region
    spot_max: float | None = None
    spot_region: str | None = None
    regions: int = 1
    memory_gib: float | None = None  # device memory as the catalog states it (may be wrong)
    instance_type: str | None = None
    # $/h per GPU in every region that sells it ({} when unknown, e.g. Kubernetes): what pinned
    # regions are planned with, and what the job's budget guard charges in the region it runs in.
    region_prices: dict[str, float] = field(default_factory=dict, hash=False, compare=False)
    spot_region_prices: dict[str, float] = field(default_factory=dict, hash=False, compare=False)

    def price(self, spot: bool) -> float | None:
        return self.spot if spot else self.on_demand

    def price_max(self, spot: bool) -> float | None:
        return (self.spot_max if spot else self.on_demand_max) or self.price(spot)

    def region_for(self, spot: bool) -> str | None:
        return self.spot_region if spot else self.region

    def prices_by_region(self, spot: bool) -> dict[str, float]:
        return self.spot_region_prices if spot else self.region_prices

    def in_regions(self, regions: list[str]) -> Offer | None:
        """This offer as sold in `regions` only (cheapest and dearest of those), or None when
        none of them sells it. An offer without per-region prices (Kubernetes) is kept as it is."""
        if not self.region_prices:
            return self
        od = {r: p for r, p in self.region_prices.items() if r in regions}
        if not od:
            return None
        sp = {r: p for r, p in self.spot_region_prices.items() if r in regions}
        region = min(od, key=lambda r: (od[r], r))
        spot_region = min(sp, key=lambda r: (sp[r], r)) if sp else None
        return dataclasses.replace(
            self, on_demand=od[region], region=region, on_demand_max=max(od.values()), regions=len(od),
            spot=sp[spot_region] if sp else None, spot_region=spot_region, spot_max=max(sp.values()) if sp else None,
            region_prices=od, spot_region_prices=sp)


@dataclass
class OfferTable:
    """Every catalog cloud's offers, and where they came from."""

    source: str  # "skypilot" | "snapshot"
    date: str  # when the catalog data was fetched (YYYY-MM-DD)
    path: str
    rows: dict[str, list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = "SkyPilot's catalog" if self.source == "skypilot" else "the packaged snapshot of SkyPilot's catalog"
        return f"{what} of {self.date} ({self.path})"


def sky_catalog_dir() -> Path:
    """Where SkyPilot keeps its CSVs (sky.catalog.common resolves ~ through SKY_RUNTIME_DIR)."""
    root = os.environ.get("SKY_RUNTIME_DIR") or str(Path.home())
    return Path(root).expanduser() / ".sky" / "catalogs" / CATALOG_VERSION


def cache_path() -> Path:
    return sftlaunch_home() / "offers-cache.json"


def _csvs(root: Path) -> dict[str, Path]:
    return {c: root / c / "vms.csv" for c in CATALOG_CLOUDS if (root / c / "vms.csv").is_file()}


def _fingerprint(csvs: dict[str, Path]) -> dict[str, list[int]]:
    out = {}
    for cloud, p in sorted(csvs.items()):
        st = p.stat()
        out[cloud] = [st.st_mtime_ns, st.st_size]
    return out


def _fetched_date(csvs: dict[str, Path]) -> str:
    """The catalog's date is when SkyPilot downloaded it (the files' mtime), never today."""
    newest = max(p.stat().st_mtime for p in csvs.values())
    return datetime.fromtimestamp(newest, tz=timezone.utc).date().isoformat()


def sky_available() -> bool:
    return importlib.util.find_spec("sky") is not None


# ---------------------------------------------------------------------------------------------
# Building (runs inside a SkyPilot process)


def compact(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """SkyPilot's per-region InstanceTypeInfo rows → one row per (cloud, GPU, count).

    Per-GPU prices; the cheapest instance type and region is the one SkyPilot's optimizer
    picks for that accelerator when the region is left free. Per region, the price of that
    instance type there (or, where only another type sells it, the cheapest there): a pinned
    region is planned at it and the job's budget guard charges it in the region it runs in.
    """
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for it in items:
        price = it.get("price")
        if price is None or price != price or price <= 0:
            continue
        count = int(it["accelerator_count"])
        if count < 1 or count != it["accelerator_count"]:
            continue  # fractional GPUs (shared instances) are not offers for training
        groups.setdefault((it["cloud"], it["accelerator_name"], count), []).append(it)
    out: dict[str, list[dict[str, Any]]] = {}
    for (cloud, gpu, count), rows in sorted(groups.items()):
        best = min(rows, key=lambda r: (r["price"], r["region"]))
        # The spread is across regions of the instance SkyPilot picks, not across instance types
        # (Lambda's 1x H100 PCIe and SXM5 share a name; the optimizer takes the cheaper one).
        every = rows
        rows = [r for r in rows if r.get("instance_type") == best.get("instance_type")]
        spots = [r for r in rows if r.get("spot_price") == r.get("spot_price") and r.get("spot_price")]
        sbest = min(spots, key=lambda r: (r["spot_price"], r["region"])) if spots else None
        mem = best.get("device_memory")
        out.setdefault(cloud, []).append({
            "gpu": gpu, "count": count, "instance_type": best.get("instance_type"),
            "on_demand": best["price"] / count, "region": best["region"],
            "on_demand_max": max(r["price"] for r in rows) / count,
            "spot": sbest["spot_price"] / count if sbest else None,
            "spot_region": sbest["region"] if sbest else None,
            "spot_max": max(r["spot_price"] for r in spots) / count if spots else None,
            "regions": len({r["region"] for r in rows}),
            "memory_gib": None if mem is None or mem != mem else float(mem),
            "region_prices": _by_region(rows, every, "price", count),
            "spot_region_prices": _by_region(rows, every, "spot_price", count),
        })
    return out


def _by_region(rows: list[dict[str, Any]], every: list[dict[str, Any]], key: str, count: int) -> dict[str, float]:
    """{region: $/h per GPU}: the chosen instance type's price where it is sold, else the
    cheapest other instance type's there."""
    out: dict[str, float] = {}
    for group in (every, rows):  # the chosen type's rows last, so they win
        for r in sorted(group, key=lambda r: -(r.get(key) or 0)):
            p = r.get(key)
            if p is not None and p == p and p > 0:
                out[r["region"]] = p / count
    return dict(sorted(out.items()))


BUILD_SCRIPT = r"""
import json, logging, sys
logging.disable(logging.CRITICAL)
from sky import catalog, sky_logging
items, failed = [], {}
with sky_logging.silent():
    for cloud in sys.argv[1].split(","):
        try:
            found = catalog.list_accelerators(gpus_only=True, clouds=cloud, all_regions=True, case_sensitive=True)
        except Exception as exc:
            failed[cloud] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        for name, infos in found.items():
            for i in infos:
                items.append({"cloud": cloud, "accelerator_name": i.accelerator_name,
                              "accelerator_count": float(i.accelerator_count), "instance_type": i.instance_type,
                              "device_memory": i.device_memory, "price": i.price, "spot_price": i.spot_price,
                              "region": i.region})
print("OFFERS " + json.dumps({"items": items, "failed": failed}))
"""


def run_sky(clouds: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Ask SkyPilot (in a subprocess, so this process never imports sky) for every offer."""
    try:
        proc = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, ",".join(clouds)], capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"SkyPilot did not list its catalog within {BUILD_TIMEOUT_S} s") from None
    line = next((x for x in proc.stdout.splitlines() if x.startswith("OFFERS ")), None)
    if line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"SkyPilot could not list its catalog (exit {proc.returncode}): {tail[:300]}")
    data = json.loads(line[len("OFFERS "):])
    return {"rows": compact(data["items"]), "failed": data["failed"]}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def build_cache(csvs: dict[str, Path]) -> dict[str, Any]:
    built = run_sky(sorted(csvs))
    if not built["rows"]:
        raise RuntimeError("SkyPilot listed no GPU offer: " + "; ".join(f"{c}: {w}" for c, w in built["failed"].items()))
    data = {"format": CACHE_FORMAT, "source": "skypilot", "catalog_dir": str(sky_catalog_dir()),
            "fingerprint": _fingerprint(csvs), "date": _fetched_date(csvs), "rows": built["rows"],
            "failed": built["failed"]}
    _write_json(cache_path(), data)
    return data


# ---------------------------------------------------------------------------------------------
# Loading


def live_catalog_how() -> str:
    """How to plan from SkyPilot's live catalog instead of the packaged snapshot."""
    refresh = "`sftlaunch plan --refresh-prices RECIPE` (SkyPilot downloads its current catalog)"
    return refresh if sky_available() else f"pip install 'sftlaunch[cloud]', then {refresh}"


def _snapshot() -> OfferTable:
    data = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    table = OfferTable("snapshot", data["date"], str(SNAPSHOT), data["rows"])
    # The snapshot is generated from excerpts of SkyPilot's catalog (some regions and instance
    # types of each cloud, tests/fixtures/catalogs): offers, counts and prices can differ from
    # what a cloud sells today, so every plan made from it says so and how to get the live one.
    table.notes.append(f"planned from the packaged snapshot of SkyPilot's catalog ({data['date']}), an excerpt of "
                       "a few regions per cloud: a cloud may no longer sell an offer or price listed here; for the "
                       f"live catalog: {live_catalog_how()}")
    return table


def _valid_cache(csvs: dict[str, Path]) -> dict[str, Any] | None:
    path = cache_path()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    ok = (isinstance(data, dict) and data.get("format") == CACHE_FORMAT and data.get("fingerprint") == _fingerprint(csvs)
          and data.get("catalog_dir") == str(sky_catalog_dir()))
    return data if ok else None


@functools.lru_cache(maxsize=4)
def _table(key: tuple) -> OfferTable:
    csvs = _csvs(sky_catalog_dir())
    if not csvs or not sky_available():
        return _snapshot()
    data = _valid_cache(csvs)
    if data is None:
        try:
            data = build_cache(csvs)
        except (RuntimeError, OSError) as exc:
            table = _snapshot()
            table.notes.append(f"could not read SkyPilot's catalog ({one_line(exc, limit=200)}); "
                               "using the packaged snapshot")
            return table
    table = OfferTable("skypilot", data["date"], str(sky_catalog_dir()), data["rows"])
    for cloud, why in (data.get("failed") or {}).items():
        table.notes.append(f"{cloud}: SkyPilot could not read its catalog ({why})")
    return table


def _key() -> tuple:
    """Re-read when the catalog files, the home or the cache change (tests switch them)."""
    csvs = _csvs(sky_catalog_dir())
    cache = cache_path()
    stamp = cache.stat().st_mtime_ns if cache.is_file() else 0
    return (str(sky_catalog_dir()), json.dumps(_fingerprint(csvs)), str(cache), stamp)


def table() -> OfferTable:
    return _table(_key())


def catalog_offers(cloud: str) -> list[Offer]:
    out = []
    for r in table().rows.get(cloud, []):
        out.append(Offer(cloud, r["gpu"], int(r["count"]), float(r["on_demand"]), r.get("spot"), r.get("region"),
                         on_demand_max=r.get("on_demand_max"), spot_max=r.get("spot_max"),
                         spot_region=r.get("spot_region"), regions=int(r.get("regions") or 1),
                         memory_gib=r.get("memory_gib"), instance_type=r.get("instance_type"),
                         region_prices=dict(r.get("region_prices") or {}),
                         spot_region_prices=dict(r.get("spot_region_prices") or {})))
    return out


def catalog_names() -> dict[str, list[str]]:
    """GPU names each catalog cloud sells, spelled as SkyPilot spells them."""
    return {c: sorted({r["gpu"] for r in table().rows.get(c, [])}) for c in CATALOG_CLOUDS}


def refresh() -> str:
    """Rebuild the cache from SkyPilot's catalog now (SkyPilot fetches CSVs it finds stale).

    The date shown is the catalog files' own, so stale data never gets today's date.
    """
    if not sky_available():
        raise UserError("--refresh-prices: needs SkyPilot to read its catalog: pip install 'sftlaunch[cloud]'; "
                        f"until then plan uses the packaged snapshot ({_snapshot().date})")
    root = sky_catalog_dir()
    try:
        built = run_sky(list(CATALOG_CLOUDS))  # SkyPilot downloads missing or stale CSVs itself
    except RuntimeError as exc:
        raise UserError(f"--refresh-prices: {exc}; the offers cache was left as it was") from None
    csvs = _csvs(root)
    if not csvs or not built["rows"]:
        why = "; ".join(f"{c}: {w}" for c, w in built["failed"].items()) or f"no catalog under {root}"
        raise UserError(f"--refresh-prices: SkyPilot has no catalog to read ({why}); check the network")
    data = {"format": CACHE_FORMAT, "source": "skypilot", "catalog_dir": str(root), "fingerprint": _fingerprint(csvs),
            "date": _fetched_date(csvs), "rows": built["rows"], "failed": built["failed"]}
    _write_json(cache_path(), data)
    _table.cache_clear()
    n = sum(len(v) for v in built["rows"].values())
    return f"read {n} offers from SkyPilot's catalog of {data['date']} ({root}) into {cache_path()}"
