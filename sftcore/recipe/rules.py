"""Rules that span fields (method and its sections, spot needs a bucket, local data paths...).

Why on the raw data rather than a pydantic model validator: they are then reported together with
the type errors, each at the line of its key, and an override from the command line (--spot,
--bucket) is named as the flag to change rather than a file line the user did not write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sftcore.clouds import CLOUDS, Feature, able_clouds, asked_features, check_features, min_name_limit
from sftcore.eval_backend import BackendError, choose
from sftcore.recipe.input import (
    LOCAL_DATA_SUFFIXES,
    data_path_problem,
    local_bucket_problem,
    tasks_dir_problem,
)
from sftcore.recipe.schema import NAME_MAX, NAME_RE, RUN_ID_PREFIX, RUN_ID_SUFFIX_LEN, Recipe, _has_scheme

# --------------------------------------------------------------------------------------------
# Cross-field rules, checked on the raw data so they are reported together with type errors.


def _get(data: Any, *keys, default=None):
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            return default
        data = data[k]
    return data


def looks_local(path: str) -> bool:
    return (
        path.startswith(("/", "./", "../", "~"))
        or path.lower().endswith(LOCAL_DATA_SUFFIXES)
        or path.count("/") != 1
    )


def _local_path(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir / p)


def _local_bucket(bucket: Any) -> bool:
    """A bucket written as a local path (a malformed one is the field validator's to report)."""
    return isinstance(bucket, str) and bool(bucket) and not _has_scheme(bucket) and not any(c.isspace() for c in bucket)


def _local_bucket_problem(bucket: str, spot: bool) -> str:
    resume = "; a preempted job could not resume from it either" if spot else ""
    return (f"{bucket!r} is a local path: on a cloud run it would be on the VM's disk, which is deleted when the run "
            f"ends (autostop downs the cluster), taking checkpoints and results with it{resume}; use a gs:// or s3:// "
            "bucket (gs://BUCKET[/prefix], s3://BUCKET[/prefix]), or run locally with `clouds: [local]`")


MAX_SOURCES = 64  # data sources in one recipe (the shipped ones use 1 to 3)


def _cross_field_problems(data: dict, base_dir: Path, labels: dict[tuple, str] | None = None) -> list[tuple[tuple, str]]:
    """Rules that span fields. `labels`: paths an override set -> its flag, so a fix says
    `drop --spot` rather than "remove `spot: true`" from a file that does not say it.
    Problems come in a fixed order (method, resources, name, paths, dtypes): messages on one line
    keep it."""
    clouds = _get(data, "resources", "clouds", default=["lambda", "runpod", "gcp"])
    clouds = [c for c in clouds if isinstance(c, str)] if isinstance(clouds, list) else []
    remote = [c for c in clouds if c in CLOUDS]
    return (_method_problems(data) + _resource_problems(data, clouds, remote, (labels or {}).get(("resources", "spot")))
            + _name_problems(data, remote) + _path_problems(data, base_dir) + _dtype_problems(data)
            + _eval_problems(data))


def _method_problems(data: dict) -> list[tuple[tuple, str]]:
    """Each method's sections (lora, quantization) and the DeepSpeed stages it allows."""
    out: list[tuple[tuple, str]] = []
    method = _get(data, "method")
    lora = _get(data, "lora")
    quant = _get(data, "quantization")
    ds = _get(data, "train", "deepspeed")

    if method == "qlora":
        if lora is None:
            out.append((("method",), "qlora needs a `lora:` section (r, alpha, dropout, target_modules); add one"))
        if quant is None:
            out.append((("method",), "qlora needs a `quantization:` section (bits: 4, quant_type: nf4); add one or use method lora"))
    elif method == "lora":
        if lora is None:
            out.append((("method",), "lora needs a `lora:` section (r, alpha, dropout, target_modules); add one"))
        if quant is not None:
            out.append((("quantization",), "quantization is only for method qlora; remove it or set method: qlora"))
    elif method == "full":
        if lora is not None:
            out.append((("lora",), "method full trains every weight; remove `lora:` or set method: lora"))
        if quant is not None:
            out.append((("quantization",), "method full cannot train 4-bit weights; remove `quantization:` or set method: qlora"))

    if isinstance(ds, str):
        if method == "qlora":
            out.append((("train", "deepspeed"), "DeepSpeed is not supported with qlora (bitsandbytes 4-bit); set deepspeed: null"))
        elif method == "lora" and ds != "zero2":
            out.append((("train", "deepspeed"), f"{ds} is only for method full; lora allows zero2 or null"))
    return out


def _resource_problems(data: dict, clouds: list[str], remote: list[str], spot_flag: str | None) -> list[tuple[tuple, str]]:
    """Spot needs a bucket, a cloud run a cloud bucket, local one machine alone; spot and
    multi-node need a cloud that can (sftcore.clouds.check_features, SkyPilot's reasons). This
    is where that capability check is made; the planner repeats it only for what a flag changes
    after validation (--cloud narrowing the clouds), in estimate.candidates.refuse_unsupported."""
    out: list[tuple[tuple, str]] = []
    spot = _get(data, "resources", "spot")
    bucket = _get(data, "output", "bucket")
    if spot is True and not bucket:
        out.append((("resources", "spot"), "spot needs output.bucket so checkpoints survive preemption; set output.bucket "
                    f"(gs://, s3://) or {'drop ' + spot_flag if spot_flag else 'spot: false'}"))
    elif remote and "local" not in clouds and _local_bucket(bucket):
        # The VM writes there, then autostop deletes it: the run's results would be lost.
        out.append((("output", "bucket"), _local_bucket_problem(bucket, spot is True)))

    nodes = _get(data, "resources", "nodes")
    if isinstance(nodes, int) and nodes > 1 and "local" in clouds:
        out.append((("resources", "nodes"), "local runs use one machine; set nodes: 1 or remove local from resources.clouds"))
    if "local" in clouds and len(clouds) > 1:
        out.append((("resources", "clouds"), "local cannot be mixed with clouds; use `clouds: [local]` or list only clouds"))
    asked = asked_features(spot is True, nodes if isinstance(nodes, int) else 1)
    for feature, reasons in check_features(asked, remote).items():
        # No allowed cloud can do it: quote SkyPilot's reasons and name a cloud that can.
        field = ("resources", "spot") if feature is Feature.SPOT else ("resources", "nodes")
        others = [c for c in able_clouds(feature) if c not in remote]
        if feature is Feature.SPOT and spot_flag:
            fix = f"drop {spot_flag}"
        else:
            fix = "remove `spot: true`" if feature is Feature.SPOT else f"remove `nodes: {nodes}`"
        fix += f" or allow {others[0]} in resources.clouds" if others else ""
        out.append((field, f"{reasons}; {fix}"))
    return out


def _name_problems(data: dict, remote: list[str]) -> list[tuple[tuple, str]]:
    """The run name: its shape, and a length that keeps run ids within every allowed cloud's limit."""
    out: list[tuple[tuple, str]] = []
    name = _get(data, "name")
    if isinstance(name, str):
        limit = min(NAME_MAX, (min_name_limit(remote) if remote else 35) - len(RUN_ID_PREFIX) - RUN_ID_SUFFIX_LEN)
        if len(name) > limit:
            out.append((("name",), f"{len(name)} chars; at most {limit} so run ids fit cluster-name limits; shorten it"))
        if not NAME_RE.match(name):
            out.append((("name",), "use lowercase letters, digits and '-', starting with a letter and not ending with '-'"))
    return out


def _path_problems(data: dict, base_dir: Path) -> list[tuple[tuple, str]]:
    """Local data sources and the eval tasks directory exist and hold what they should."""
    out: list[tuple[tuple, str]] = []
    sources = _get(data, "data", "sources")
    if isinstance(sources, list) and len(sources) > MAX_SOURCES:
        # Each local source may scan a directory tree: thousands of them would take minutes.
        out.append((("data", "sources"), f"{len(sources):,} sources; at most {MAX_SOURCES}: put local files in one "
                    "directory and point at it, or merge the datasets"))
    elif isinstance(sources, list):
        checked: dict[str, str | None] = {}
        for i, src in enumerate(sources):
            path = _get(src, "path")
            if isinstance(path, str) and looks_local(path):
                lp = _local_path(path, base_dir)
                key = os.path.realpath(lp)  # `/usr/.`, `/usr/lib/..` and links to it: one scan
                problem = checked[key] if key in checked else checked.setdefault(key, data_path_problem(lp))
                if problem:
                    out.append((("data", "sources", i, "path"), problem))
    tasks_dir = _get(data, "eval", "tasks_dir")
    problem = tasks_dir_problem(_local_path(tasks_dir, base_dir)) if isinstance(tasks_dir, str) else None
    if problem:
        out.append((("eval", "tasks_dir"), problem))
    bucket = _get(data, "output", "bucket")
    problem = local_bucket_problem(_local_path(bucket, base_dir)) if _local_bucket(bucket) else None
    if problem:
        out.append((("output", "bucket"), problem))
    ev = _get(data, "eval")
    if isinstance(ev, dict) and ev.get("preset", "leaderboard-v1") is None and not ev.get("tasks"):
        out.append((("eval",), "names no preset and no tasks; set preset: leaderboard-v1, list tasks, or use `eval: null` to skip"))
    return out


def _dtype_problems(data: dict) -> list[tuple[tuple, str]]:
    precision = _get(data, "train", "precision")
    compute = _get(data, "quantization", "compute_dtype")
    if precision == "fp16" and compute == "bfloat16":
        return [(("quantization", "compute_dtype"), "bfloat16 with precision fp16 mixes dtypes; set compute_dtype: float16")]
    return []


def _eval_problems(data: dict) -> list[tuple[tuple, str]]:
    """eval.backend vllm where vLLM cannot score this recipe's model (sftcore.eval_backend)."""
    if _get(data, "eval", "backend") != "vllm":
        return []
    gpu = str(_get(data, "resources", "gpu", default="auto")).split(":")[0].upper()
    cpu_only = _get(data, "resources", "clouds") == ["local"] and gpu in ("AUTO", "CPU")  # local auto = the CPU
    r = _get(data, "lora", "r") if _get(data, "method") in ("lora", "qlora") else None
    try:
        choose("vllm", cuda=not cpu_only, load_4bit=_get(data, "eval", "load_4bit") is True,
               lora_r=r if isinstance(r, int) else None)
    except BackendError as exc:
        return [(("eval", "backend"), str(exc).removeprefix("eval.backend vllm: "))]
    return []


def _resolve_paths(recipe: Recipe, base_dir: Path) -> None:
    for src in recipe.data.sources:
        if looks_local(src.path):
            src.path = str(_local_path(src.path, base_dir).resolve())
    if recipe.eval is not None and recipe.eval.tasks_dir:
        recipe.eval.tasks_dir = str(_local_path(recipe.eval.tasks_dir, base_dir).resolve())
    if recipe.output.bucket and not _has_scheme(recipe.output.bucket):
        recipe.output.bucket = str(_local_path(recipe.output.bucket, base_dir).resolve())
