"""The in-job budget guard charges the offer SkyPilot launched, in the region it launched in.

Source of truth: SkyPilot 0.14.1's own code on the fixture catalogs (tests/sky_catalog.py):
`sky.Task.from_yaml_config` parses the rendered task, `Optimizer.optimize` picks the resources,
the provisioner's region order (`Cloud.regions_with_offering`) gives the cheapest and the
dearest region, `Resources.get_cost` the price there, and the job's env is what SkyPilot's
backend builds (`CloudVmRayBackend._skypilot_predefined_env_vars`: SKYPILOT_CLUSTER_INFO;
`get_task_demands_dict` + the codegen's accelerator count: SKYPILOT_NUM_GPUS_PER_NODE). The job's
resolver (jobs/rate.py) reads that env, the rendered rate table and the visible GPU's CUDA name.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from jobs.rate import resolve
from launcher import offers
from launcher.commands.render import resolve_target
from launcher.estimate.candidates import plan
from launcher.render import render_task
from sftcore.errors import UserError
from sftcore.recipe import load_recipe
from tests.sky_catalog import sky_launch_envs

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
needs_sky = pytest.mark.skipif(importlib.util.find_spec("sky") is None, reason="needs SkyPilot (sftlaunch[cloud])")

# What torch.cuda.get_device_properties(0) reports (name, total memory in GiB) on each card, as
# NVIDIA names them: SXM cards do not say SXM, PCIe and NVL cards say so.
SXM = {"A100-80GB": ("NVIDIA A100-SXM4-80GB", 79.3), "A100": ("NVIDIA A100-SXM4-40GB", 39.4),
       "H100": ("NVIDIA H100 80GB HBM3", 79.1), "H100-SXM": ("NVIDIA H100 80GB HBM3", 79.1),
       "H100-NVL": ("NVIDIA H100 NVL", 93.1), "H200": ("NVIDIA H200", 139.8), "H200-SXM": ("NVIDIA H200", 139.8),
       "B200": ("NVIDIA B200", 178.4), "A40": ("NVIDIA A40", 44.4), "L40S": ("NVIDIA L40S", 44.4),
       "L4": ("NVIDIA L4", 22.0), "RTXA5000": ("NVIDIA RTX A5000", 23.6), "RTXA6000": ("NVIDIA RTX A6000", 47.4),
       "A6000": ("NVIDIA RTX A6000", 47.4), "RTX4090": ("NVIDIA GeForce RTX 4090", 23.6)}
PCIE = {"A100-80GB": ("NVIDIA A100 80GB PCIe", 79.2), "H100": ("NVIDIA H100 PCIe", 79.1)}


def device(cloud: str, acc: str, instance_type: str | None) -> tuple[str, float]:
    """RunPod's plain H100 and A100-80GB are PCIe cards; Lambda names its PCIe instance types."""
    pcie = (cloud == "runpod" and acc in PCIE) or "pcie" in (instance_type or "").lower()
    return (PCIE if pcie else SXM)[acc]


def single_choice(task: dict, i: int) -> dict:
    """The task as SkyPilot runs it when it launched the i-th ordered choice."""
    out = json.loads(json.dumps(task))
    res = out["resources"]
    ordered = res.pop("ordered", None)
    if ordered:
        res.update(ordered[i])
    return out


def rendered_cases():
    """(label, rendered task, number of ordered choices) for every shipped recipe and catalog cloud."""
    for path in RECIPES:
        recipe = load_recipe(path)
        for cloud in (c for c in recipe.resources.clouds if c in offers.CATALOG_CLOUDS):
            try:
                targets = resolve_target(recipe, cloud, None)
            except UserError:
                continue  # refused (a count the cloud does not sell): test_plan_sky_optimizer checks that
            task = render_task(recipe, targets[0], f"sftl-{recipe.name}-beef", "/tmp/recipe.yaml", fallbacks=targets[1:])
            yield f"{path.name} on {cloud}", task, len(task["resources"].get("ordered") or [1])


def check_launches(label: str, task: dict, got: dict) -> list[float]:
    """The guard's rate for each launch equals SkyPilot's price of it; returns the rates."""
    assert got["ok"], f"{label}: SkyPilot refuses the rendered choice: {got.get('error')}"
    acc, count = next(iter(got["accelerators"].items()))
    rates = []
    for launch in got["launches"]:
        env = {**task["envs"], **launch["env"]}
        rate = resolve(env, device(got["cloud"], acc, got["instance_type"]))
        want = launch["cost"] * task["num_nodes"]
        where = f"{label}: {got['cloud']} {acc}:{count} in {launch['region']}"
        assert rate is not None, where
        assert (rate.cloud, rate.accelerator, rate.count, rate.region) == (got["cloud"], acc, count, launch["region"]), where
        assert abs(rate.usd_per_hour - want) <= 0.01 * want, f"{where}: guard ${rate.usd_per_hour:.4f}/h vs SkyPilot ${want:.4f}/h ({rate.how})"
        assert "dearest" not in rate.how, f"{where}: {rate.how}"
        rates.append(rate.usd_per_hour)
    return rates


