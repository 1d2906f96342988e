"""`sftlaunch serve`: what to serve (a run's model or adapter, or a Hub model), the cheapest GPU
that holds its weights plus the KV cache, and the SkyServe service YAML. Pure: no I/O beyond the
planner's offer table and model shapes, no SkyPilot import.

Why vLLM's own published image (vllm/vllm-openai): it is the OpenAI-compatible server peers
(Oumi, LLaMA-Factory, Unsloth, SkyPilot's examples) deploy, and its image is what vLLM tests;
SkyPilot's own examples run it as `image_id: docker:vllm/vllm-openai:<tag>` with `vllm serve` as the
`run:` command (skypilot-org/skypilot llm/vllm/serve-openai-api-docker.yaml, llm/kimi-k2).
Why the published tokenizer: the run's model directory carries the chat template training used
(jobs/templates.py, jobs/publish.py), and vLLM renders chat requests with `--tokenizer`'s
template unless told otherwise, so an adapter is served with `--tokenizer <adapter dir>` (the
base's tokenizer would carry the base's template) and `--chat-template` points at the published
`chat_template.jinja` when the directory has one. Train/serve parity then holds through the
endpoint: the prompt ids vLLM feeds the model are the ids training saw (tests/jobs/test_serve_local.py
proves it against a real server with the `openai` client).

vLLM flags (docs.vllm.ai, "Engine Arguments" and "LoRA Adapters", v0.8+): `vllm serve MODEL
--enable-lora --lora-modules NAME=PATH --max-lora-rank R --tokenizer DIR --chat-template FILE
--served-model-name NAME --max-model-len N --tensor-parallel-size N --port P`. `--max-lora-rank`
takes one of a fixed set of ranks; the adapter's r is rounded up to the next of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sftcore import contract
from sftcore.errors import UserError

# vLLM's published OpenAI-server image, pinned (docs.vllm.ai "Using Docker": vllm/vllm-openai:v0.11.0).
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
PORT = 8000
MODEL_DIR = f"{contract.CONTAINER_ROOT}/model"  # where the run's published model is copied on a replica
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's --max-lora-rank choices
GPU_MEMORY_UTILIZATION = 0.90  # vLLM's default share of GPU memory it takes (weights + KV cache)
RUNTIME_OVERHEAD_GB = 2.0  # CUDA context, activations of one batch, CUDA graphs (vLLM's profile run)
BYTES_BF16 = 2
GB = 1e9


@dataclass
class ServeSource:
    """What a replica serves: vLLM's MODEL argument, an adapter on it, where the files come from."""

    name: str  # the served model name clients pass as `model`
    base: str  # vLLM's MODEL: a Hub id or MODEL_DIR
    adapter: str | None = None  # the LoRA adapter's path on the replica (MODEL_DIR) or Hub id
    lora_rank: int | None = None
    model_uri: str | None = None  # bucket prefix copied to MODEL_DIR (file_mounts), if any
    shape_of: str = ""  # the model id whose shape sizes the weights (the base's)
    run_id: str | None = None
    revision: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def tokenizer_dir(self) -> str | None:
        """The published tokenizer (with the trained chat template) when the files are ours."""
        return MODEL_DIR if self.model_uri else None


def _is_hub_id(ref: str) -> bool:
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and ref != contract.TINY_MODEL_ID


def source_from_run(record) -> ServeSource:
    """A run's published model: the adapter on its base (vLLM --enable-lora) or merged weights,
    copied from `<bucket>/<run id>/model/`, else the run's Hub repo."""
    recipe = record.recipe or {}
    run_id = record.run_id
    model = recipe.get("model") or {}
    output = recipe.get("output") or {}
    base_id = model.get("id", "")
    bucket, hub = record.bucket or output.get("bucket"), output.get("hub_repo")
    adapter = recipe.get("method") in ("lora", "qlora") and not output.get("merge_adapter")
    where = contract.RunLayout.in_bucket(bucket, run_id).model if bucket and "://" in bucket else None
    if where is None and not hub:
        raise UserError(f"run {run_id}: its model is in no bucket or Hub repo a cloud replica can read "
                        "(output.bucket / output.hub_repo); serve it here with `sftlaunch serve --local "
                        f"{run_id}`")
    files = MODEL_DIR if where else hub
    notes = []
    if adapter:
        if not _is_hub_id(base_id):
            raise UserError(f"run {run_id}: model.id {base_id} is not a Hub model a replica can download; "
                            "serve it with --local, or publish merged weights (output.merge_adapter: true)")
        r = int((recipe.get("lora") or {}).get("r") or 8)
        if recipe.get("method") == "qlora":
            notes.append("QLoRA adapter served on the bf16 base (as jobs/publish.py merges it), not the NF4 copy "
                         "it trained on")
        return ServeSource(run_id, base_id, files, r, where, base_id, run_id, model.get("revision"), notes)
    return ServeSource(run_id, files, None, None, where, base_id, run_id, None, notes)


