"""Recipe + chosen target → SkyPilot task dict. A pure function: no I/O, no SkyPilot import.

Why pure: `render`, `up`, `up --dry-run` and the tests must all produce the very same task, and
the tests feed the result to SkyPilot's own `Task.from_yaml_config` to prove it is valid. Secrets
are named only (`HF_TOKEN: null`); their values are supplied by the launcher at launch time from
the caller's environment and never written here.

Inside the container the recipe is a file mount at CONTAINER_RECIPE; local data files and task
directories are mounted beside it and the mounted recipe's paths point at them
(`container_recipe`), so the job reads exactly what the laptop validated.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from launcher.images import resolve_image
from launcher.registry import docker_login_names
from sftcore import contract
from sftcore.clouds import CLOUDS, Feature, capability_problem, not_allowed
from sftcore.contract import Env
from sftcore.errors import UserError
from sftcore.masking import JOB_SECRETS
from sftcore.recipe import Recipe, looks_local

CONTAINER_ROOT = contract.CONTAINER_ROOT
CONTAINER_RECIPE = contract.CONTAINER_RECIPE
ENTRYPOINT = contract.ENTRYPOINT
RUN_LABEL = contract.RUN_LABEL
STEPS = contract.STEPS
# Secrets passed by name; values come from the caller's environment at launch (sftcore.masking).
SECRET_NAMES = JOB_SECRETS
S3_SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Multi-node runs: NCCL's and PyTorch's documented switches, safe on every cloud. WARN prints
# NCCL's errors (not its INFO chatter); async error handling aborts a collective that failed on
# another node instead of hanging until the timeout (torchelastic's own default, 1).
NCCL_ENV = {"NCCL_DEBUG": "WARN", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
# NCCL and DataLoader workers need more shared memory than Docker's 64 MB default.
DOCKER_RUN_OPTIONS = ["--shm-size=16g", "--ulimit memlock=-1", "--ulimit stack=67108864"]


@dataclass(frozen=True)
class Target:
    """Where a run goes. The planner's Candidate has the same attributes, so either renders."""

    cloud: str
    gpu: str
    gpus_per_node: int = 1
    nodes: int = 1
    spot: bool = False
    region: str | None = None

    @property
    def accelerators(self) -> str:
        return f"{self.gpu}:{self.gpus_per_node}"


def check_target(recipe: Recipe, target: Any) -> None:
    """Refuse a target that is not one of the recipe's SkyPilot clouds (exit 2). What the cloud
    can do (spot, multi-node) is not asked again here: recipe validation checked it, and the
    planner for a --cloud that narrows the clouds, before any target reached this function."""
    cloud = target.cloud
    if cloud == "local":
        raise UserError("resources.clouds: local is not a SkyPilot cloud; run it with `sftlaunch up --local RECIPE`")
    if cloud not in CLOUDS:
        raise UserError(f"--cloud {cloud}: unknown cloud; use one of {', '.join(CLOUDS)}")
    allowed = recipe.resources.clouds
    if cloud not in allowed:
        raise UserError(not_allowed(cloud, allowed, _src(recipe)))


def _src(recipe: Recipe) -> str:
    return str(recipe.source_path) if recipe.source_path else "recipe"


def _mount_name(i: int, path: str) -> str:
    return f"{i}-{Path(path).name}"


