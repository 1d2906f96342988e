"""Every shipped recipe validates and renders for each cloud it allows; SkyPilot accepts it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import cli
from launcher.clouds import CLOUDS
from launcher.errors import UserError
from launcher.recipe import load_recipe, recipe_from_dict
from launcher.render import CONTAINER_RECIPE, Target, container_recipe, render_task, to_yaml

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
CANARY = "hf_CANARYsecretVALUE0123456789"


def _targets(recipe):
    """One target per allowed SkyPilot cloud: the planner's choice there, else the recipe's GPU."""
    from launcher.commands.render import resolve_target

    for cloud in recipe.resources.clouds:
        if cloud not in CLOUDS:
            continue
        try:
            yield resolve_target(recipe, cloud, None)
        except UserError as exc:
            # Nothing fits on this cloud: still render the overall choice there to prove validity.
            assert "nothing fits" in str(exc), exc
            overall = resolve_target(recipe, None, None)
            yield Target(cloud=cloud, gpu=overall.gpu, gpus_per_node=overall.gpus_per_node,
                         nodes=1 if not CLOUDS[cloud].supports("multi_node") else overall.nodes,
                         spot=overall.spot and CLOUDS[cloud].supports("spot"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"llama2-70b-qlora.yaml", "tiny-local.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_validates_and_renders(path, tmp_path, monkeypatch):
    sky = pytest.importorskip("sky")
    monkeypatch.setenv("HF_TOKEN", CANARY)
    monkeypatch.setenv("WANDB_API_KEY", CANARY + "wandb")
    recipe = load_recipe(path)
    mount = tmp_path / "recipe.yaml"
    rendered_any = False
    for target in _targets(recipe):
        task = render_task(recipe, target, f"sftl-{recipe.name}-beef", str(mount))
        text = to_yaml(task)
        assert CANARY not in text
        parsed = yaml.safe_load(text)
        assert parsed["resources"]["labels"] == {"sftlaunch-run": f"sftl-{recipe.name}-beef"}
        assert parsed["resources"]["image_id"].startswith("docker:")
        assert parsed["secrets"]["HF_TOKEN"] is None and parsed["secrets"]["WANDB_API_KEY"] is None
        assert parsed["file_mounts"][CONTAINER_RECIPE] == str(mount)
        sky_task = sky.Task.from_yaml_config(parsed)
        assert sky_task.num_nodes == target.nodes
        rendered_any = True
    if not any(c in CLOUDS for c in recipe.resources.clouds):
        assert recipe.resources.clouds == ["local"]
    else:
        assert rendered_any


def _recipe(**resources):
    return recipe_from_dict({
        "name": "r", "model": {"id": "a/b"}, "method": "full",
        "data": {"sources": [{"path": "a/b", "format": "text"}]},
        "resources": {"clouds": ["lambda", "runpod", "gcp", "kubernetes"], **resources},
        "output": {"bucket": "s3://b/x"},
    })


@pytest.mark.parametrize("cloud,down", [("lambda", True), ("runpod", True), ("gcp", False), ("kubernetes", True)])
def test_autostop_downs_where_a_cloud_cannot_stop(cloud, down):
    task = render_task(_recipe(), Target(cloud, "H100", 1), "sftl-r-0000", "/x")
    assert task["resources"]["autostop"] == {"idle_minutes": 30, "down": down}
    assert "job_recovery" not in task["resources"]


def test_spot_renders_managed_job_recovery():
    task = render_task(_recipe(spot=True), Target("gcp", "A100-80GB", 8, spot=True), "sftl-r-0000", "/x")
    assert task["resources"]["use_spot"] is True
    assert task["resources"]["job_recovery"]["strategy"]
    assert "autostop" not in task["resources"]
    assert task["envs"]["SFTLAUNCH_BUCKET"] == "s3://b/x"
    # s3 bucket credentials travel as named secrets, never values.
    assert task["secrets"]["AWS_SECRET_ACCESS_KEY"] is None


@pytest.mark.parametrize("cloud,spot,nodes,fragment", [
    ("lambda", True, 1, "Lambda: Spot instances are not supported in Lambda; remove `spot: true` or use --cloud runpod"),
    ("runpod", False, 2, "RunPod: Multi-node not supported yet"),
    ("kubernetes", True, 1, "Kubernetes: Spot instances are not supported in Kubernetes"),
])
def test_cloud_capability_refusals_quote_skypilot(cloud, spot, nodes, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace("`", ".")):
        render_task(_recipe(spot=spot, nodes=nodes), Target(cloud, "H100", 8, nodes=nodes, spot=spot), "sftl-r-0000", "/x")


def test_render_cli_exit_2_for_disallowed_cloud(tmp_path):
    result = CliRunner().invoke(cli, ["render", str(REPO / "recipes/llama2-70b-qlora.yaml"), "--cloud", "kubernetes", "--gpu", "H100:1"])
    assert result.exit_code == 2
    assert "kubernetes is not allowed by the recipe" in result.output
    assert "Traceback" not in result.output


def test_render_cli_writes_file_and_mount(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", CANARY)
    out = tmp_path / "task.yaml"
    result = CliRunner().invoke(cli, ["render", str(REPO / "recipes/llama2-70b-qlora.yaml"), "--cloud", "gcp",
                                      "--gpu", "H100:1", "--run-id", "sftl-llama2-70b-dolphin-0a0a", "-o", str(out)])
    assert result.exit_code == 0, result.output
    task = yaml.safe_load(out.read_text())
    mount = Path(task["file_mounts"][CONTAINER_RECIPE])
    assert mount.is_file() and mount.is_relative_to(Path(os.environ["SFTLAUNCH_HOME"]))
    mounted = load_recipe(mount)
    assert mounted.name == "llama2-70b-dolphin"
    for f in (out, mount):
        assert CANARY not in f.read_text()


def test_local_data_is_mounted_and_rewritten(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "hello"}\n')
    recipe = recipe_from_dict({
        "name": "r", "model": {"id": "a/b"}, "method": "full",
        "data": {"sources": [{"path": "rows.jsonl", "format": "text"}]}, "resources": {"clouds": ["gcp"]},
    }, base_dir=tmp_path)
    data_in_container, mounts = container_recipe(recipe)
    remote = data_in_container["data"]["sources"][0]["path"]
    assert mounts == {remote: str(data)}
    task = render_task(recipe, Target("gcp", "L4", 1), "sftl-r-0000", "/m")
    assert task["file_mounts"][remote] == str(data)


def test_run_script_orders_steps_and_skips_eval_when_null():
    recipe = _recipe()
    task = render_task(recipe, Target("gcp", "L4", 1), "sftl-r-0000", "/m")
    run = task["run"]
    assert run.index("$E train") < run.index("$E eval") < run.index("$E publish")
    no_eval = recipe_from_dict({**recipe.resolved_dict(), "eval": None})
    assert "$E eval" not in render_task(no_eval, Target("gcp", "L4", 1), "sftl-r-0000", "/m")["run"]
    eval_only = render_task(recipe, Target("gcp", "L4", 1), "sftl-r-0000", "/m", steps=("eval",))
    assert "$E train" not in eval_only["run"] and "$E eval" in eval_only["run"]