def source_from_model(ref: str, revision: str | None = None) -> ServeSource:
    """A Hub model id; a local directory cannot reach a cloud replica."""
    if not _is_hub_id(ref):
        raise UserError(f"{ref}: a cloud replica can only download a Hub model (OWNER/NAME) or a run's model "
                        "from its bucket; for a local directory or the tiny model use --local")
    return ServeSource(ref.split("/")[1].lower()[:40], ref, None, None, None, ref, None, revision)


def service_name(source: ServeSource, token: str) -> str:
    """A run's service is named after the run id (the ownership rule's name prefix); a Hub model's
    `sftl-<name>-<4 hex>` like a run id. `token`: 4 hex characters."""
    if source.run_id:
        return source.run_id
    slug = re.sub(r"[^a-z0-9-]+", "-", source.name.lower()).strip("-")[:20].rstrip("-") or "model"
    return f"{contract.RUN_ID_PREFIX}{slug}-{token}"


def lora_rank_flag(r: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds rank r."""
    for rank in LORA_RANKS:
        if rank >= r:
            return rank
    raise UserError(f"lora.r {r}: vLLM serves adapters up to rank {LORA_RANKS[-1]}")


# ---------------------------------------------------------------------------------------------
# Memory: weights + KV cache for max_model_len × concurrent sequences


@dataclass
class ServeMemory:
    weights_gb: float
    kv_gb: float  # the whole KV cache the stated load holds
    kv_bytes_per_token: float
    overhead_gb: float
    lora_gb: float = 0.0

    def per_gpu(self, gpus: int) -> float:
        return (self.weights_gb + self.kv_gb + self.lora_gb) / gpus + self.overhead_gb


def serve_memory(shape: dict[str, Any], kv_tokens: int, lora_rank: int | None = None) -> ServeMemory:
    """bf16 weights (from the shape's parameter count) and the KV cache: K and V, every layer, the
    K projection's width (kv heads × head dim) per token, for `kv_tokens` tokens in the cache at
    once (the caller: the stated load's sequences × their context, at least one max_model_len)."""
    from launcher.estimate.memory import param_count

    total, _active = param_count(shape)
    kv_dim = shape["linear"]["k_proj"][1] if "k_proj" in shape.get("linear", {}) else shape["hidden"]
    kv_per_token = 2 * shape["layers"] * kv_dim * BYTES_BF16
    lora = 0.0
    if lora_rank:
        lora = sum((i + o) * lora_rank for i, o in shape["linear"].values()) * shape["layers"] * BYTES_BF16 / GB
    return ServeMemory(total * BYTES_BF16 / GB, kv_per_token * kv_tokens / GB, kv_per_token,
                       RUNTIME_OVERHEAD_GB, lora)


@dataclass
class ServeChoice:
    cloud: str
    gpu: str
    count: int
    usd_per_hour: float
    mem_needed_gb: float  # per GPU
    mem_available_gb: float
    region: str | None = None

    @property
    def accelerators(self) -> str:
        return f"{self.gpu}:{self.count}"


def serve_choices(mem: ServeMemory, clouds: list[str], gpu: str | None = None,
                  count: int | None = None) -> tuple[list[ServeChoice], list[str]]:
    """Every single-node offer on `clouds` whose GPUs hold the weights + KV cache within vLLM's
    memory share (tensor parallel over the node's GPUs), cheapest first; plus notes."""
    from launcher import catalog

    out, notes = [], []
    for cloud in clouds:
        for offer in catalog.offers(cloud):
            if gpu and offer.gpu.lower() != gpu.lower():
                continue
            if offer.on_demand is None or offer.count not in (1, 2, 4, 8) or (count and offer.count != count):
                continue
            why = catalog.unusable_reason(offer)
            if why:
                continue
            try:
                avail = catalog.gpu_memory_gb(offer.gpu, offer)
            except KeyError:
                continue
            need = mem.per_gpu(offer.count)
            if need <= avail * GPU_MEMORY_UTILIZATION:
                out.append(ServeChoice(cloud, offer.gpu, offer.count, offer.on_demand * offer.count, need, avail,
                                       offer.region))
    out.sort(key=lambda c: (c.usd_per_hour, c.count))
    if not out:
        notes.append(f"no offer on {', '.join(clouds)} holds {mem.weights_gb:.1f} GB of weights + "
                     f"{mem.kv_gb:.1f} GB of KV cache" + (f" on {gpu}" if gpu else "") + (f" x{count}" if count else ""))
    return out, notes


# ---------------------------------------------------------------------------------------------
# The SkyServe service


def vllm_command(source: ServeSource, choice: ServeChoice, max_model_len: int) -> str:
    """The replica's `run:` script: vLLM's OpenAI server on PORT. The chat template is the
    published one (`--tokenizer`, and `--chat-template` when the directory has the file)."""
    args = ["vllm", "serve", source.base, "--host", "0.0.0.0", "--port", str(PORT),
            "--max-model-len", str(max_model_len), "--tensor-parallel-size", str(choice.count)]
    if source.revision and not source.adapter:
        args += ["--revision", source.revision]
    if source.adapter:
        args += ["--enable-lora", "--lora-modules", f"{source.name}={source.adapter}",
                 "--max-lora-rank", str(lora_rank_flag(source.lora_rank or 8)),
                 "--served-model-name", f"{source.name}-base"]
        if source.revision:
            args += ["--revision", source.revision]
    else:
        args += ["--served-model-name", source.name]
    tok = source.tokenizer_dir or (source.adapter if source.adapter else None)
    if tok:
        args += ["--tokenizer", tok]
    lines = ["set -euo pipefail"]
    if source.tokenizer_dir:
        ct = f"{source.tokenizer_dir}/chat_template.jinja"
        lines.append(f"if [ -f {ct} ]; then CT=(--chat-template {ct}); else CT=(); fi")
        lines.append(" ".join(args) + ' "${CT[@]}"')
    else:
        lines.append(" ".join(args))
    return "\n".join(lines) + "\n"


def render_service(source: ServeSource, choices: list[ServeChoice], name: str, max_model_len: int,
                   max_replicas: int = 2, target_qps: float = 4.0, idle_minutes: int = 15) -> dict[str, Any]:
    """The SkyServe task: replicas scale between 0 (idle for `idle_minutes`) and `max_replicas`
    at `target_qps` requests/s each; readiness is vLLM's /v1/models. `choices`: fitting offers in
    plan order (SkyPilot's ordered resources: the next when one has no capacity)."""
    if not choices:
        raise UserError("nothing to render: no GPU offer fits")
    first = choices[0]
    picks = [c for c in choices if c.count == first.count][:3]

    def one(c: ServeChoice) -> dict[str, Any]:
        return {"cloud": c.cloud, "accelerators": c.accelerators}

    resources: dict[str, Any] = one(first) if len(picks) == 1 else {"ordered": [one(c) for c in picks]}
    resources.update({"image_id": f"docker:{VLLM_IMAGE}", "ports": PORT, "use_spot": False,
                      "labels": {contract.RUN_LABEL: name}})
    task: dict[str, Any] = {
        "name": name,
        "service": {
            "readiness_probe": {"path": "/v1/models", "initial_delay_seconds": 1200, "timeout_seconds": 15},
            "replica_policy": {"min_replicas": 0, "max_replicas": max_replicas, "target_qps_per_replica": target_qps,
                               "upscale_delay_seconds": 60, "downscale_delay_seconds": idle_minutes * 60},
        },
        "resources": resources,
        "secrets": {"HF_TOKEN": None},
        "run": vllm_command(source, first, max_model_len),
    }
    if source.model_uri:
        task["file_mounts"] = {MODEL_DIR: source.model_uri}
    return task
