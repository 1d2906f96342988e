"""`plan` and `render` refuse what the chosen clouds cannot do before planning, refuse spot without
a bucket, report unwritable -o paths cleanly, and plan Kubernetes only from a declared inventory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import cli
from sftcore.clouds import CLOUDS, Feature

REPO = Path(__file__).resolve().parents[2]
MISTRAL = REPO / "recipes/mistral-7b-qlora.yaml"


def _run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _variant(tmp_path: Path, name: str, src: Path = MISTRAL, **changes) -> Path:
    """The shipped recipe with resources/output keys changed, as a file (for file:line errors)."""
    data = yaml.safe_load(src.read_text())
    for section, values in changes.items():
        data[section] = {**(data.get(section) or {}), **values}
    for src_ in data["data"]["sources"]:
        if src_["path"].count("/") != 1:
            src_["path"] = str((src.parent / src_["path"]).resolve())
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _clean(res, *needles):
    assert res.exit_code == 2, res.output
    for needle in needles:
        assert needle in res.output, (needle, res.output)
    assert "Traceback" not in res.output and "no offer of  on" not in res.output


@pytest.mark.parametrize("command", ["plan", "render"])
def test_spot_on_a_cloud_without_spot_quotes_the_reason(command, tmp_path):
    recipe = _variant(tmp_path, "spot", resources={"spot": True}, output={"bucket": "gs://b/sftlaunch"})
    res = _run(command, recipe, "--cloud", "lambda")
    reason = CLOUDS["lambda"].unsupported[Feature.SPOT].rstrip(".")
    _clean(res, "--cloud lambda", "resources.spot", f"Lambda: {reason}", "remove `spot: true`", "use --cloud runpod")


@pytest.mark.parametrize("command", ["plan", "render"])
def test_multi_node_on_runpod_quotes_the_reason(command, tmp_path):
    recipe = _variant(tmp_path, "twonode", src=REPO / "recipes/mistral-7b-full-2node.yaml",
                      resources={"clouds": ["runpod", "lambda"], "gpu": "auto"})
    res = _run(command, recipe, "--cloud", "runpod")
    _clean(res, "resources.nodes", "RunPod: Multi-node not supported yet", "set nodes: 1", "use --cloud lambda")


def test_spot_on_clouds_none_of_which_can_is_refused_naming_one_that_can(tmp_path):
    # The recipe loader already refuses spot on [lambda] alone; the --spot flag must too.
    recipe = _variant(tmp_path, "lambdaonly", resources={"clouds": ["lambda"]}, output={"bucket": "gs://b/x"})
    _clean(_run("plan", recipe, "--spot"), "--spot:", "Spot instances are not supported in Lambda",
           "drop --spot", "allow runpod in resources.clouds")


def test_plan_spot_flag_needs_a_bucket_like_the_recipe_rule():
    _clean(_run("plan", MISTRAL, "--spot"), "--spot: resources.spot: spot needs output.bucket", "drop --spot")


def test_plan_no_spot_flag_plans_on_demand(tmp_path):
    recipe = _variant(tmp_path, "spot", resources={"spot": True}, output={"bucket": "gs://b/sftlaunch"})
    out = json.loads(_run("plan", recipe, "--no-spot", "--json").output)
    assert not out["chosen"]["spot"] and not any(c["spot"] for c in out["candidates"])


def test_plan_spot_flag_with_a_bucket_plans_spot(tmp_path):
    recipe = _variant(tmp_path, "bucket", output={"bucket": "gs://b/sftlaunch"})
    res = _run("plan", recipe, "--spot", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["chosen"]["spot"] and all(c["cloud"] in ("runpod", "gcp") for c in out["candidates"])


def test_render_to_a_missing_directory_names_path_and_fix():
    res = _run("render", MISTRAL, "-o", "/nonexistent/dir/x.yaml")
    _clean(res, "-o /nonexistent/dir/x.yaml", "/nonexistent/dir does not exist", "mkdir -p /nonexistent/dir")


def test_render_to_an_unwritable_file_is_clean(tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "file-as-dir" / "x.yaml"  # root ignores permissions: use a file as the parent
        (tmp_path / "file-as-dir").write_text("")
        _clean(_run("render", MISTRAL, "-o", target), "is not a directory")
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _clean(_run("render", MISTRAL, "-o", locked / "x.yaml"), "cannot write it", "permissions")
    finally:
        locked.chmod(0o700)


def test_render_overwrites_an_existing_output_file_but_not_the_recipe(tmp_path):
    out = tmp_path / "task.yaml"
    out.write_text("old\n")
    res = _run("render", MISTRAL, "-o", out)
    assert res.exit_code == 0, res.output
    resources = yaml.safe_load(out.read_text())["resources"]
    assert [c["accelerators"] for c in resources["ordered"]][0] == "RTXA5000:1"  # the plan's choice first (recipe header)
    _clean(_run("render", MISTRAL, "-o", MISTRAL), "refusing to overwrite the recipe itself")


# ---------------------------------------------------------------------------------------------
# Kubernetes: only what the user declared


def test_kubernetes_without_inventory_offers_nothing_for_auto_and_says_how(tmp_path):
    recipe = _variant(tmp_path, "k8s", resources={"clouds": ["kubernetes", "runpod"]})
    res = _run("plan", recipe, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["chosen"]["cloud"] == "runpod"  # no invented $0 H100s
    assert not [c for c in out["candidates"] if c["cloud"] == "kubernetes"]
    assert any("kubernetes.yaml" in n and "SFTLAUNCH_K8S_GPUS" in n for n in out["notes"])
    only = _variant(tmp_path, "k8sonly", resources={"clouds": ["kubernetes"]})
    _clean(_run("plan", only), "no GPU inventory declared", "kubernetes.yaml", "SFTLAUNCH_K8S_GPUS",
           "or set resources.gpu explicitly")


def test_kubernetes_plans_from_the_declared_inventory(tmp_path, monkeypatch):
    home = Path(os.environ["SFTLAUNCH_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "kubernetes.yaml").write_text("gpus:\n  - {name: L4, count: 4, usd_per_hour: 0.2}\n")
    recipe = _variant(tmp_path, "k8s", resources={"clouds": ["kubernetes"]})
    out = json.loads(_run("plan", recipe, "--json").output)
    assert {(c["gpu"], c["gpus_per_node"]) for c in out["candidates"]} == {("L4", 1), ("L4", 2), ("L4", 4)}
    assert out["chosen"]["usd_per_hour"] == pytest.approx(0.2 * out["chosen"]["gpus_per_node"])
    assert not out["chosen"]["assumed"] and out["notes"] == []
    monkeypatch.setenv("SFTLAUNCH_K8S_GPUS", "H100:8")  # the variable wins over the file
    out = json.loads(_run("plan", recipe, "--json").output)
    assert {c["gpu"] for c in out["candidates"]} == {"H100"}


def test_explicit_gpu_on_kubernetes_is_assumed_and_said_so(tmp_path):
    recipe = _variant(tmp_path, "k8sgpu", resources={"clouds": ["kubernetes"], "gpu": "A100-80GB:2"})
    res = _run("plan", recipe)
    assert res.exit_code == 0, res.output
    assert "assuming your cluster has 2×A100-80GB at $0.00/GPU-hour" in res.output
    assert "assumed to exist in your" in res.output
    out = json.loads(_run("plan", recipe, "--json").output)
    assert out["chosen"]["assumed"] and out["chosen"]["usd_per_hour"] == 0
    [note] = out["notes"]  # how to declare the GPUs, without "set resources.gpu": it is set
    assert "SFTLAUNCH_K8S_GPUS" in note and "resources.gpu" not in note
    rendered = yaml.safe_load(_run("render", recipe).output.split("\n", 1)[1])
    assert rendered["resources"]["accelerators"] == "A100-80GB:2"
