"""`plan` uses the user's own measured speed (the jobs' calibration probe, in the registry) for the
same GPU, method and model size, and says so; published MFU figures otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.estimate.candidates import plan
from launcher.runs import Registry
from sftcore.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "llama2-70b-qlora.yaml"


def _same(cands, ref):
    return next(c for c in cands if (c.cloud, c.gpu, c.gpus_per_node, c.region) == (ref.cloud, ref.gpu, ref.gpus_per_node, ref.region))


def _measured_run(reg, run_id, recipe, gpu, mfu, params_b, method=None):
    data = recipe.resolved_dict()
    if method:
        data["method"] = method
    reg.create(run_id, data, gpu=gpu, state="succeeded")
    reg.update(run_id, measured_mfu=mfu, params_b=params_b)


def test_measured_mfu_replaces_the_published_one_and_the_plan_says_so():
    recipe = load_recipe(RECIPE)
    before = plan(recipe)
    ref = before.chosen
    published, params = ref.timing.terms["mfu"], ref.timing.terms["params_b"]
    reg = Registry()
    # runs that do not count: another method, another size, another GPU
    _measured_run(reg, "sftl-o-0001", recipe, ref.gpu, published / 10, params, method="lora")
    _measured_run(reg, "sftl-o-0002", recipe, ref.gpu, published / 10, params / 10)
    _measured_run(reg, "sftl-o-0003", recipe, "T4" if ref.gpu != "T4" else "L4", published / 10, params)
    same = _same(plan(recipe).candidates, ref)
    assert same.timing.train_hours == pytest.approx(ref.timing.train_hours) and "mfu_measured_runs" not in same.timing.terms
    # two runs like this one, at half and at a third of the published MFU: the median is used
    _measured_run(reg, "sftl-m-0001", recipe, ref.gpu, published / 2, params * 1.1)
    _measured_run(reg, "sftl-m-0002", recipe, ref.gpu, published / 3, params)
    after = plan(recipe)
    same = _same(after.candidates, ref)
    mfu = (published / 2 + published / 3) / 2
    assert same.timing.terms["mfu"] == pytest.approx(mfu) and same.timing.terms["mfu_measured_runs"] == 2
    assert same.timing.train_hours == pytest.approx(ref.timing.train_hours * published / mfu)
    assert any(n.startswith(f"{ref.gpu}: MFU {mfu:.2f} measured on 2 of your qlora runs") and f"published {published:.2f}" in n
               for n in after.notes)
    res = CliRunner().invoke(cli, ["plan", str(RECIPE), "--gpu", f"{ref.gpu}:{ref.gpus_per_node}", "--explain"])
    assert "measured on 2 of your runs; published" in res.output and "measured on 2 of your qlora runs" in res.output


def test_an_unreadable_registry_plans_with_published_figures(tmp_path, monkeypatch):
    from sftcore.contract import Env

    monkeypatch.setenv(Env.HOME, str(tmp_path))
    (tmp_path / "runs.db").write_bytes(b"not a database at all" * 100)
    chosen = plan(load_recipe(RECIPE)).chosen
    assert "mfu_measured_runs" not in chosen.timing.terms
