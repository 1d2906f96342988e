"""plan's choices are what SkyPilot 0.14.1 would launch, at SkyPilot's own price.

Source of truth: SkyPilot's own code (sky.Task.from_yaml_config and
sky.optimizer.Optimizer.optimize, in-process, no API server) on verbatim excerpts of SkyPilot's
published v8 catalogs (tests/fixtures/catalogs, README there) installed under a temporary
~/.sky/catalogs/v8 (tests/sky_catalog.py). The planner reads the same rows through the packaged
snapshot that scripts/snapshot_offers.py generated from those CSVs.

For every shipped recipe and every catalog cloud it allows: `plan --cloud C` chooses, `render`
renders that choice, SkyPilot parses the rendered task and must accept it on C at a $/h within 1%
of the planner's. Where the planner refuses (a count the cloud does not sell), SkyPilot must
refuse that accelerator too. Failover: a task rendered with ordered fallbacks is accepted; with
the first choice's rows removed from the catalog, SkyPilot picks the second.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from launcher import offers
from launcher.estimate.candidates import plan
from launcher.failover import launch_order
from launcher.render import render_task
from sftcore.clouds import CLOUDS
from sftcore.errors import UserError
from sftcore.recipe import load_recipe
from tests.sky_catalog import FIXTURE_DIR, sky_optimize_tasks

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
needs_sky = pytest.mark.skipif(importlib.util.find_spec("sky") is None, reason="needs SkyPilot (sftlaunch[cloud])")


def plan_cases():
    """(recipe path, cloud, rendered task or None, planner $/h per node, refusal or None)."""
    for path in RECIPES:
        recipe = load_recipe(path)
        for cloud in (c for c in recipe.resources.clouds if c in offers.CATALOG_CLOUDS):
            try:
                result = plan(recipe, cloud=cloud)
            except UserError as exc:
                name, count = recipe.resources.gpu_name_count()
                yield path, cloud, {"accelerators": f"{name}:{count}", "spot": recipe.resources.spot}, None, str(exc)
                continue
            if result.chosen is None:
                continue  # nothing fits there: no choice to check
            c = result.chosen
            task = render_task(recipe, c, f"sftl-{recipe.name}-beef", "/tmp/recipe.yaml")
            yield path, cloud, task, c.usd_per_hour / c.nodes, None


def _probe(accelerators: str, cloud: str, spot: bool) -> dict:
    return {"name": "probe", "run": "true", "resources": {"cloud": cloud, "accelerators": accelerators, "use_spot": spot}}


def test_snapshot_is_generated_from_the_fixture_catalogs():
    """The packaged snapshot holds exactly what SkyPilot lists from the fixture CSVs (no hand edits)."""
    data = json.loads(offers.SNAPSHOT.read_text())
    assert data["generated_by"] == "scripts/snapshot_offers.py"
    names = {c: {r["gpu"] for r in rows} for c, rows in data["rows"].items()}
    for cloud in offers.CATALOG_CLOUDS:
        csv_names = {line.split(",")[3 if cloud == "gcp" else 1] for line in
                     (FIXTURE_DIR / cloud / "vms.csv").read_text().splitlines()[1:]} - {""}
        assert names[cloud] == csv_names


@needs_sky
def test_every_recipe_and_cloud_is_launchable_at_skypilots_price(tmp_path):
    cases = list(plan_cases())
    specs = []
    for _path, cloud, task, _usd, refused in cases:
        if refused:
            specs.append({"task": _probe(task["accelerators"], cloud, task["spot"]), "clouds": [cloud]})
        else:
            specs.append({"task": task, "clouds": [cloud]})
    results = sky_optimize_tasks(tmp_path, specs)
    checked = 0
    for (path, cloud, task, usd, refused), got in zip(cases, results, strict=True):
        label = f"{path.name} on {cloud}"
        if refused:
            assert not got["ok"], f"{label}: plan refused ({refused}) but SkyPilot launches {got}"
            continue
        assert got["ok"], f"{label}: SkyPilot refuses the rendered task: {got['error']}"
        assert got["cloud"] == cloud, (label, got)
        assert got["accelerators"] == {task["resources"]["accelerators"].split(":")[0]:
                                       int(task["resources"]["accelerators"].split(":")[1])}, (label, got)
        assert abs(got["cost"] - usd) <= 0.01 * got["cost"], f"{label}: plan ${usd:.4f}/h vs SkyPilot ${got['cost']:.4f}/h"
        checked += 1
    assert checked >= 10  # every auto recipe on each of its three clouds, at least


@needs_sky
def test_unsold_count_is_refused_like_skypilot_does():
    """Lambda sells A100-80GB only as 8x (its catalog has gpu_8x_a100_80gb_sxm4 only)."""
    recipe = load_recipe(REPO / "recipes/phi-2-full.yaml")  # gpu: A100-80GB:4
    with pytest.raises(UserError, match=r"Lambda sells A100-80GB only as 8x; use --gpu A100-80GB:8 or another cloud"):
        plan(recipe, cloud="lambda")


@needs_sky
def test_failover_moves_to_the_second_choice_when_the_first_is_gone(tmp_path):
    recipe = load_recipe(REPO / "recipes/llama2-70b-qlora.yaml")
    result = plan(recipe)
    order = launch_order(result, 3)
    assert len(order) >= 2 and all(c.fits for c in order)
    first, second = order[0], order[1]
    task = render_task(recipe, first, "sftl-x-beef", "/tmp/recipe.yaml", fallbacks=order[1:])
    assert [c["accelerators"] for c in task["resources"]["ordered"]] == [c.accelerators for c in order]
    assert all("region" not in c for c in task["resources"]["ordered"])  # regions left free
    clouds = sorted({c.cloud for c in order})
    # The first choice's instance type disappears from the catalog (no capacity anywhere).
    drop = {first.cloud: next(o.instance_type for o in offers.catalog_offers(first.cloud)
                              if o.gpu == first.gpu and o.count == first.gpus_per_node)}
    whole, gone = sky_optimize_tasks(tmp_path / "a", [{"task": task, "clouds": clouds}]), \
        sky_optimize_tasks(tmp_path / "b", [{"task": task, "clouds": clouds}], drop=drop)
    assert whole[0]["ok"] and whole[0]["cloud"] == first.cloud
    assert whole[0]["accelerators"] == {first.gpu: first.gpus_per_node}
    assert gone[0]["ok"], gone[0]
    assert (gone[0]["cloud"], gone[0]["accelerators"]) == (second.cloud, {second.gpu: second.gpus_per_node})


def test_recipes_allow_catalog_clouds():
    assert any(c in CLOUDS for p in RECIPES for c in load_recipe(p).resources.clouds)


@needs_sky
def test_failover_crosses_clouds_when_one_cloud_has_none_left(tmp_path):
    """falcon-180b: Lambda B200:2 → Lambda B200:8 → RunPod B200:1 (Lambda sells B200 only as 2x/8x).
    With no B200 left on Lambda, SkyPilot's optimizer goes to the RunPod choice of the same
    rendered task."""
    recipe = load_recipe(REPO / "recipes/falcon-180b-qlora.yaml")
    order = launch_order(plan(recipe), 3)
    assert [c.cloud for c in order] == ["lambda", "lambda", "runpod"], [(c.cloud, c.accelerators) for c in order]
    task = render_task(recipe, order[0], "sftl-x-beef", "/tmp/recipe.yaml", fallbacks=order[1:])
    got = sky_optimize_tasks(tmp_path, [{"task": task, "clouds": ["lambda", "runpod"]}], drop={"lambda": "_b200_"})
    assert got[0]["ok"], got[0]
    assert (got[0]["cloud"], got[0]["accelerators"]) == ("runpod", {order[2].gpu: order[2].gpus_per_node})
    assert abs(got[0]["cost"] - order[2].usd_per_hour) <= 0.01 * got[0]["cost"]