@needs_sky
@pytest.mark.slow
def test_guard_rate_is_the_launched_choices_rate_for_every_recipe_and_cloud(tmp_path):
    cases = list(rendered_cases())
    specs, index = [], []
    for label, task, n in cases:
        cloud = task["resources"].get("cloud") or task["resources"]["ordered"][0]["cloud"]
        for i in range(n):
            specs.append({"task": single_choice(task, i), "clouds": [cloud]})
            index.append((label, task))
    results = sky_launch_envs(tmp_path, specs)
    dearer = 0
    for (label, task), got in zip(index, results, strict=True):
        table = json.loads(task["envs"]["SFTLAUNCH_RATES"])
        old_rate = max(e["usd_per_hour_max"] for e in table)  # what the guard used to charge
        dearer += sum(r < old_rate * 0.99 for r in check_launches(label, task, got))
    assert len(cases) >= 40 and len(specs) >= 100, (len(cases), len(specs))
    assert dearer >= 50  # the old guard overcharged most launches; each is now charged its own price


def _pinned(path: str, regions: list[str] | None):
    return load_recipe(REPO / path, overrides={("resources", "regions"): regions})


@needs_sky
@pytest.mark.slow
def test_a_pinned_region_is_planned_rendered_and_charged_there(tmp_path):
    """llama3.1-8b QLoRA on GCP: free, H100:1 in us-central1 ($5.38/h). Pinned to europe-west4,
    where H100:1 costs $13.98/h, the plan is priced there and A100:1 ($2.43/h there) wins; two
    pinned regions are each rendered where the offer is sold. SkyPilot launches each rendered
    choice in its pinned region at the price the guard charges."""
    free = plan(load_recipe(REPO / "recipes/llama3.1-8b-qlora.yaml"), cloud="gcp").chosen
    assert (free.accelerators, free.region) == ("H100:1", "us-central1")
    one = _pinned("recipes/llama3.1-8b-qlora.yaml", ["europe-west4"])
    result = plan(one, cloud="gcp")
    chosen = result.chosen
    assert (chosen.region, chosen.accelerators) == ("europe-west4", "A100:1")
    assert chosen.usd_per_hour == pytest.approx(2.42771, rel=1e-4) and chosen.regions == 1
    h100 = next(c for c in result.candidates if c.accelerators == "H100:1")
    assert (h100.region, round(h100.usd_per_hour, 4), h100.usd_per_hour_max) == ("europe-west4", 13.9771, h100.usd_per_hour)
    assert all(c.region == "europe-west4" and set(c.region_usd_per_hour) == {"europe-west4"} for c in result.candidates)
    targets = resolve_target(one, "gcp", None)
    task = render_task(one, targets[0], "sftl-x-beef", "/tmp/recipe.yaml", fallbacks=targets[1:])
    assert {c.get("region") for c in task["resources"]["ordered"]} == {"europe-west4"}
    two = _pinned("recipes/llama3.1-8b-qlora.yaml", ["us-central1", "europe-west4"])
    targets2 = resolve_target(two, "gcp", None)
    task2 = render_task(two, targets2[0], "sftl-x-beef", "/tmp/recipe.yaml", fallbacks=targets2[1:])
    pairs = [(c["accelerators"], c["region"]) for c in task2["resources"]["ordered"]]
    assert pairs[:2] == [("H100:1", "us-central1"), ("H100:1", "europe-west4")], pairs
    specs = [{"task": single_choice(task, i), "clouds": ["gcp"]} for i in range(len(task["resources"]["ordered"]))]
    specs += [{"task": single_choice(task2, i), "clouds": ["gcp"]} for i in range(len(pairs))]
    # SkyPilot itself refuses a region its catalog does not have (plan refuses it first: below).
    nowhere = single_choice(task, 0)
    nowhere["resources"]["region"] = "us-west-9"
    *results, refused = sky_launch_envs(tmp_path, [*specs, {"task": nowhere, "clouds": ["gcp"]}])
    assert not refused["ok"] and "us-west-9" in refused["error"], refused
    for i, got in enumerate(results):
        t = task if i < len(task["resources"]["ordered"]) else task2
        region = specs[i]["task"]["resources"]["region"]
        assert [x["region"] for x in got["launches"]] == [region]
        check_launches(f"pinned {region}", t, got)


def test_a_region_no_allowed_cloud_sells_in_is_refused():
    recipe = _pinned("recipes/llama3.1-8b-qlora.yaml", ["us-west-9"])
    with pytest.raises(UserError) as err:
        plan(recipe, cloud="gcp")
    msg = str(err.value)
    assert "resources.regions: us-west-9: GCP sells no GPU there" in msg
    assert "GCP sells GPUs in " in msg and "us-central1" in msg and "set regions: null" in msg


