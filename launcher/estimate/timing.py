"""Time of a recipe on an offer: training FLOPs over the GPUs' throughput, plus overheads and eval.

Time: tokens = rows × epochs × tokens per row (packed; measured from local files), FLOPs per
token = 6·N (8·N with checkpointing) for full, 4·N (6·N) for LoRA/QLoRA whose frozen weights need
no weight gradients, plus attention 12·L·h·s; N is the active parameter count for MoE models.
Throughput = GPUs × peak dense TFLOPs × MFU (data). Plus provisioning, image pull, weight
download, checkpoint writes and eval. Cost = $/h × hours.
It imports neither torch nor sky.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher import catalog
from launcher.estimate.memory import GB, _shape, attention_flops_per_token, checkpointing, lora_params
from sftcore.eval_backend import BackendError, choose
from sftcore.recipe import Recipe, looks_local


@dataclass
class Timing:
    tokens: float
    flops: float
    train_hours: float
    overhead_hours: float
    eval_hours: float
    terms: dict[str, float] = field(default_factory=dict)
    eval_what: str = ""  # the eval term in words (preset, prefill and generated tokens), for --explain

    @property
    def total_hours(self) -> float:
        return self.train_hours + self.overhead_hours + self.eval_hours




def _local_tokens_per_row(path: str) -> float | None:
    """Mean tokens per row of a local file, from its characters (no tokenizer needed)."""
    p = Path(path)
    files = sorted(p.glob("*.jsonl")) + sorted(p.glob("*.json")) if p.is_dir() else [p]
    chars = rows = 0
    for f in files:
        if f.suffix == ".jsonl":
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip():
                    chars += len(line)
                    rows += 1
        elif f.suffix == ".json":
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except ValueError:
                continue
            items = data if isinstance(data, list) else []
            rows += len(items)
            chars += sum(len(json.dumps(i)) for i in items)
    if not rows:
        return None
    # JSON keys and quotes inflate the count a little; a conservative over-estimate.
    return chars / rows / catalog.workloads()["chars_per_token"]


def _local_rows(path: str) -> int | None:
    p = Path(path)
    if p.suffix == ".jsonl" and p.is_file():
        return sum(1 for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    if p.suffix == ".json" and p.is_file():
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return len(data) if isinstance(data, list) else None
    return None


def data_tokens(recipe: Recipe) -> tuple[float, float]:
    """(rows, tokens) per epoch after max_samples, truncation at seq_len and packing/padding."""
    w = catalog.workloads()
    rows_total = tokens = 0.0
    for src in recipe.data.sources:
        local = looks_local(src.path) and Path(src.path).exists()
        per_row = (_local_tokens_per_row(src.path) if local else None) or w["tokens_per_row"].get(src.path, w["tokens_per_row"]["default"])
        available = (_local_rows(src.path) if local else None) or w["rows"].get(src.path)
        rows = src.max_samples or available or 10000
        if available:
            rows = min(rows, available)
        rows_total += rows
        per_row = min(per_row, recipe.data.seq_len)
        if not recipe.data.packing:
            per_row = min(recipe.data.seq_len, per_row * 1.5)  # padding to the longest in each batch
        tokens += rows * per_row
    rows_total *= 1 - recipe.data.eval_fraction
    tokens *= 1 - recipe.data.eval_fraction
    return rows_total, tokens


def _mfu(method: str, gpu: str) -> float:
    w = catalog.workloads()
    return float(w.get("mfu_by_gpu", {}).get(gpu, {}).get(method, w["mfu"][method]))


SIZE_MATCH = 1.25  # a measured run counts for a plan when its model is within this factor in size


def _registry_key() -> tuple | None:
    from launcher.home import sftlaunch_home

    db = sftlaunch_home() / "runs.db"
    try:
        stats = [(p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None
                 for p in (db, db.with_name("runs.db-wal"))]
    except OSError:
        return None
    return (str(db), *stats) if stats[0] else None


@functools.lru_cache(maxsize=4)
def _measured_rows(key: tuple) -> tuple[tuple[str, str, float, float], ...]:
    """(gpu, method, params_b, mfu) of every run whose calibration probe reported, read-only
    (launcher.lifecycle.record_calibration fills them); () when the registry cannot be read."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"{Path(key[0]).resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            rows = conn.execute(
                "SELECT gpu, json_extract(recipe_json, '$.method'), params_b, measured_mfu FROM runs "
                "WHERE measured_mfu > 0 AND params_b > 0 AND gpu IS NOT NULL").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:  # an older schema, a damaged file: plan with the published figures
        return ()
    return tuple((g, m, float(p), float(f)) for g, m, p, f in rows if isinstance(m, str))


def measured_mfu(method: str, gpu: str, params_b: float) -> tuple[float, int] | None:
    """(median MFU, runs) the user's own calibrated runs measured for this GPU and method on a
    model of about this size; None when there are none (the published figure is used)."""
    key = _registry_key()
    if key is None:
        return None
    found = sorted(f for g, m, p, f in _measured_rows(key)
                   if g == gpu and m == method and 1 / SIZE_MATCH <= p / params_b <= SIZE_MATCH)
    if not found:
        return None
    mid = len(found) // 2
    return (found[mid] if len(found) % 2 else (found[mid - 1] + found[mid]) / 2), len(found)


def eval_workload(recipe: Recipe) -> tuple[float, float, str]:
    """(prefill tokens, generated tokens, words) of the recipe's eval, from workloads.yaml.

    Log-likelihood tasks cost one forward over prompt + choices; generative tasks (v2's IFEval
    and MATH) also decode: lm-eval's HF backend generates a batch until every row stops or hits
    max_gen_toks, so the data counts rows × max_gen_toks, and a decoded token runs at a far lower
    MFU than a prefill token (one weight read per step for a whole batch)."""
    w = catalog.workloads()
    key = recipe.eval.preset or "custom"
    spec = w["eval_tokens"].get(key, w["eval_tokens"]["custom"])
    prefill, generated = (float(spec), 0.0) if not isinstance(spec, dict) else (float(spec["prefill"]), float(spec.get("generated", 0)))
    if recipe.eval.limit:
        scale = min(1.0, recipe.eval.limit / 1000)
        prefill, generated = prefill * scale, generated * scale
    words = f"{key}: {prefill / 1e6:.1f}M prefill tokens" + (f" + {generated / 1e6:.2f}M generated" if generated else "")
    if recipe.eval.tasks:
        words += f" (+ {len(recipe.eval.tasks)} custom task{'s' if len(recipe.eval.tasks) > 1 else ''})"
    return prefill, generated, words


def eval_backend(recipe: Recipe, gpu: str) -> tuple[str, str]:
    """(backend, why) the eval step will use on `gpu`: the job's own rule (sftcore.eval_backend)
    with the catalog's facts: CPU runs use hf, a GPU without bf16 (pre-Ampere) keeps auto on hf.
    The eval step scores the trained adapter itself (merging happens at publish), so a LoRA
    recipe's rank counts."""
    if recipe.eval is None:
        return "hf", ""
    facts = catalog.gpus().get(gpu, {})
    cuda = gpu != "CPU" and facts.get("vendor", "NVIDIA") == "NVIDIA"
    r = recipe.lora.r if recipe.method in ("lora", "qlora") and recipe.lora else None
    try:
        return choose(recipe.eval.backend, cuda=cuda, capable=facts.get("bf16", True) is not False,
                      load_4bit=recipe.eval.load_4bit, lora_r=r)
    except BackendError as exc:  # validation refuses these recipes; the plan still prices hf
        return "hf", str(exc)


def eval_hours(recipe: Recipe, cloud: str, gpu: str, gpus: int, shape: dict[str, Any] | None = None) -> float:
    """The eval preset's prefill FLOPs (2·N per token, N active) plus its generated tokens (2·N each
    at the decode MFU of the backend that will run: eval_decode for HF's padded-batch generate,
    eval_decode_vllm for vLLM's continuous batching), over `gpus` data-parallel replicas.
    Log-likelihood (prefill) time is the same for both backends."""
    if recipe.eval is None:
        return 0.0
    shape = shape or _shape(recipe)
    n = shape.get("active_params_b", shape["params_b"]) * 1e9
    prefill, generated, _ = eval_workload(recipe)
    # bitsandbytes dequantizes every 4-bit weight on every forward: a lower MFU (data).
    mfu = _mfu("eval_4bit" if recipe.eval.load_4bit else "eval", gpu)
    decode_mfu = _mfu("eval_decode_vllm" if eval_backend(recipe, gpu)[0] == "vllm" else "eval_decode", gpu)
    peak = gpus * catalog.gpu_tflops(gpu, cloud, gpus) * 1e12
    return (2 * n * prefill / (peak * mfu) + 2 * n * generated / (peak * decode_mfu)) / 3600


def timing(recipe: Recipe, cloud: str, gpu: str, gpus: int, workload: str = "train",
           gpus_per_node: int | None = None, shape: dict[str, Any] | None = None,
           gradient_checkpointing: bool | None = None) -> Timing:
    """`gpus` in all; eval runs on the head node only (docker/entrypoint.sh), on its `gpus_per_node`.
    `gradient_checkpointing` is the plan's decision for a recipe's `auto` (memory.checkpointing)."""
    shape = shape or _shape(recipe)
    w = catalog.workloads()
    per_node = gpus_per_node or gpus
    n_total = shape["params_b"] * 1e9
    n = shape.get("active_params_b", shape["params_b"]) * 1e9
    peak = catalog.gpu_tflops(gpu, cloud, per_node) * 1e12
    terms: dict[str, float] = {}
    ev_hours = eval_hours(recipe, cloud, gpu, per_node, shape=shape)
    terms["eval_hours"] = ev_hours
    ev_what = ""
    if recipe.eval is not None:
        backend, why = eval_backend(recipe, gpu)
        ev_what = f"{eval_workload(recipe)[2]}; lm-eval backend {backend} ({why})"
    download = n_total * 2 / GB / w["download_gb_per_hour"]
    # Local runs use an image already in the engine (or none: launcher.backends.local), so no pull.
    pull = 0.0 if cloud == "local" else w["image_pull_gb"] / w["pull_gb_per_hour"]
    provision = w["provision_hours"].get(cloud, 0.1)
    terms.update(provision_hours=provision, image_pull_hours=pull, weights_download_hours=download)
    if workload == "eval":
        return Timing(0, 0, 0, provision + pull + download, ev_hours, terms, ev_what)

    rows, tokens = data_tokens(recipe)
    if recipe.train.max_steps:
        tokens = min(tokens * recipe.train.epochs,
                     recipe.train.max_steps * recipe.train.micro_batch_size * recipe.train.grad_accum * gpus * recipe.data.seq_len)
    else:
        tokens *= recipe.train.epochs
    # Recomputing the forward in the backward adds 2·N per token (a third more for a full
    # fine-tune's 6·N, half more for LoRA's 4·N: the frozen weights need no weight gradient).
    ckpt = checkpointing(recipe, gradient_checkpointing)
    per_token = (8 if ckpt else 6) * n if recipe.method == "full" else (6 if ckpt else 4) * n
    per_token += attention_flops_per_token(shape, recipe.data.seq_len)
    flops = per_token * tokens
    mfu = _mfu(recipe.method, gpu)
    measured = measured_mfu(recipe.method, gpu, shape["params_b"]) if cloud != "local" else None
    if measured:  # the user's own calibrated runs beat the published figure (said in the plan's notes)
        terms.update(mfu_published=mfu, mfu_measured_runs=measured[1])
        mfu = measured[0]
    train_hours = flops / (gpus * peak * mfu) / 3600
    ckpt_gb = (n_total * 16 / GB) if recipe.method == "full" else (
        lora_params(shape, recipe.lora.target_modules, recipe.lora.r) * 12 / GB if recipe.lora else 0)
    n_ckpts = math.ceil(train_hours * 60 / recipe.train.checkpoint_minutes) + 1
    checkpoints = n_ckpts * ckpt_gb / w["checkpoint_gb_per_hour"]
    terms.update(rows=rows, tokens=tokens, flops_per_token=per_token, gradient_checkpointing=ckpt, mfu=mfu, peak_tflops=peak / 1e12,
                 params_b=shape["params_b"],
                 checkpoint_hours=checkpoints, checkpoints=n_ckpts)
    return Timing(tokens, flops, train_hours, provision + pull + download + checkpoints, ev_hours, terms, ev_what)


# ---------------------------------------------------------------------------------------------
