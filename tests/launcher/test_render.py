"""Every shipped recipe validates and renders for each cloud it allows; SkyPilot accepts it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import cli
from launcher.render import CONTAINER_RECIPE, Target, container_recipe, render_task, to_yaml
from sftcore.clouds import CLOUDS, Feature
from sftcore.errors import UserError
from sftcore.recipe import load_recipe, recipe_from_dict

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
            yield resolve_target(recipe, cloud, None)[0]
        except UserError as exc:
            # Nothing fits on this cloud: still render the overall choice there to prove validity.
            if "only as" in str(exc):
                continue  # the cloud does not sell that count (tests/launcher/test_plan_sky_optimizer.py)
            assert "nothing fits" in str(exc), exc
            overall = resolve_target(recipe, None, None)[0]
            yield Target(cloud=cloud, gpu=overall.gpu, gpus_per_node=overall.gpus_per_node,
                         nodes=1 if not CLOUDS[cloud].supports(Feature.MULTI_NODE) else overall.nodes,
                         spot=overall.spot and CLOUDS[cloud].supports(Feature.SPOT))


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
        "output": {"bucket": "s3://my-bucket/x"},
    })


@pytest.mark.parametrize("cloud", ["lambda", "runpod", "gcp", "kubernetes"])
def test_autostop_deletes_the_idle_cluster_on_every_cloud(cloud):
    # Even GCP, which could stop: results are in the bucket or on the Hub (up refuses otherwise),
    # so a detached run's cluster ends deleted, not stopped with its disk still billing.
    task = render_task(_recipe(), Target(cloud, "H100", 1), "sftl-r-0000", "/x")
    assert task["resources"]["autostop"] == {"idle_minutes": 30, "down": True}
    assert "job_recovery" not in task["resources"]


def test_spot_renders_managed_job_recovery():
    task = render_task(_recipe(spot=True, max_usd=50), Target("gcp", "A100-80GB", 8, spot=True), "sftl-r-0000", "/x")
    assert task["resources"]["use_spot"] is True
    assert task["resources"]["job_recovery"]["strategy"]
    assert "autostop" not in task["resources"]
    # The bucket and the budget reach the job in its mounted recipe only (the job reads them there).
    assert "SFTLAUNCH_BUCKET" not in task["envs"] and "SFTLAUNCH_MAX_USD" not in task["envs"]
    mounted, _ = container_recipe(_recipe(spot=True, max_usd=50))
    assert mounted["output"]["bucket"] == "s3://my-bucket/x" and mounted["resources"]["max_usd"] == 50
    assert container_recipe(_recipe(), bucket=False)[0]["output"]["bucket"] is None  # local Docker runs
    assert task["envs"]["SFTLAUNCH_HARDWARE"] == "gcp 8×A100-80GB spot"  # the model card's hardware line
    two = render_task(_recipe(nodes=2), Target("gcp", "H100", 8, nodes=2), "sftl-r-0000", "/x")
    assert two["envs"]["SFTLAUNCH_HARDWARE"] == "gcp 2 nodes × 8×H100"
    # s3 bucket credentials travel as named secrets, never values.
    assert task["secrets"]["AWS_SECRET_ACCESS_KEY"] is None


@pytest.mark.parametrize("cloud,spot,nodes,fragment", [
    ("lambda", True, 1, "Lambda: Spot instances are not supported in Lambda; remove `spot: true` or use --cloud runpod"),
    ("runpod", False, 2, "RunPod: Multi-node not supported yet"),
    ("kubernetes", True, 1, "Kubernetes: Spot instances are not supported in Kubernetes"),
])
def test_cloud_capability_refusals_quote_skypilot(cloud, spot, nodes, fragment):
    """Validation passed (another allowed cloud can); --cloud narrows to one that cannot: the
    target is refused where it is resolved, with SkyPilot's reason."""
    from launcher.commands.render import resolve_target

    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace("`", ".")):
        resolve_target(_recipe(spot=spot, nodes=nodes), cloud, None)


def _count_capability_checks(monkeypatch) -> list:
    """Every call of sftcore.clouds.check_features, through whichever module imported it."""
    import sys

    import launcher.estimate.refusals  # noqa: F401 - imported by plan lazily: patched here too
    from sftcore import clouds

    calls, real = [], clouds.check_features

    def counted(features, among):
        calls.append((list(features), list(among)))
        return real(calls[-1][0], calls[-1][1])

    for mod in list(sys.modules.values()):
        if getattr(mod, "check_features", None) is real:
            monkeypatch.setattr(mod, "check_features", counted)
    return calls