def test_a_pinned_region_that_sells_nothing_that_fits_says_where_it_is_sold():
    """falcon-180b QLoRA needs more than the A100s (40 GB) me-west1 sells on GCP."""
    recipe = _pinned("recipes/falcon-180b-qlora.yaml", ["me-west1"])
    result = plan(recipe, cloud="gcp")
    assert result.chosen is None and result.reason_field == "resources.regions"
    assert result.reason.startswith("nothing that fits is sold in me-west1; what fits is sold in: gcp ")
    assert all(c.region == "me-west1" for c in result.candidates)
    with pytest.raises(UserError, match=r"resources\.regions: nothing fits: nothing that fits is sold in me-west1"):
        resolve_target(recipe, "gcp", None)
    unpinned = plan(load_recipe(REPO / "recipes/falcon-180b-qlora.yaml"), cloud="gcp").chosen
    assert unpinned is not None and unpinned.region != "me-west1"  # it does fit elsewhere


def _entry(**kw) -> dict:
    base = {"cloud": "gcp", "region": None, "accelerator": "H100", "count": 1, "nodes": 1, "spot": False,
            "usd_per_hour": 5.0, "usd_per_hour_max": 14.0, "memory_gb": 80.0,
            "region_usd_per_hour": {"us-central1": 5.0, "europe-west4": 14.0}}
    return {**base, **kw}


def _env(table: list[dict], cloud: str | None = "GCP", region: str | None = "us-central1", gpus: int | None = 1) -> dict:
    env = {"SFTLAUNCH_RATES": json.dumps(table)}
    if cloud:
        env["SKYPILOT_CLUSTER_INFO"] = json.dumps({"cluster_name": "c", "cloud": cloud, "region": region, "zone": None})
    if gpus is not None:
        env["SKYPILOT_NUM_GPUS_PER_NODE"] = str(gpus)
    return env


def test_unknown_launch_falls_back_to_the_dearest_and_says_why():
    table = [_entry(), _entry(accelerator="L4", count=1, usd_per_hour=0.7, usd_per_hour_max=0.9, memory_gb=24.0,
                              region_usd_per_hour={"us-central1": 0.7})]
    no_info = resolve(_env(table, cloud=None, gpus=None))
    assert no_info.usd_per_hour == 14.0 and "no choice matches the launched cloud" in no_info.how
    other_region = resolve(_env(table, region="asia-east1"), ("NVIDIA H100 80GB HBM3", 79.1))
    assert other_region.usd_per_hour == 14.0 and "asia-east1 is not in the price table" in other_region.how
    l4 = resolve(_env(table), ("NVIDIA L4", 22.0))
    assert (l4.accelerator, l4.usd_per_hour, l4.region) == ("L4", 0.7, "us-central1") and "dearest" not in l4.how
    assert l4.describe() == "gcp us-central1 1×L4 $0.70/h"


def test_the_visible_card_tells_choices_apart_or_the_dearest_is_charged():
    """RunPod's H100-SXM and H100 (PCIe) on one node: the CUDA name tells them apart. A100 and
    A100-80GB with no memory figure cannot be told apart: the dearest is charged and said so."""
    table = [_entry(cloud="runpod", accelerator="H100-SXM", usd_per_hour=3.29, usd_per_hour_max=3.29,
                    region_usd_per_hour={"CA": 3.29}),
             _entry(cloud="runpod", accelerator="H100", usd_per_hour=2.89, usd_per_hour_max=2.89,
                    region_usd_per_hour={"CA": 2.89})]
    sxm = resolve(_env(table, cloud="RunPod", region="CA"), ("NVIDIA H100 80GB HBM3", 79.1))
    assert (sxm.accelerator, sxm.usd_per_hour, sxm.how) == ("H100-SXM", 3.29, "the price in CA")
    pcie = resolve(_env(table, cloud="RunPod", region="CA"), ("NVIDIA H100 PCIe", 79.1))
    assert (pcie.accelerator, pcie.usd_per_hour, pcie.how) == ("H100", 2.89, "the price in CA")
    a100 = [_entry(accelerator="A100", usd_per_hour=2.4, memory_gb=None, region_usd_per_hour={"us-central1": 2.4}),
            _entry(accelerator="A100-80GB", usd_per_hour=2.9, memory_gb=None, region_usd_per_hour={"us-central1": 2.9})]
    unsure = resolve(_env(a100), ("NVIDIA A100-SXM4-80GB", None))
    assert unsure.usd_per_hour == 2.9 and "cannot tell 1×A100, 1×A100-80GB apart" in unsure.how
    with_memory = resolve(_env([{**e, "memory_gb": m} for e, m in zip(a100, (40.0, 80.0), strict=True)]),
                          ("NVIDIA A100-SXM4-40GB", 39.4))
    assert (with_memory.accelerator, with_memory.usd_per_hour) == ("A100", 2.4)


def test_without_a_table_the_explicit_rate_is_used():
    assert resolve({"SFTLAUNCH_USD_PER_HOUR": "2.5"}).usd_per_hour == 2.5
    assert resolve({}) is None
    broken = resolve({"SFTLAUNCH_RATES": "not json", "SFTLAUNCH_USD_PER_HOUR": "3"})
    assert broken.usd_per_hour == 3.0 and "unreadable" in broken.how
