"""Offers come from SkyPilot's catalog: the user's cache, the packaged snapshot, refusals.

The user's SkyPilot catalog is the fixture excerpt of SkyPilot's published CSVs
(tests/fixtures/catalogs) installed under a temporary HOME; SkyPilot itself reads it, in the
subprocess launcher/offers.py starts. The network is a dead proxy, so nothing is fetched.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import catalog, offers
from launcher.estimate.candidates import plan
from launcher.failover import launch_order
from sftcore.errors import UserError
from sftcore.recipe import load_recipe, recipe_from_dict
from tests.sky_catalog import sky_env

REPO = Path(__file__).resolve().parents[2]
needs_sky = pytest.mark.skipif(importlib.util.find_spec("sky") is None, reason="needs SkyPilot (sftlaunch[cloud])")


def _plan(home: Path, *args: str) -> subprocess.CompletedProcess:
    """`sftlaunch plan --json` with HOME holding the fixture catalogs (installed once: a fresh
    copy would change their mtimes, as a SkyPilot re-download does)."""
    if not (home / ".sky").exists():
        sky_env(home)
    env = {**sky_env(home / "unused"), "HOME": str(home), "SKY_RUNTIME_DIR": str(home),
           "SFTLAUNCH_HOME": str(home / ".sftlaunch")}
    return subprocess.run([sys.executable, "-m", "launcher.cli", "plan", str(REPO / "recipes/mistral-7b-qlora.yaml"),
                           "--json", *args], env=env, capture_output=True, text=True, timeout=240, cwd=REPO)


@needs_sky
def test_user_catalog_is_cached_and_rebuilt_when_a_csv_changes(tmp_path):
    first = _plan(tmp_path)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["offers_source"] == "skypilot"
    cache = tmp_path / ".sftlaunch" / "offers-cache.json"
    stamp = cache.stat().st_mtime_ns
    again = _plan(tmp_path)  # warm: the cache is read, not rebuilt
    assert again.returncode == 0 and cache.stat().st_mtime_ns == stamp
    # SkyPilot re-downloads RunPod's CSV with a cheaper H100: the cache follows.
    csv = tmp_path / ".sky" / "catalogs" / "v8" / "runpod" / "vms.csv"
    csv.write_text(csv.read_text().replace("1x_H100_SECURE,H100,1.0,16.0,176.0,CA,2.89,2.89",
                                           "1x_H100_SECURE,H100,1.0,16.0,176.0,CA,0.29,0.29"))
    changed = json.loads(_plan(tmp_path).stdout)
    assert cache.stat().st_mtime_ns != stamp
    h100 = [c for c in changed["candidates"] if (c["cloud"], c["gpu"], c["gpus_per_node"]) == ("runpod", "H100", 1)]
    assert h100[0]["usd_per_hour"] == pytest.approx(0.29) and h100[0]["region"] == "CA"
    assert changed["chosen"]["gpu"] == "H100"


@needs_sky
def test_refresh_keeps_the_catalogs_own_date(tmp_path):
    sky_env(tmp_path)  # installed now; _plan reuses it
    old = 1767225600  # 2026-01-01: SkyPilot downloaded these CSVs then
    for p in (tmp_path / ".sky" / "catalogs" / "v8").glob("*/vms.csv"):
        os.utime(p, (old, old))
    res = _plan(tmp_path, "--refresh-prices")
    assert res.returncode == 0, res.stderr
    assert "SkyPilot's catalog of 2026-01-01" in res.stderr
    assert json.loads(res.stdout)["offers_date"] == "2026-01-01"


def test_without_skypilot_catalog_the_packaged_snapshot_is_used_and_named(monkeypatch):
    table = offers.table()
    assert table.source == "snapshot" and table.date == "2026-12-03"
    assert "packaged snapshot" in table.describe()
    monkeypatch.setattr(offers, "sky_available", lambda: False)
    with pytest.raises(UserError, match=r"--refresh-prices: needs SkyPilot.*packaged snapshot \(2026-12-03\)"):
        offers.refresh()


def test_offers_are_priced_at_the_cheapest_region_with_the_spread():
    gcp = {(o.gpu, o.count): o for o in catalog.offers("gcp")}
    h100 = gcp[("H100", 1)]  # GPU row + a3-highgpu-1g host row, as SkyPilot composes it
    assert h100.on_demand == pytest.approx(4.20076 + 1.18251) and h100.region == "us-central1"
    assert h100.on_demand_max == pytest.approx(12.73552 + 1.24163) and h100.regions == 4
    h200 = gcp[("H200", 8)]
    assert h200.region == "asia-south1" and h200.on_demand * 8 == pytest.approx(36.60258 + 12.75664)


def test_catalog_quirks_memory_arch_and_bf16():
    runpod = {(o.gpu, o.count): o for o in catalog.offers("runpod")}
    assert runpod[("H200-SXM", 3)].memory_gib < 1  # RunPod writes GB in the MiB field
    assert catalog.gpu_memory_gb("H200-SXM", runpod[("H200-SXM", 3)]) == 141
    gh200 = next(o for o in catalog.offers("lambda") if o.gpu == "GH200")
    assert "arm64" in catalog.unusable_reason(gh200)
    assert "gpus.yaml" in catalog.unusable_reason(runpod[("B300", 2)])
    r = load_recipe(REPO / "recipes/mistral-7b-qlora.yaml")
    result = plan(r, cloud="lambda", gpu="V100:8")
    assert result.chosen is None and "V100 has no bf16; use precision: fp16" in result.candidates[0].why_not
    assert any("GH200 has an arm64 host" in n for n in plan(r, cloud="lambda").notes)


def test_names_are_skypilots_and_unsold_ones_are_refused_with_a_hint():
    r = load_recipe(REPO / "recipes/falcon-180b-qlora.yaml")
    with pytest.raises(UserError, match=r"RunPod does not sell H200; did you mean H200-SXM\?"):
        plan(r, cloud="runpod", gpu="H200")
    with pytest.raises(UserError, match=r"Lambda sells A100-80GB only as 8x; use --gpu A100-80GB:8 or another cloud"):
        plan(r, cloud="lambda", gpu="A100-80GB:4")
    assert catalog.canonical_gpu("rtx6000") == "RTX6000" and catalog.canonical_gpu("A10G") is None
    assert "did you mean A10" in catalog.unknown_gpu_message("A10G")


@pytest.mark.parametrize("gpu", ["H100:99999999999999999999", "H100:17"])
def test_absurd_gpu_counts_are_refused(gpu, tmp_path):
    r = load_recipe(REPO / "recipes/mistral-7b-qlora.yaml")
    with pytest.raises(UserError, match="at most 16 GPUs per node"):
        plan(r, gpu=gpu)
    res = subprocess.run([sys.executable, "-m", "launcher.cli", "plan", str(REPO / "recipes/mistral-7b-qlora.yaml"),
                          "--gpu", gpu], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 2 and "at most 16" in res.stderr and "Traceback" not in res.stderr


def test_failover_order_and_budget():
    r = load_recipe(REPO / "recipes/llama2-70b-qlora.yaml")
    result = plan(r)
    order = launch_order(result, 3)
    assert order[0] is result.chosen and len(order) == 3
    assert [c.total_usd for c in order[1:]] == sorted(c.total_usd for c in order[1:])
    capped = launch_order(result, 3, max_usd=order[1].total_usd)
    assert all(c.total_usd <= order[1].total_usd for c in capped[1:])


def test_recipe_regions_pin_the_render_and_fallbacks_default_to_three():
    from launcher.render import render_task

    data = load_recipe(REPO / "recipes/llama2-70b-qlora.yaml").resolved_dict()
    assert data["resources"]["fallbacks"] == 3 and data["resources"]["regions"] is None
    data["resources"].update(regions=["us-central1"], clouds=["gcp"])
    r = recipe_from_dict(data, base_dir=REPO / "recipes")
    c = plan(r).chosen
    task = render_task(r, c, "sftl-x-beef", "/tmp/r.yaml")
    assert task["resources"]["region"] == "us-central1"


def _csv_sold(cloud: str) -> dict[tuple[str, int, str], list[float]]:
    """(GPU, count, region) → the $/h of each way the fixture CSV sells it. GCP rows price the GPU
    alone (InstanceType empty) and the host VM apart; SkyPilot adds one host VM of the region."""
    import csv

    from tests.sky_catalog import FIXTURE_DIR

    rows = list(csv.DictReader((FIXTURE_DIR / cloud / "vms.csv").open()))
    out: dict[tuple[str, int, str], list[float]] = {}
    gpu_rows = [r for r in rows if r["AcceleratorName"] and r["Price"]]
    for r in gpu_rows:
        count = float(r["AcceleratorCount"])
        if count != int(count) or (cloud == "gcp" and r["InstanceType"]):
            continue
        prices = [float(r["Price"])]
        if cloud == "gcp":
            hosts = [float(h["Price"]) for h in rows if not h["AcceleratorName"] and h["Region"] == r["Region"] and h["Price"]]
            prices = [prices[0] + h for h in hosts]
        out.setdefault((r["AcceleratorName"], int(count), r["Region"]), []).extend(prices)
    return out


def test_every_snapshot_offer_is_sold_in_the_catalog_rows_it_came_from():
    """No offer, count, region or price in the packaged snapshot that its source rows do not sell
    (a derivation inventing, say, a B200:1 where only 2x/8x rows exist would fail here)."""
    data = json.loads(offers.SNAPSHOT.read_text())
    checked = 0
    for cloud, rows in data["rows"].items():
        sold = _csv_sold(cloud)
        for r in rows:
            label = f"{cloud} {r['gpu']}:{r['count']}"
            assert r["region_prices"] and r["region"] in r["region_prices"], label
            for region, per_gpu in r["region_prices"].items():
                prices = sold.get((r["gpu"], r["count"], region))
                assert prices, f"{label}: the snapshot says {region} sells it; no catalog row does"
                assert any(abs(p - per_gpu * r["count"]) <= 1e-6 * p for p in prices), (label, region, per_gpu, prices)
                checked += 1
            for region in r["spot_region_prices"]:
                assert (r["gpu"], r["count"], region) in sold, f"{label}: spot in {region}, which sells none"
            assert r["on_demand"] == r["region_prices"][r["region"]], label  # priced where it is cheapest
    assert checked >= 150


def test_lambda_b200_is_offered_only_as_2x_and_8x():
    """Lambda sells B200 only as 2x and 8x: neither the fixture excerpt (SkyPilot's
    catalogs/v8/lambda/vms.csv at skypilot-org/skypilot-catalog commit 95eaf484) nor the packaged
    snapshot made from it may name a B200:1, and no plan may put one in its failover order."""
    data = json.loads(offers.SNAPSHOT.read_text())
    counts = sorted({r["count"] for r in data["rows"]["lambda"] if r["gpu"] == "B200"})
    assert counts == [2, 8], counts
    assert sorted({n for g, n, _ in _csv_sold("lambda") if g == "B200"}) == [2, 8]
    order = launch_order(plan(load_recipe(REPO / "recipes/falcon-180b-qlora.yaml")), 3)
    assert order and not any(c.cloud == "lambda" and c.gpu == "B200" and c.gpus_per_node == 1 for c in order)
    assert ("lambda", "B200", 2) in {(c.cloud, c.gpu, c.gpus_per_node) for c in order}


def test_a_plan_from_the_snapshot_says_so_and_how_to_get_the_live_catalog(tmp_path):
    """`plan` (table and --json) names the snapshot and the way to the live catalog."""
    from click.testing import CliRunner

    from launcher.cli import cli

    res = CliRunner().invoke(cli, ["plan", str(REPO / "recipes/llama3.1-8b-qlora.yaml"), "--cloud", "gcp"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "planned from the packaged snapshot of SkyPilot's catalog (2026-12-03)" in text
    assert "for the live catalog:" in text and "sftlaunch plan --refresh-prices RECIPE" in text
    js = CliRunner().invoke(cli, ["plan", str(REPO / "recipes/llama3.1-8b-qlora.yaml"), "--cloud", "gcp", "--json"])
    out = json.loads(js.output)
    assert out["offers_source"] == "snapshot" and any("--refresh-prices" in n for n in out["offers_notes"])