@pytest.mark.parametrize("command", ["plan", "render"])
def test_the_capability_check_is_made_once_at_validation(command, tmp_path, monkeypatch):
    """Spot on [lambda, runpod, gcp]: validation asks once; plan and render trust the validated
    recipe. --cloud narrows what validation saw: asked once more, for that cloud only."""
    data = yaml.safe_load((REPO / "recipes/mistral-7b-qlora.yaml").read_text())
    data["resources"].update({"spot": True, "clouds": ["lambda", "runpod", "gcp"]})
    data["output"]["bucket"] = "gs://b/sftlaunch"
    path = tmp_path / "spot.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("SFTLAUNCH_HOME", str(tmp_path / "home"))
    calls = _count_capability_checks(monkeypatch)
    res = CliRunner().invoke(cli, [command, str(path)])
    assert res.exit_code == 0, res.output
    assert [a for _, a in calls] == [["lambda", "runpod", "gcp"]], calls
    calls.clear()
    res = CliRunner().invoke(cli, [command, str(path), "--cloud", "runpod"])
    assert res.exit_code == 0, res.output
    assert [a for _, a in calls] == [["lambda", "runpod", "gcp"], ["runpod"]], calls


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


def test_run_script_is_one_entrypoint_all_over_the_steps():
    recipe = _recipe()
    task = render_task(recipe, Target("gcp", "L4", 1), "sftl-r-0000", "/m")
    assert task["run"].splitlines()[-1] == "bash /opt/sftlaunch/docker/entrypoint.sh all"
    # The steps travel once, as a task env (SkyPilot exports it to `run`), never in the script too.
    assert task["envs"]["SFTLAUNCH_STEPS"] == "train,eval,publish" and "SFTLAUNCH_STEPS" not in task["run"]
    no_eval = recipe_from_dict({**recipe.resolved_dict(), "eval": None})
    task = render_task(no_eval, Target("gcp", "L4", 1), "sftl-r-0000", "/m")
    assert task["envs"]["SFTLAUNCH_STEPS"] == "train,publish"
    eval_only = render_task(recipe, Target("gcp", "L4", 1), "sftl-r-0000", "/m", steps=("eval",))
    assert eval_only["envs"]["SFTLAUNCH_STEPS"] == "eval"


def _run_rendered(task, tmp_path, **env):
    """The rendered `run:` script as SkyPilot runs it (bash, the task's envs), with the image's
    entrypoint path pointing at this checkout's and a stub job Python (tests/launcher/fake_backend)."""
    import subprocess

    from launcher.render import ENTRYPOINT
    from tests.launcher.fake_backend import STUB_RECIPE_YAML, stub_job_python

    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(STUB_RECIPE_YAML)
    script = task["run"].replace(ENTRYPOINT, str(REPO / "docker" / "entrypoint.sh"))
    full = {**os.environ, **task["envs"], "SFTLAUNCH_RECIPE": str(recipe), "SFTLAUNCH_OUT": str(tmp_path / "out"),
            "SFTLAUNCH_PYTHON": stub_job_python(tmp_path / "bin"), **env}
    proc = subprocess.run(["bash", "-c", script], env=full, capture_output=True, text=True, timeout=120)
    return proc, tmp_path / "out"