def container_recipe(recipe: Recipe, bucket: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """The resolved recipe as the container sees it, plus the file mounts it needs (remote→local).
    bucket=False drops output.bucket: the job reads its bucket from this copy alone."""
    data = copy.deepcopy(recipe.resolved_dict())
    if not bucket:
        data["output"]["bucket"] = None
    mounts: dict[str, str] = {}
    for i, src in enumerate(data["data"]["sources"]):
        if looks_local(src["path"]) and Path(src["path"]).is_absolute():
            remote = f"{CONTAINER_ROOT}/data/{_mount_name(i, src['path'])}"
            mounts[remote] = src["path"]
            src["path"] = remote
    ev = data.get("eval")
    if ev and ev.get("tasks_dir"):
        remote = f"{CONTAINER_ROOT}/tasks"
        mounts[remote] = ev["tasks_dir"]
        ev["tasks_dir"] = remote
    return data, mounts


def job_steps(recipe: Recipe, steps: tuple[str, ...]) -> tuple[str, ...]:
    """The steps the job runs: eval is dropped when the recipe has `eval: null`."""
    return tuple(s for s in steps if not (s == "eval" and recipe.eval is None))


# One `entrypoint.sh all` over the task's SFTLAUNCH_STEPS env, never a step per line: only the
# entrypoint knows that a train stopped early (DIR/STOPPED, exit 0) must skip eval and publish
# and end with 0, and it runs eval/publish on the head node only.
RUN_SCRIPT = f"set -euo pipefail\nbash {ENTRYPOINT} all\n"


SETUP_SCRIPT = (
    f'test -f {ENTRYPOINT} || {{ echo "this image has no sftlaunch entrypoint at {ENTRYPOINT}; '
    'build it with `sftlaunch image build`" >&2; exit 1; }\n'
    "nvidia-smi -L || echo 'no NVIDIA GPU visible'\n"
)


def _choice(recipe: Recipe, target: Any, region: str | None) -> dict[str, Any]:
    """One resources choice. The region is left free (SkyPilot tries every region that sells
    it, cheapest first) unless resources.regions pins it."""
    out: dict[str, Any] = {
        "cloud": target.cloud,
        "accelerators": f"{target.gpu}:{target.gpus_per_node}",
        "image_id": f"docker:{resolve_image(recipe.image, cloud=target.cloud)}",
    }
    if region:
        out["region"] = region
    if target.nodes > 1 and capability_problem(target.cloud, Feature.NETWORK_TIER) is None:
        # The fastest interconnect the cloud has (GCP: GPUDirect-TCPX/TCPXO/RDMA); asked only
        # where SkyPilot supports it, since elsewhere it would make the choice infeasible.
        out["network_tier"] = "best"
    return out


def choices(recipe: Recipe, targets: list[Any]) -> list[tuple[Any, str | None]]:
    """(target, region) per SkyPilot choice, in plan order: the region free (None) unless
    resources.regions pins it; then each target once per pinned region that sells it (a
    planner Candidate knows where; an explicit Target is tried in every pinned region)."""
    pinned = recipe.resources.regions or []
    if not pinned:
        return [(t, None) for t in targets]
    out = []
    for t in targets:
        sold = getattr(t, "region_usd_per_hour", None) or {}
        out.extend((t, r) for r in pinned if not sold or r in sold)
    return out or [(targets[0], pinned[0])]


def _resources(recipe: Recipe, pairs: list[tuple[Any, str | None]]) -> dict[str, Any]:
    """A single choice, or SkyPilot's `ordered` list: try the first; on no capacity, the next."""
    out = [_choice(recipe, t, region) for t, region in pairs]
    return dict(out[0]) if len(out) == 1 else {"ordered": out}


def _money(x: Any) -> float | None:
    return None if x is None else round(float(x), 4)


def rate_table(pairs: list[tuple[Any, str | None]]) -> list[dict[str, Any]] | None:
    """The budget guard's rates, one entry per ordered choice (Env.RATES): the job charges the
    one SkyPilot launched, in the region it runs in (jobs/rate.py), not the dearest of them all.
    None when a choice has no price (an explicit GPU nobody sells): the guard is then off."""
    table = []
    for t, region in pairs:
        by_region = {r: _money(p) for r, p in (getattr(t, "region_usd_per_hour", None) or {}).items()}
        usd = _money(getattr(t, "usd_per_hour", None))
        usd = by_region.get(region, usd) if region else usd  # no per-region prices: its one price
        if usd is None:
            return None
        usd_max = usd if region else _money(getattr(t, "usd_per_hour_max", None) or usd)
        table.append({"cloud": t.cloud, "region": region, "accelerator": t.gpu, "count": t.gpus_per_node,
                      "nodes": t.nodes, "spot": bool(t.spot), "usd_per_hour": usd, "usd_per_hour_max": usd_max,
                      "memory_gb": getattr(t, "mem_available_gb", None),
                      "region_usd_per_hour": {} if region else by_region})
    return table


def checkpointing_env(recipe: Recipe, targets: list[Any]) -> str | None:
    """The plan's choice for `gradient_checkpointing: auto`, for the job: "1" if any rendered
    choice needs it (SkyPilot may launch any of them and the env is one for all), else "0".
    None (the job then turns it on) for true/false recipes or targets the planner did not size."""
    if recipe.train.gradient_checkpointing != "auto":
        return None
    decided = [getattr(t, "gradient_checkpointing", None) for t in targets]
    if any(d is None for d in decided):
        return None
    return "1" if any(decided) else "0"


def plan_prediction(target: Any) -> dict[str, float] | None:
    """The plan's figures for `target` (contract.PLAN_KEYS), when it is a planned candidate:
    tokens/s over all GPUs, training/eval/total hours, total $, MFU and model size."""
    t = getattr(target, "timing", None)
    if t is None or not t.train_hours or not t.tokens:
        return None
    out = {"tokens_per_s": round(t.tokens / (t.train_hours * 3600), 3), "train_hours": round(t.train_hours, 6),
           "eval_hours": round(t.eval_hours, 6), "eta_hours": round(target.eta_hours, 6),
           "total_usd": round(target.total_usd, 4), "mfu": t.terms.get("mfu"), "params_b": t.terms.get("params_b")}
    return {k: v for k, v in out.items() if isinstance(v, (int, float))}


def secret_names(recipe: Recipe, targets: list[Any], env: Mapping[str, str] | None = None) -> dict[str, None]:
    """The task's secrets, by name only (values join at launch): the job's, the S3 keys for an
    s3:// bucket, and SkyPilot's docker login where it logs in to every image the run may pull."""
    secrets: dict[str, None] = {name: None for name in SECRET_NAMES}
    if recipe.output.bucket and recipe.output.bucket.startswith("s3://"):
        secrets.update({name: None for name in S3_SECRET_NAMES})
    images = {resolve_image(recipe.image, cloud=t.cloud) for t in targets}
    secrets.update({name: None for name in docker_login_names(images, env)})
    return secrets


def render_task(
    recipe: Recipe,
    target: Any,
    run_id: str,
    recipe_mount_src: str,
    steps: tuple[str, ...] = STEPS,
    fallbacks: list[Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The SkyPilot task for `recipe` on `target` (a Target or the planner's Candidate), with
    `fallbacks` (further candidates, in plan order) as SkyPilot's ordered resources. `env` (default:
    this process's) is looked at only for SkyPilot's docker login variables, whose names become task
    secrets when they log in to the registry of every image the run may pull (values: at launch)."""
    targets = [target] + [f for f in fallbacks or [] if f is not target]
    for t in targets:
        check_target(recipe, t)
        if t.spot != target.spot or t.nodes != target.nodes:
            raise UserError("fallbacks must share spot and nodes with the first choice")
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise UserError(f"unknown step {unknown[0]}; steps are {', '.join(STEPS)}")
    res = recipe.resources
    pairs = choices(recipe, targets)
    resources: dict[str, Any] = _resources(recipe, pairs)
    resources.update({"use_spot": bool(target.spot), "disk_size": res.disk_gb, "labels": {RUN_LABEL: run_id}})
    if target.spot:
        # A managed job: the jobs controller relaunches it after preemption, and the job resumes
        # from the newest complete checkpoint in the bucket (keyed by the run id).
        resources["job_recovery"] = {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 3}
    else:
        # The cluster's last act: once its one job has ended (success, failure or budget stop) and
        # sat idle for autostop_minutes, SkyPilot deletes it, on every cloud, whether or not anyone
        # is streaming. Deleting loses nothing: `up` refuses a cloud run unless its results go to
        # output.bucket or output.hub_repo. (`up` downs it at once when it is watching the end.)
        resources["autostop"] = {"idle_minutes": res.autostop_minutes, "down": True}

    _, data_mounts = container_recipe(recipe)
    file_mounts = {CONTAINER_RECIPE: recipe_mount_src, **data_mounts}
    envs: dict[str, str] = {
        Env.RUN_ID: run_id,
        Env.RECIPE: CONTAINER_RECIPE,
        Env.OUT: contract.container_out(run_id),
        Env.STEPS: ",".join(job_steps(recipe, steps)),  # what `entrypoint.sh all` runs
        "HF_HOME": contract.CONTAINER_HF_HOME,
    }
    if target.nodes > 1:
        envs.update(NCCL_ENV)
    # What the job needs to describe its hardware and cost (model card) and to stop itself when
    # the run's cost passes max_usd (the budget guard runs inside the job, laptop or not). The
    # bucket and max_usd reach the job in the mounted recipe only (contract.JobEnv).
    nodes = f"{target.nodes} nodes × " if target.nodes > 1 else ""
    envs[Env.HARDWARE] = " | ".join(f"{t.cloud} {nodes}{t.gpus_per_node}×{t.gpu}" for t in targets) + (
        " spot" if target.spot else "")
    # The in-job budget guard charges the choice SkyPilot launched, at its region's price.
    rates = rate_table(pairs)
    if rates is not None:
        envs[Env.RATES] = json.dumps(rates, separators=(",", ":"), sort_keys=True)
    gc = checkpointing_env(recipe, targets)
    if gc is not None:
        envs[Env.GRADIENT_CHECKPOINTING] = gc
    prediction = plan_prediction(target)
    if prediction:  # what the job's calibration probe measures the run against (jobs/calibration.py)
        envs[Env.PLAN] = json.dumps(prediction, sort_keys=True)
    secrets = secret_names(recipe, targets, env)

    task: dict[str, Any] = {
        "name": run_id,
        "num_nodes": target.nodes,
        "resources": resources,
        "envs": envs,
        "secrets": secrets,
        "file_mounts": file_mounts,
        "setup": SETUP_SCRIPT,
        "run": RUN_SCRIPT,
        "config": {"docker": {"run_options": list(DOCKER_RUN_OPTIONS)}},
    }
    return task


class _Dumper(yaml.SafeDumper):
    """Multi-line scripts as `|` blocks, so the rendered task reads like a hand-written one."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(task: dict[str, Any]) -> str:
    return yaml.dump(task, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def container_recipe_yaml(recipe: Recipe, bucket: bool = True) -> str:
    data, _ = container_recipe(recipe, bucket)
    header = f"# Resolved recipe (sha256 {recipe.sha256()}), as mounted in the container.\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
