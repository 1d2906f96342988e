"""plan()'s choice agrees with SkyPilot 0.14.1's own optimizer on the same catalog snapshot.

Source of truth for the comparison: sky.optimizer.Optimizer.optimize run in-process (no API
server) on tests/fixtures/catalogs/ installed under a temporary ~/.sky/catalogs/v8/ (see
tests/sky_catalog.py). SkyPilot's optimizer minimises $/h for a fixed accelerator; plan() minimises
total $ (it also models speed and per-cloud overheads), so the two are compared where the
accelerator is fixed and both must pick the same cloud at the same $/h.
"""
from launcher.estimate import plan
from launcher.recipe import load_recipe
from tests.sky_catalog import sky_optimize

CASES = [  # (recipe, gpu) — clouds restricted to the ones in the snapshot
    ("recipes/llama2-7b-full.yaml", "A100-80GB:8"),
    ("recipes/mistral-7b-qlora.yaml", "L40S:1"),
]
CLOUDS = ["lambda", "runpod"]


def test_plan_choice_matches_sky_optimizer(tmp_path):
    ours = []
    for path, gpu in CASES:
        recipe = load_recipe(path)
        chosen = [c for c in plan(recipe, gpu=gpu, spot=False).candidates
                  if c.cloud in CLOUDS and c.fits][0]
        ours.append(chosen)
    theirs = sky_optimize(tmp_path, [{"clouds": CLOUDS, "accelerators": c.accelerators,
                                      "spot": False} for c in ours])
    for mine, sky in zip(ours, theirs, strict=True):
        assert sky["cloud"] == mine.cloud, (mine, sky)
        gpu, n = mine.accelerators.split(":")
        assert sky["accelerators"] == {gpu: int(n)}
        assert abs(sky["cost"] - mine.usd_per_hour) < 0.01, (mine.usd_per_hour, sky)