# A stopped train: jobs.train writes STOPPED and exits 0, so a managed job is not restarted for it.
def test_rendered_flow_skips_eval_and_publish_after_a_budget_stop(tmp_path):
    import json

    task = render_task(_recipe(), Target("gcp", "L4", 1), "sftl-r-0000", "/m")
    proc, out = _run_rendered(task, tmp_path, STUB_TRAIN_EXIT="0", STUB_STOP="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "ran-train").exists()
    assert not (out / "ran-eval").exists() and not (out / "ran-publish").exists()
    assert "sftlaunch: run stopped before the end of training" in proc.stdout
    end = json.loads((out / "exit.json").read_text())
    assert end["exit_code"] == 0 and end["stopped"]["reason"] == "budget"


def test_rendered_flow_runs_every_step_when_training_finishes(tmp_path):
    import json

    task = render_task(_recipe(), Target("gcp", "L4", 1), "sftl-r-0000", "/m")
    proc, out = _run_rendered(task, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all((out / f"ran-{s}").exists() for s in ("train", "eval", "publish"))
    assert "run stopped" not in proc.stdout
    assert json.loads((out / "exit.json").read_text())["stopped"] is None
    # A failing train fails the run (exit 1 reaches SkyPilot) and nothing after it runs.
    proc, out = _run_rendered(task, tmp_path / "again", STUB_TRAIN_EXIT="1")
    assert proc.returncode == 1 and not (out / "ran-eval").exists()
    assert json.loads((out / "exit.json").read_text())["exit_code"] == 1


@pytest.mark.parametrize("cloud", ["gcp", "lambda", "kubernetes"])
def test_multi_node_asks_the_best_network_where_skypilot_supports_it(cloud):
    """`network_tier: best` only where the installed SkyPilot supports CUSTOM_NETWORK_TIER (GCP);
    on Lambda and Kubernetes it would make the choice infeasible, so it is left out. SkyPilot
    parses the rendered task and reads the tier back."""
    sky = pytest.importorskip("sky")
    from sky.utils import resources_utils

    task = render_task(_recipe(nodes=2), Target(cloud, "H100", 8, nodes=2), "sftl-r-0000", "/x")
    parsed = sky.Task.from_yaml_config(yaml.safe_load(to_yaml(task)))
    tier = next(iter(parsed.resources)).network_tier
    sky_cls = getattr(sky.clouds, CLOUDS[cloud].sky_class)
    unsupported = getattr(sky_cls, "_CLOUD_UNSUPPORTED_FEATURES", {})  # GCP has none cloud-wide
    supported = sky.clouds.CloudImplementationFeatures.CUSTOM_NETWORK_TIER not in unsupported
    assert supported == (cloud == "gcp")
    assert tier == (resources_utils.NetworkTier.BEST if supported else None)
    one = render_task(_recipe(), Target(cloud, "H100", 8), "sftl-r-0000", "/x")
    assert "network_tier" not in one["resources"]


def test_multi_node_sets_safe_nccl_defaults_that_torch_knows():
    """NCCL_DEBUG=WARN and TORCH_NCCL_ASYNC_ERROR_HANDLING=1 on multi-node runs only; both names
    are among the NCCL variables the installed PyTorch documents (its DDP env dump)."""
    import inspect

    from torch.nn.parallel import distributed

    from launcher.render import NCCL_ENV

    known = inspect.getsource(distributed._dump_DDP_relevant_env_vars)
    two = render_task(_recipe(nodes=2), Target("gcp", "H100", 8, nodes=2), "sftl-r-0000", "/x")
    assert {k: two["envs"][k] for k in NCCL_ENV} == {"NCCL_DEBUG": "WARN", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    assert all(f'"{name}"' in known for name in NCCL_ENV)
    one = render_task(_recipe(), Target("gcp", "H100", 8), "sftl-r-0000", "/x")
    assert not set(NCCL_ENV) & set(one["envs"])


def test_rate_table_prices_each_choice_and_keeps_one_price_clouds(monkeypatch):
    """Every ordered choice is in SFTLAUNCH_RATES with its $/h; a Kubernetes offer (one declared
    price, no regions) keeps that price even when a region (its context) is pinned."""
    import json

    from launcher.estimate.candidates import plan

    monkeypatch.setenv("SFTLAUNCH_K8S_GPUS", "H100:8")
    monkeypatch.setenv("SFTLAUNCH_K8S_USD_PER_GPU_HOUR", "1.5")
    for regions, want_region in ((None, None), (["my-context"], "my-context")):
        recipe = recipe_from_dict({
            "name": "r", "model": {"id": "meta-llama/Llama-2-7b-hf"}, "method": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            "data": {"sources": [{"path": "a/b", "format": "text"}]},
            "resources": {"clouds": ["kubernetes"], "gpu": "H100:8", "regions": regions}})
        chosen = plan(recipe).chosen
        task = render_task(recipe, chosen, "sftl-r-0000", "/x")
        rates = json.loads(task["envs"]["SFTLAUNCH_RATES"])
        assert [(r["cloud"], r["region"], r["accelerator"], r["count"], r["usd_per_hour"]) for r in rates] == [
            ("kubernetes", want_region, "H100", 8, 12.0)]
        assert task["resources"].get("region") == want_region
def test_the_plan_prediction_reaches_the_job_for_its_calibration():
    """SFTLAUNCH_PLAN carries the chosen candidate's figures; jobs.calibration reads them back."""
    from jobs.calibration import read_plan
    from launcher.estimate.candidates import plan
    from sftcore.contract import PLAN_KEYS, Env, JobEnv

    recipe = load_recipe(REPO / "recipes" / "llama2-70b-qlora.yaml")
    chosen = plan(recipe).chosen
    task = render_task(recipe, chosen, "sftl-x-beef", "/tmp/r.yaml")
    got = read_plan(JobEnv.from_env(task["envs"]))  # the task's envs as the job reads them
    assert set(got) == set(PLAN_KEYS)
    t = chosen.timing
    assert got["tokens_per_s"] == pytest.approx(t.tokens / (t.train_hours * 3600), rel=1e-6)
    assert (got["eta_hours"], got["total_usd"], got["mfu"]) == pytest.approx((chosen.eta_hours, chosen.total_usd, t.terms["mfu"]), rel=1e-5)
    assert got["params_b"] == pytest.approx(69, rel=0.05)
    # a bare Target (render --gpu) has no plan: nothing to calibrate against
    assert Env.PLAN not in render_task(recipe, Target("gcp", "A100-80GB", 1), "sftl-x-beef", "/tmp/r.yaml")["envs"]


DOCKER_PASSWORD_CANARY = "ghp_DOCKERpasswordCANARY0123456789"


@pytest.mark.parametrize(("server", "logs_in"), [("ghcr.io", True), ("https://ghcr.io", False), ("docker.io", False)])
def test_a_private_image_is_pulled_with_skypilots_docker_login(server, logs_in):
    """With SkyPilot's three docker login variables set for the image's registry, the task names
    them as secrets (no value in the YAML); given the values at launch (our backend's `_task`),
    SkyPilot's own Task attaches a DockerLoginConfig to every resource. For another registry they
    are left out: SkyPilot would prefix the image with the login server and pull the wrong one
    (with a scheme too: `https://ghcr.io/ghcr.io/...`)."""
    sky = pytest.importorskip("sky")
    from launcher.backends.sky import _task

    login = {"SKYPILOT_DOCKER_USERNAME": "me", "SKYPILOT_DOCKER_PASSWORD": DOCKER_PASSWORD_CANARY,
             "SKYPILOT_DOCKER_SERVER": server}
    recipe = recipe_from_dict({**yaml.safe_load((REPO / "recipes/mistral-7b-qlora.yaml").read_text()),
                               "image": "ghcr.io/me/private-sftlaunch:1"}, base_dir=REPO)
    task = render_task(recipe, Target("gcp", "L4", 1), "sftl-r-0000", "/x",
                       fallbacks=[Target("runpod", "L4", 1)], env=login)
    text = to_yaml(task)
    assert DOCKER_PASSWORD_CANARY not in text
    declared = {k for k in yaml.safe_load(text)["secrets"] if k.startswith("SKYPILOT_DOCKER_")}
    assert declared == (set(login) if logs_in else set())
    parsed = _task(task, {**login, "HF_TOKEN": CANARY} if logs_in else {"HF_TOKEN": CANARY})
    configs = [r.docker_login_config for r in parsed.resources]
    assert len(configs) == 2 and all((c is not None and c.server == server) if logs_in else c is None for c in configs)
    assert isinstance(parsed, sky.Task)
    assert not any(k.startswith("SKYPILOT_DOCKER_") for k in render_task(recipe, Target("gcp", "L4", 1), "sftl-r-0000",
                                                                       "/x", env={})["secrets"])


def test_docker_hub_logins_keep_the_image_skypilot_pulls():
    """SkyPilot's own `DockerLoginConfig.format_image` is the rule: a login is rendered only where it
    leaves the image as it is, or names the same Docker Hub image."""
    docker_utils = pytest.importorskip("sky.provision.docker_utils")
    from launcher.registry import docker_login_names, parse_reference

    for server, image in (("docker.io", "me/img:1"), ("ghcr.io", "ghcr.io/me/img:1"), ("docker.io", "ghcr.io/me/img:1"),
                          ("https://ghcr.io", "ghcr.io/me/img:1"), ("quay.io", "me/img:1")):
        env = {"SKYPILOT_DOCKER_USERNAME": "u", "SKYPILOT_DOCKER_PASSWORD": "p", "SKYPILOT_DOCKER_SERVER": server}
        pulled = docker_utils.DockerLoginConfig("u", "p", server).format_image(image)
        same = pulled == image or parse_reference(pulled) == parse_reference(image)
        assert bool(docker_login_names([image], env)) == same, (server, image, pulled)
    assert docker_login_names(["ghcr.io/me/img:1"], {"SKYPILOT_DOCKER_SERVER": "ghcr.io"}) == ()  # all three, or none
