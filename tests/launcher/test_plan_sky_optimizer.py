"""plan()'s choice agrees with SkyPilot 0.14.1's own optimizer on the same catalog snapshot.

Source of truth for the comparison: sky.optimizer.Optimizer.optimize run in-process (no API
server) on tests/fixtures/catalogs/ (GCP, Lambda, RunPod and common, SkyPilot's v8 CSV schema)
installed under a temporary ~/.sky/catalogs/v8/ (see tests/sky_catalog.py). SkyPilot's optimizer
minimises $/h for an accelerator it is given; plan() minimises total $ (it also models speed,
memory and per-cloud overheads). So each case hands SkyPilot the accelerator plan() chose, on
every cloud plan() considered, and both must land on the same cloud at the same $/h: for fixed
accelerators, for `gpu: auto` recipes (the 70B reference run's H100-SXM on RunPod among them),
for a GCP-only GPU (whose price SkyPilot composes from a GPU row and a host-VM row) and for spot.
test_fixture_mirrors_price_snapshot keeps the CSVs and launcher/data/prices.yaml the same snapshot.
"""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

from launcher.catalog import DATA
from launcher.estimate import plan
from launcher.recipe import load_recipe, recipe_from_dict
from tests.sky_catalog import FIXTURE_DIR, sky_optimize

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT_CLOUDS = ["gcp", "lambda", "runpod"]


def _spot_a100_recipe():
    data = load_recipe(REPO / "recipes/mistral-7b-qlora.yaml").resolved_dict()
    data["resources"].update(spot=True, gpu="A100:1")
    data["output"]["bucket"] = "gs://my-bucket/sftlaunch"
    return recipe_from_dict(data, base_dir=REPO / "recipes")


CASES = {  # id -> (recipe, --gpu or None for the recipe's own, spot)
    "7b-full-fixed-A100-80GBx8": (lambda: load_recipe(REPO / "recipes/llama2-7b-full.yaml"), None, False),
    "mistral-fixed-L40S": (lambda: load_recipe(REPO / "recipes/mistral-7b-qlora.yaml"), "L40S:1", False),
    "70b-reference-auto": (lambda: load_recipe(REPO / "recipes/llama2-70b-qlora.yaml"), None, False),
    "mistral-auto": (lambda: load_recipe(REPO / "recipes/mistral-7b-qlora.yaml"), None, False),
    "gcp-only-L4": (lambda: load_recipe(REPO / "recipes/mistral-7b-qlora.yaml"), "L4:1", False),
    "spot-A100": (_spot_a100_recipe, None, True),
}


def _considered(recipe, spot: bool) -> list[str]:
    from launcher.clouds import capability_problem

    return [c for c in recipe.resources.clouds if c in SNAPSHOT_CLOUDS and not (spot and capability_problem(c, "spot"))]


@pytest.mark.skipif(importlib.util.find_spec("sky") is None, reason="needs SkyPilot (sftlaunch[cloud])")
def test_plan_choice_matches_sky_optimizer(tmp_path):
    ours, specs = {}, []
    for case, (make, gpu, spot) in CASES.items():
        recipe = make()
        result = plan(recipe, gpu=gpu, spot=spot)
        assert result.chosen is not None, (case, result.reason)
        ours[case] = result.chosen
        specs.append({"clouds": _considered(recipe, spot), "accelerators": result.chosen.accelerators, "spot": spot})
    # The reference run's choice, as the recipe comment and README state it.
    assert (ours["70b-reference-auto"].cloud, ours["70b-reference-auto"].accelerators) == ("runpod", "H100-SXM:1")
    assert ours["gcp-only-L4"].cloud == "gcp" and ours["spot-A100"].cloud == "gcp"
    theirs = sky_optimize(tmp_path, specs)
    for (case, mine), sky in zip(ours.items(), theirs, strict=True):
        assert sky["cloud"] == mine.cloud, (case, mine.cloud, sky)
        assert sky["accelerators"] == {mine.gpu: mine.gpus_per_node}, (case, sky)
        assert abs(sky["cost"] - mine.usd_per_hour) < 0.01, (case, mine.usd_per_hour, sky)


# The host VM SkyPilot pairs with each GCP GPU (sky/catalog/gcp_catalog.py, _ACC_INSTANCE_TYPE_DICTS
# and the n1 family for T4); its price is added to the GPU row's. Not imported: importing
# sky.catalog pins SkyPilot's catalog directory to this test's HOME for the whole session.
GCP_HOST = {"H100": "a3-highgpu-{n}g", "A100-80GB": "a2-ultragpu-{n}g", "A100": "a2-highgpu-{n}g",
            "L4": "g2-standard-4", "T4": "n1-standard-8"}


def _fixture_offers():
    """(cloud, gpu, count) -> ($/h per GPU, spot $/h per GPU) as SkyPilot would price them."""
    out = {}
    for cloud in ("lambda", "runpod"):
        for row in csv.DictReader((FIXTURE_DIR / cloud / "vms.csv").open()):
            n = int(float(row["AcceleratorCount"]))
            spot = float(row["SpotPrice"]) / n if row.get("SpotPrice") else None
            out[(cloud, row["AcceleratorName"], n)] = (float(row["Price"]) / n, spot)
    rows = list(csv.DictReader((FIXTURE_DIR / "gcp" / "vms.csv").open()))
    hosts = {r["InstanceType"]: r for r in rows if r["InstanceType"]}
    for r in (r for r in rows if r["AcceleratorName"]):
        n = int(r["AcceleratorCount"])
        host = hosts[GCP_HOST[r["AcceleratorName"]].format(n=n)]
        out[("gcp", r["AcceleratorName"], n)] = ((float(r["Price"]) + float(host["Price"])) / n,
                                                 (float(r["SpotPrice"]) + float(host["SpotPrice"])) / n)
    return out


def test_fixture_mirrors_price_snapshot():
    import yaml

    table = yaml.safe_load((DATA / "prices.yaml").read_text())["clouds"]
    offers = _fixture_offers()
    assert {c for c, _, _ in offers} == set(SNAPSHOT_CLOUDS)
    for (cloud, gpu, n), (price, spot) in offers.items():
        row = next((r for r in table[cloud] if r["gpu"] == gpu and n in r["counts"]), None)
        assert row is not None, f"fixture {cloud} {gpu}:{n} is not in prices.yaml"
        assert math.isclose(price, row["on_demand"], abs_tol=0.005), (cloud, gpu, n, price, row)
        if row["spot"] is None:
            assert not spot, (cloud, gpu, n)
        else:
            assert math.isclose(spot, row["spot"], abs_tol=0.005), (cloud, gpu, n, spot, row)
