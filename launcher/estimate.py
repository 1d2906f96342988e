"""Memory, time and cost of a recipe on each GPU offer; the cheapest that fits is the plan.

Why our own estimator: SkyPilot picks the cheapest *offer* for an accelerator you name, but it
cannot tell whether a 70B QLoRA fits 24 GB or how long 25k rows take. This module answers both
from the model's shape and the recipe, transparently: every term is returned (and printed by
`plan --explain`) so a wrong assumption is visible, and the assumptions live in
launcher/data/*.yaml. It imports neither torch nor sky.

Memory per GPU (bytes):
  weights   full: 2/param (bf16/fp16; 4 in fp32); lora: same, frozen; qlora: 0.5/param for the
            quantized linears + absmax constants (fp32 per 64 weights, or 8-bit + fp32 per 256
            with double quant) + the bf16 embeddings and head.
  trainable full: grads 2 + Adam fp32 master, m, v 12 = 14/param (16 with weights, the usual
            "16 bytes per parameter"); ZeRO-2 shards grads+optimizer, ZeRO-3 shards all of it,
            zero3-offload keeps only sharded bf16 weights and grads on the GPU.
            lora/qlora: adapter params r·(in+out) per targeted module, fp32 weight+grad+Adam
            (16/param); paged optimizers may spill the 8 bytes of Adam states to CPU.
  activations with gradient checkpointing: each layer's input (2·h bytes per token) plus one
            layer recomputed (34·h per token, Korthikanti et al. 2022, flash/SDPA attention so
            no s² term); without: 34·h per token per layer. Plus fp32 logits and their grad.
  fixed     CUDA context and allocator workspace.
A candidate fits when the total is under the GPU's memory; within `headroom` of it, it is
borderline (plan says so rather than pretending to know); `fit_verdict` is that rule, the one
place that says it.
Eval after training (jobs/evaluate.py) runs on the same machine, data-parallel with one full
model replica per GPU, in bf16 unless `eval.load_4bit` (nf4: 0.5 byte + an fp32 absmax per 64
weights), plus the LoRA adapter in fp32 and one sequence of activations; a training candidate
fits only if that fits too, since a run that trains for a day and then cannot load its model
for eval has wasted the day.

Time: tokens = rows × epochs × tokens per row (packed; measured from local files), FLOPs per
token = 6·N (8·N with checkpointing) for full, 4·N (6·N) for LoRA/QLoRA whose frozen weights need
no weight gradients, plus attention 12·L·h·s; N is the active parameter count for MoE models.
Throughput = GPUs × peak dense TFLOPs × MFU (data). Plus provisioning, image pull, weight
download, checkpoint writes and eval. Cost = $/h × hours.

The model's shape is looked up once per plan and handed down (`shape=`): a shape from a local or
cached config.json costs a file read and a parse, and a plan builds hundreds of candidates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from launcher import catalog
from launcher import offers as offers_mod
from launcher.clouds import CLOUDS, able_clouds, check_features
from launcher.errors import UserError
from launcher.recipe import GPU_RE, Recipe, looks_local

GB = 1e9
CLOUD_LABELS = {"lambda": "Lambda", "runpod": "RunPod", "gcp": "GCP", "kubernetes": "Kubernetes"}


@dataclass
class Memory:
    """Per-GPU memory terms in GB."""

    weights: float
    trainable: float  # grads + optimizer states (+ fp32 adapter weights)
    pageable: float  # part of `trainable` a paged optimizer can spill to CPU
    activations: float
    fixed: float
    notes: list[str] = field(default_factory=list)
    logits: float = 0.0  # vocab-sized logits (+ fp32 upcast and grad): its own line, large for big vocabularies

    @property
    def total(self) -> float:
        return self.weights + self.trainable + self.activations + self.logits + self.fixed

    def as_dict(self) -> dict[str, float]:
        return {"weights_gb": self.weights, "grads_optimizer_gb": self.trainable, "pageable_gb": self.pageable,
                "activations_gb": self.activations, "logits_gb": self.logits, "fixed_gb": self.fixed,
                "total_gb": self.total}


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


@dataclass
class Candidate:
    cloud: str
    region: str | None
    gpu: str
    gpus_per_node: int
    nodes: int
    spot: bool
    usd_per_hour: float
    mem_needed_gb: float  # training (or, for the eval workload, eval) memory per GPU
    mem_available_gb: float
    fits: bool
    borderline: bool
    eta_hours: float
    total_usd: float
    memory: Memory | None = None
    timing: Timing | None = None
    why_not: str | None = None
    eval_memory: Memory | None = None  # the post-training eval on this machine, per GPU
    borderline_why: str | None = None
    assumed: bool = False  # an explicit GPU on Kubernetes nobody declared: assumed to exist
    blocked_by_eval: bool = False  # training fits, the post-training eval does not
    usd_per_hour_max: float | None = None  # the same offer in its dearest region
    regions: int = 1  # how many regions sell it (render leaves the region free)

    @property
    def accelerators(self) -> str:
        return f"{self.gpu}:{self.gpus_per_node}"

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def eval_mem_gb(self) -> float | None:
        return self.eval_memory.total if self.eval_memory else None

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("cloud", "region", "gpu", "gpus_per_node", "nodes", "spot", "usd_per_hour",
                                             "mem_needed_gb", "eval_mem_gb", "mem_available_gb", "fits", "borderline",
                                             "borderline_why", "eta_hours", "total_usd", "why_not", "assumed",
                                             "blocked_by_eval", "usd_per_hour_max", "regions")}
        out["accelerators"] = self.accelerators
        if self.memory:
            out["memory"] = self.memory.as_dict()
        if self.eval_memory:
            out["eval_memory"] = self.eval_memory.as_dict()
        if self.timing:
            out["timing"] = {"tokens": self.timing.tokens, "flops": self.timing.flops, "train_hours": self.timing.train_hours,
                             "overhead_hours": self.timing.overhead_hours, "eval_hours": self.timing.eval_hours,
                             **self.timing.terms}
        return out


@dataclass
class Plan:
    candidates: list[Candidate]
    chosen: Candidate | None
    reason: str | None
    model: str
    workload: str = "train"
    notes: list[str] = field(default_factory=list)  # what the user should know (assumptions, missing inventory)
    reason_field: str = "resources.gpu"  # the recipe field `reason` is about

    def failover(self, n: int, max_usd: float | None = None) -> list[Candidate]:
        """The first `n` fitting candidates in plan order, the chosen one first: what `up`
        renders as SkyPilot's ordered resources, so "no capacity" on one moves to the next.
        With `max_usd`, fallbacks estimated above it are left out: the budget must hold for
        whichever one SkyPilot ends up launching (the chosen one is judged by the caller)."""
        if self.chosen is None:
            return []
        rest = [c for c in self.candidates if c.fits and c is not self.chosen
                and (max_usd is None or c.total_usd <= max_usd)]
        return [self.chosen] + rest[:max(0, n - 1)]

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "workload": self.workload,
                "chosen": self.chosen.as_dict() if self.chosen else None, "reason": self.reason,
                "notes": self.notes, "candidates": [c.as_dict() for c in self.candidates]}


class UnknownModel(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Model shape


def _shape(recipe: Recipe) -> dict[str, Any]:
    model = recipe.model.id
    try:
        shape = catalog.model_shape(model, recipe.model.revision)
    except catalog.HubConfigError as exc:
        raise UnknownModel(f"model.id {model}: not in the planner's model table, and {exc}") from None
    except catalog.HubUnreachable as exc:
        raise UnknownModel(
            f"model.id {model}: not in the planner's model table (launcher/data/models.yaml) and {exc}; with "
            "network access (or HF_ENDPOINT for a mirror) the planner reads its config.json, or add its shape to "
            "models.yaml, or point model.id at a local directory with config.json"
        ) from None
    if shape is None:
        raise UnknownModel(
            f"model.id {model}: not in the planner's model table (launcher/data/models.yaml) and not a "
            "local directory with config.json; add its shape there, or use a Hub id OWNER/NAME"
        )
    return shape


# ---------------------------------------------------------------------------------------------
# Shape: parameters, MoE, logits, attention span (issue 12). Kept apart from the memory terms.

DEFAULT_EXPERT_MODULES = ("w1", "w2", "w3")  # Mixtral's names; other MoE shapes list theirs


def _expert_modules(shape: dict[str, Any]) -> tuple[str, ...]:
    experts = shape.get("experts")
    if not experts:
        return ()
    return tuple(experts.get("modules") or DEFAULT_EXPERT_MODULES)


def _linear_params_per_layer(shape: dict[str, Any]) -> float:
    """Every linear weight of one layer, each expert's counted (the MoE total, not the active)."""
    experts, per_expert = shape.get("experts"), _expert_modules(shape)
    total = 0.0
    for name, (i, o) in shape["linear"].items():
        total += i * o * (experts["total"] if name in per_expert else 1)
    return total


def param_count(shape: dict[str, Any]) -> tuple[float, float]:
    """(total, active per token) parameters from the shape: the linears of every layer, the MoE
    router, the embeddings (and an untied head of the same size); norms and biases are <0.1%
    and left out. Active counts `experts.active` of the experts (MoE), else equals total."""
    layers, vocab, h = shape["layers"], shape["vocab"], shape["hidden"]
    emb = vocab * h * (1 if shape.get("tied") else 2)
    experts, per_expert = shape.get("experts"), _expert_modules(shape)
    dense = sum(i * o for n, (i, o) in shape["linear"].items() if n not in per_expert)
    one_expert = sum(i * o for n, (i, o) in shape["linear"].items() if n in per_expert)
    router = math.prod(experts["router"]) if experts and experts.get("router") else (h * experts["total"] if experts else 0)
    total = layers * (dense + one_expert * (experts["total"] if experts else 1) + router) + emb
    active = layers * (dense + one_expert * (experts["active"] if experts else 1) + router) + emb
    return float(total), float(active)


def quantized_split(shape: dict[str, Any]) -> tuple[float, float]:
    """(params bitsandbytes quantizes to 4 bits, MoE expert params it leaves in 16 bits).

    bitsandbytes replaces nn.Linear modules only. transformers 5 stores MoE experts as fused 3-D
    parameters (`mlp.experts.gate_up_proj`, `down_proj`: Mixtral, Qwen3-MoE), not nn.Linear, so a
    4-bit load keeps every expert in the compute dtype (checked on tests' tiny Qwen3-MoE: the
    expert tensors load as plain Parameters, the attention projections as Params4bit)."""
    experts, per_expert = shape.get("experts"), _expert_modules(shape)
    layers = shape["layers"]
    dense = sum(i * o for n, (i, o) in shape["linear"].items() if n not in per_expert) * layers
    expert = sum(i * o for n, (i, o) in shape["linear"].items() if n in per_expert) * layers
    return float(dense), float(expert * (experts["total"] if experts else 0))


def logits_bytes(shape: dict[str, Any], tokens: float, half: int, training: bool = True) -> float:
    """Bytes of the vocab-sized tensors at the loss: the logits in the compute dtype, their fp32
    upcast (transformers' ForCausalLMLoss calls logits.float()) and, training, its fp32 gradient;
    Gemma 2's final_logit_softcapping keeps two more (the tanh's input and output) for the
    backward. jobs/train.py uses the model's own loss, no chunked or fused cross-entropy, so the
    whole [tokens, vocab] tensor is materialized: at Gemma 2's 256k vocab and 2048 tokens that
    is ~4 GB, more than a layer's activations."""
    per_token = half + 4 + (4 if training else 0)
    if shape.get("final_logit_softcapping"):
        per_token += 2 * half
    return tokens * shape["vocab"] * per_token


def attention_flops_per_token(shape: dict[str, Any], seq: int) -> float:
    """12·h·(tokens attended) per layer, causal so half the sequence on average; a sliding-window
    layer attends to at most `sliding_window` tokens (Gemma 2: every other layer, 4096)."""
    layers, h = shape["layers"], shape["hidden"]
    window = shape.get("sliding_window")
    sliding = min(shape.get("sliding_layers", 0), layers) if window else 0
    span_full = seq / 2
    span_sliding = min(seq, window) / 2 if window else span_full
    return 12 * h * ((layers - sliding) * span_full + sliding * span_sliding)


def shape_notes(shape: dict[str, Any], method: str) -> list[str]:
    """What about this model's shape moves the estimate, in words for `plan --explain`."""
    notes = []
    if shape.get("kv_heads") and shape.get("heads") and shape["kv_heads"] < shape["heads"]:
        notes.append(f"grouped-query attention: {shape['kv_heads']} KV heads for {shape['heads']} query heads")
    notes.append(f"{'tied' if shape.get('tied') else 'untied'} embeddings: "
                 f"{shape['vocab']:,} × {shape['hidden']:,}{'' if shape.get('tied') else ' twice (input and head)'}")
    if shape.get("sliding_window"):
        notes.append(f"sliding-window attention: {shape.get('sliding_layers', 0)} of {shape['layers']} layers "
                     f"see the last {shape['sliding_window']:,} tokens")
    if shape.get("experts"):
        total, active = param_count(shape)
        e = shape["experts"]
        notes.append(f"mixture of experts: {e['active']} of {e['total']} experts per token, "
                     f"{active / 1e9:.2f}B active of {total / 1e9:.2f}B weights (memory holds all, FLOPs use the active)")
        if method == "qlora":
            notes.append(f"4-bit load leaves the fused MoE experts in bf16 ({quantized_split(shape)[1] / 1e9:.1f}B params): "
                         "bitsandbytes quantizes nn.Linear only")
    return notes


def lora_params(shape: dict[str, Any], target_modules: list[str] | str, r: int) -> float:
    """Adapter parameters: r·(in+out) per targeted module per layer (every expert for MoE)."""
    experts, per_expert = shape.get("experts"), _expert_modules(shape)
    names = list(shape["linear"]) if target_modules == "all-linear" else list(target_modules)
    per_layer = 0.0
    for name in names:
        if name not in shape["linear"]:
            continue
        i, o = shape["linear"][name]
        mult = experts["total"] if name in per_expert else 1
        per_layer += r * (i + o) * mult
    return per_layer * shape["layers"]


# ---------------------------------------------------------------------------------------------
# Memory


def _shards(recipe: Recipe, gpus: int) -> tuple[float, float, float]:
    """Fractions of (weights, grads, optimizer) each GPU holds, by DeepSpeed stage."""
    ds = recipe.train.deepspeed
    if gpus <= 1 or ds is None:
        return 1.0, 1.0, 1.0
    if ds == "zero2":
        return 1.0, 1 / gpus, 1 / gpus
    if ds == "zero3":
        return 1 / gpus, 1 / gpus, 1 / gpus
    return 1 / gpus, 1 / gpus, 0.0  # zero3-offload: optimizer states (and master weights) on CPU


def memory(recipe: Recipe, gpus: int = 1, micro_batch: int | None = None, seq_len: int | None = None,
           workload: str = "train", shape: dict[str, Any] | None = None) -> Memory:
    shape = shape or _shape(recipe)
    w = catalog.workloads()
    n = shape["params_b"] * 1e9
    h, layers = shape["hidden"], shape["layers"]
    half = 4 if recipe.train.precision == "fp32" else 2
    seq = seq_len or recipe.data.seq_len
    mb = micro_batch or recipe.train.micro_batch_size
    notes: list[str] = []
    if workload == "eval":
        return eval_memory(recipe, shape=shape)

    method = recipe.method
    trainable = pageable = 0.0
    w_frac, g_frac, o_frac = _shards(recipe, gpus) if method == "full" else (1.0, 1.0, 1.0)
    paged = recipe.train.optimizer.startswith("paged_")
    if method == "full":
        # What jobs.model allocates: without DeepSpeed the Trainer keeps the fp32 weights it loaded
        # (autocast computes in bf16) and fp32 grads; DeepSpeed holds half-precision weights and
        # grads and an fp32 master copy beside the optimizer states (none when training in fp32).
        adam = 8 if recipe.train.optimizer not in ("paged_adamw_8bit", "adamw_bnb_8bit") else 2
        master = 4 if (recipe.train.deepspeed and half == 2) else 0
        param_bytes = half if recipe.train.deepspeed else 4
        weights = n * param_bytes * w_frac
        grads = n * param_bytes * g_frac
        optim = n * (adam + master) * o_frac
        trainable = grads + optim
        # Paging tens of GB of full-model optimizer states through unified memory is not a plan:
        # for full fine-tunes only ZeRO-3-offload moves them off the GPU.
        pageable = 0.0
        if recipe.train.deepspeed == "zero3-offload" and gpus > 1:
            notes.append("zero3-offload: Adam states and fp32 master weights live in CPU memory")
    else:
        lora = recipe.lora
        assert lora is not None
        adapters = lora_params(shape, lora.target_modules, lora.r)
        if method == "qlora":
            q = recipe.quantization
            assert q is not None
            quantized, experts_16bit = quantized_split(shape)  # MoE experts stay 16-bit (see there)
            # absmax: fp32 per 64-block (0.5 bit/param); double quant: 8-bit per 64 + fp32 per 256·64.
            consts = quantized * ((8 / 64 + 32 / (64 * 256)) / 8 if q.double_quant else 4 / 64)
            # jobs.model.prepare_for_kbit_training upcasts every other non-4-bit parameter
            # (embeddings, head, norms) to fp32, as peft does, but keeps fused experts 16-bit.
            weights = quantized * 0.5 + consts + experts_16bit * half + (n - quantized - experts_16bit) * 4
            notes.append("qlora: embeddings and head upcast to fp32 by peft")
        else:
            weights = n * half  # jobs.model loads the frozen base in the compute dtype
        # PEFT keeps adapters in fp32: weight 4 + grad 4 + Adam 8.
        trainable = adapters * 16
        pageable = adapters * 8 if paged else 0.0
        notes.append(f"{adapters / 1e6:.0f}M trainable adapter parameters")
    tokens = seq * mb
    act_full_layer = tokens * h * 34
    if recipe.train.gradient_checkpointing:
        acts = tokens * h * 2 * layers + act_full_layer
    else:
        acts = act_full_layer * layers
    logits = logits_bytes(shape, tokens, half)
    notes += shape_notes(shape, method)
    return Memory(weights / GB, trainable / GB, pageable / GB, acts / GB, w["cuda_context_gb"], notes, logits / GB)


def eval_memory(recipe: Recipe, load_4bit: bool | None = None, shape: dict[str, Any] | None = None) -> Memory:
    """Per-GPU memory of `jobs eval` on the trained model: one full replica per GPU (data parallel)."""
    shape = shape or _shape(recipe)
    w = catalog.workloads()
    n = shape["params_b"] * 1e9
    h = shape["hidden"]
    four_bit = (recipe.eval is not None and recipe.eval.load_4bit) if load_4bit is None else load_4bit
    notes = []
    if four_bit:
        # jobs/evaluate.py: nf4 without double quant, so an fp32 absmax per 64 weights; embeddings,
        # head and norms stay bf16.
        quantized, _experts_16bit = quantized_split(shape)
        weights = quantized * (0.5 + 4 / 64) + (n - quantized) * 2
        notes.append("eval: 4-bit nf4 weights (eval.load_4bit)")
    else:
        weights = n * 2
        notes.append("eval: bf16 weights (eval.load_4bit: false)")
    if recipe.method in ("lora", "qlora") and recipe.lora is not None:
        # PEFT upcasts a bf16 adapter to fp32 when it loads one (autocast_adapter_dtype).
        weights += lora_params(shape, recipe.lora.target_modules, recipe.lora.r) * 4
        notes.append("eval: base model + fp32 LoRA adapter")
    tokens = w["eval_seq_len"]
    # Inference keeps one layer's working set (34·h bytes per token, the training figure, is an
    # upper bound) and the fp32 logits with their log-softmax; batch_size auto fills the rest.
    acts = tokens * h * 34
    logits = logits_bytes(shape, tokens, 4, training=False)  # lm-eval loads fp32 on CPU, else the log-softmax in fp32
    notes.append(f"eval: one {tokens}-token sequence of activations; batch_size auto uses what is left")
    return Memory(weights / GB, 0.0, 0.0, acts / GB, w["cuda_context_gb"], notes, logits / GB)


# ---------------------------------------------------------------------------------------------
# Time


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


def eval_hours(recipe: Recipe, cloud: str, gpu: str, gpus: int, shape: dict[str, Any] | None = None) -> float:
    """The eval preset's prefill FLOPs (2·N per token, N active) plus its generated tokens (2·N each
    at the decode MFU), over `gpus` data-parallel replicas."""
    if recipe.eval is None:
        return 0.0
    shape = shape or _shape(recipe)
    n = shape.get("active_params_b", shape["params_b"]) * 1e9
    prefill, generated, _ = eval_workload(recipe)
    # bitsandbytes dequantizes every 4-bit weight on every forward: a lower MFU (data).
    mfu = _mfu("eval_4bit" if recipe.eval.load_4bit else "eval", gpu)
    decode_mfu = _mfu("eval_decode", gpu)
    peak = gpus * catalog.gpu_tflops(gpu, cloud, gpus) * 1e12
    return (2 * n * prefill / (peak * mfu) + 2 * n * generated / (peak * decode_mfu)) / 3600


def timing(recipe: Recipe, cloud: str, gpu: str, gpus: int, workload: str = "train",
           gpus_per_node: int | None = None, shape: dict[str, Any] | None = None) -> Timing:
    """`gpus` in all; eval runs on the head node only (docker/entrypoint.sh), on its `gpus_per_node`."""
    shape = shape or _shape(recipe)
    w = catalog.workloads()
    per_node = gpus_per_node or gpus
    n_total = shape["params_b"] * 1e9
    n = shape.get("active_params_b", shape["params_b"]) * 1e9
    peak = catalog.gpu_tflops(gpu, cloud, per_node) * 1e12
    terms: dict[str, float] = {}
    ev_hours = eval_hours(recipe, cloud, gpu, per_node, shape=shape)
    terms["eval_hours"] = ev_hours
    ev_what = eval_workload(recipe)[2] if recipe.eval is not None else ""
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
    ckpt = recipe.train.gradient_checkpointing
    per_token = (8 if ckpt else 6) * n if recipe.method == "full" else (6 if ckpt else 4) * n
    per_token += attention_flops_per_token(shape, recipe.data.seq_len)
    flops = per_token * tokens
    mfu = _mfu(recipe.method, gpu)
    train_hours = flops / (gpus * peak * mfu) / 3600
    ckpt_gb = (n_total * 16 / GB) if recipe.method == "full" else (
        lora_params(shape, recipe.lora.target_modules, recipe.lora.r) * 12 / GB if recipe.lora else 0)
    n_ckpts = math.ceil(train_hours * 60 / recipe.train.checkpoint_minutes) + 1
    checkpoints = n_ckpts * ckpt_gb / w["checkpoint_gb_per_hour"]
    terms.update(rows=rows, tokens=tokens, flops_per_token=per_token, mfu=mfu, peak_tflops=peak / 1e12,
                 checkpoint_hours=checkpoints, checkpoints=n_ckpts)
    return Timing(tokens, flops, train_hours, provision + pull + download + checkpoints, ev_hours, terms, ev_what)


# ---------------------------------------------------------------------------------------------
# Candidates and the plan


def _field(recipe: Recipe, *path: str) -> str:
    """`file:line: a.b` (or `--flag: a.b` where a flag set it) for a recipe field, so an error
    points where to edit."""
    where, name = recipe.where(*path), ".".join(path)
    return f"{where}: {name}" if where else name


def requested_gpu(recipe: Recipe, gpu: str | None = None, workload: str = "train") -> tuple[str | None, int | None]:
    """(name, count) asked for by --gpu or resources.gpu, checked against the GPU catalog;
    (None, None) for auto. An unknown name is bad input (exit 2), not "nothing fits"."""
    if gpu is not None:
        text, where = gpu, lambda: "--gpu"
    elif workload == "train":
        text, where = recipe.resources.gpu, lambda: _field(recipe, "resources", "gpu")
    else:
        return None, None
    if text == "auto":
        return None, None
    m = GPU_RE.match(text)
    if not m:
        raise UserError(f'{where()}: {text!r}: expected NAME[:COUNT], e.g. "H100:1" or "A100-80GB:8", or auto')
    name = catalog.canonical_gpu(m.group("name"))
    if name is None and recipe.resources.clouds == ["local"] and m.group("name").upper() == "CPU":
        name = "CPU"
    if name is None:
        raise UserError(f"{where()}: {catalog.unknown_gpu_message(m.group('name'))}")
    count = int(m.group("count")) if m.group("count") else None
    if count is not None and count > catalog.MAX_GPUS_PER_NODE:
        raise UserError(f"{where()}: {text!r}: at most {catalog.MAX_GPUS_PER_NODE} GPUs per node are sold; "
                        "use resources.nodes for more")
    return name, count


def _counts(counts: list[int]) -> str:
    return "/".join(str(c) for c in counts) + "x"


def refuse_unsold(recipe: Recipe, clouds: list[str], name: str | None, count: int | None, gpu_flag: bool) -> None:
    """Refuse a GPU name or count that no considered cloud sells, quoting what each does sell,
    with a did-you-mean for near misses (H200 → H200-SXM on RunPod). Kubernetes is the user's
    own cluster: it may have anything, so it never refuses."""
    if name is None or not clouds or "kubernetes" in clouds or clouds == ["local"]:
        return
    why = []
    for c in (c for c in clouds if c in offers_mod.CATALOG_CLOUDS):
        sold: dict[str, set[int]] = {}
        for o in catalog.offers(c):
            sold.setdefault(o.gpu, set()).add(o.count)
        label = CLOUD_LABELS.get(c, c)
        if name not in sold:
            guess = catalog.did_you_mean(name, sorted(sold))
            hint = f"did you mean {guess}? " if guess else ""
            why.append(f"{label} does not sell {name}; {hint}it sells {', '.join(sorted(sold)) or 'nothing here'}")
        elif count is not None and count not in sold[name]:
            counts = sorted(sold[name])
            why.append(f"{label} sells {name} only as {_counts(counts)}; use --gpu {name}:{counts[-1]} or another cloud")
        else:
            return  # at least one cloud sells it
    if why:
        where = "--gpu" if gpu_flag else _field(recipe, "resources", "gpu")
        raise UserError(f"{where}: " + "; ".join(why))


def refuse_unsupported(recipe: Recipe, clouds: list[str], spot: bool, nodes: int, cloud_flag: str | None = None,
                       spot_flag: bool = False) -> None:
    """Refuse spot or multi-node when none of the clouds considered can do it, quoting SkyPilot's
    reason (launcher/clouds.py) and naming a cloud that can; planning would only say "no offer"."""
    allowed = [c for c in recipe.resources.clouds if c in CLOUDS]
    asked = [f for f, active in (("spot", spot), ("multi_node", nodes > 1)) if active]
    for feature, reasons in check_features(asked, clouds).items():
        in_recipe = [c for c in able_clouds(feature, allowed) if c not in clouds]
        elsewhere = [c for c in able_clouds(feature) if c not in allowed]
        if feature == "spot":
            flag = "--spot" if spot_flag else recipe.override_label("resources", "spot")
            where = "--spot" if spot_flag else _field(recipe, "resources", "spot")
            fix = f"drop {flag}" if flag else "remove `spot: true`"
        else:
            where, fix = _field(recipe, "resources", "nodes"), "set nodes: 1"
        if cloud_flag and in_recipe:
            fix += f" or use --cloud {in_recipe[0]}"
        elif elsewhere:
            fix += f" or allow {elsewhere[0]} in resources.clouds"
        prefix = f"--cloud {cloud_flag}: " if cloud_flag else ""
        raise UserError(f"{prefix}{where}: {reasons}; {fix}")


def _eval_fix(recipe: Recipe, shape: dict[str, Any] | None = None) -> str:
    if recipe.eval is not None and not recipe.eval.load_4bit:
        return f"set eval.load_4bit: true (≈{eval_memory(recipe, load_4bit=True, shape=shape).total:.0f} GB) or eval: null"
    return "set eval: null (skip it) or use a larger GPU"


class Fit(NamedTuple):
    fits: bool
    borderline: bool
    why: str  # how it fits, why it is borderline, or why it does not fit
    eval_tight: bool = False  # the post-training eval is what does not fit, or what is borderline


def fit_verdict(mem: Memory, avail: float, ev_mem: Memory | None = None) -> Fit:
    """Whether `mem` fits a GPU of `avail` GB, the one rule the planner and `plan --explain` use.

    Under the headroom it fits; within it, it is borderline (the estimate is not precise enough
    to promise); above the GPU it fits only if a paged optimizer may spill its states to CPU
    (borderline too). With `ev_mem`, the post-training eval on the same GPU must fit as well.
    """
    headroom = catalog.workloads()["headroom"]
    limit = avail * (1 - headroom)
    need = mem.total
    if need <= limit:
        fit = Fit(True, False, f"fits {avail:.0f} GB with more than the {headroom:.0%} headroom")
    elif need <= avail:
        fit = Fit(True, True, f"{need:.1f} GB is within the {headroom:.0%} headroom of {avail:.0f} GB")
    elif mem.pageable and need - mem.pageable <= avail:
        fit = Fit(True, True, f"fits {avail:.0f} GB only if the paged optimizer spills {mem.pageable:.2f} GB "
                              "of its states to CPU memory")
    else:
        fit = Fit(False, False, f"needs {need:.1f} GB per GPU, has {avail:.0f} GB")
    if not fit.fits or ev_mem is None:
        return fit
    ev = ev_mem.total
    if ev > avail:
        return Fit(False, False, f"eval needs {ev:.1f} GB per GPU, has {avail:.0f} GB", eval_tight=True)
    if ev > limit:
        ev_why = f"eval's {ev:.1f} GB is within the {headroom:.0%} headroom"
        return Fit(True, True, f"{fit.why}; {ev_why}" if fit.borderline else ev_why, eval_tight=True)
    return fit


def _with_eval_fix(fit: Fit, recipe: Recipe, shape: dict[str, Any]) -> str:
    return f"{fit.why}; {_eval_fix(recipe, shape)}" if fit.eval_tight else fit.why


def _kubernetes_empty_note() -> str:
    return "kubernetes offers nothing for gpu: auto: no GPU inventory declared; " + catalog.kubernetes_help()


def _cloud_offers(cloud: str, name: str | None, count: int | None, workload: str, notes: list[str]) -> list[catalog.Offer]:
    """The cloud's offers matching the request. Kubernetes offers what the user declared; an
    explicit GPU there is assumed to exist (the planner cannot see the cluster) and said so."""
    offers = catalog.offers(cloud)
    if cloud == "kubernetes":
        _, source = catalog.kubernetes_inventory()
        if name and not any(o.gpu == name and (count is None or o.count == count) for o in offers):
            o = catalog.kubernetes_assumed_offer(name, count or 1)
            where = f"not declared in {source}" if source else "no inventory declared"
            notes.append(f"kubernetes: assuming your cluster has {o.count}×{o.gpu} at ${o.on_demand:.2f}/GPU-hour "
                         f"({where}); {catalog.kubernetes_help(suggest_explicit_gpu=False)}")
            return [o]
        if not name and not offers:
            notes.append(_kubernetes_empty_note())
    out = []
    for offer in offers:
        if name and offer.gpu.lower() != name.lower():
            continue
        if count and offer.count != count:
            continue
        if workload == "eval" and count is None and offer.count > 1:
            continue
        why = None if offer.assumed or cloud == "kubernetes" else catalog.unusable_reason(offer)
        if why:
            note = f"{cloud}: not offered: {why}"
            if note not in notes:
                notes.append(note)
            continue
        out.append(offer)
    return out


def _candidate(recipe: Recipe, offer: catalog.Offer, nodes: int, spot: bool, workload: str,
               ev_mem: Memory | None, shape: dict[str, Any]) -> Candidate | None:
    per_gpu = offer.spot if spot else offer.on_demand
    if per_gpu is None:
        return None
    gpus = offer.count * nodes
    mem = memory(recipe, gpus=gpus, workload=workload, shape=shape)
    avail = catalog.gpu_memory_gb(offer.gpu, offer)
    fit = fit_verdict(mem, avail, ev_mem)
    fits, borderline, why = fit.fits, fit.borderline, _with_eval_fix(fit, recipe, shape)
    blocked_by_eval = fit.eval_tight and not fits
    if not catalog.has_bf16(offer.gpu) and recipe.train.precision == "bf16" and workload == "train":
        fits, borderline, blocked_by_eval = False, False, False
        why = f"{offer.gpu} has no bf16; use precision: fp16 (and quantization.compute_dtype: float16)"
    t = timing(recipe, offer.cloud, offer.gpu, gpus, workload, gpus_per_node=offer.count, shape=shape)
    usd_h = per_gpu * gpus
    usd_h_max = (offer.price_max(bool(spot)) or per_gpu) * gpus
    return Candidate(offer.cloud, offer.region_for(bool(spot)), offer.gpu, offer.count, nodes, bool(spot), usd_h, mem.total, avail, fits,
                     borderline, t.total_hours, usd_h * t.total_hours, mem, t, None if fits else why, ev_mem,
                     why if borderline else None, offer.assumed, blocked_by_eval, usd_h_max, offer.regions)


def plan(recipe: Recipe, cloud: str | None = None, gpu: str | None = None, spot: bool | None = None,
         workload: str = "train") -> Plan:
    """Every offer on the allowed clouds, ranked cheapest first; the cheapest that fits is chosen.

    Raises UserError for bad input the plan cannot work around: an unknown GPU name, or spot /
    multi-node asked of clouds that cannot do it.
    """
    clouds = [c for c in recipe.resources.clouds if c in CLOUDS]
    if cloud:
        clouds = [c for c in clouds if c == cloud]
    spot_flag = spot is True and not recipe.resources.spot
    spot = recipe.resources.spot if spot is None else spot
    nodes = recipe.resources.nodes if workload == "train" else 1
    want_name, want_count = requested_gpu(recipe, gpu, workload)
    local = recipe.resources.clouds == ["local"]
    if not local:
        refuse_unsupported(recipe, clouds, spot, nodes, cloud, spot_flag)
        refuse_unsold(recipe, clouds, want_name, want_count, gpu is not None)
    try:
        shape = _shape(recipe)
    except UnknownModel as exc:
        return Plan([], None, str(exc), recipe.model.id, workload, reason_field="model.id")

    notes: list[str] = []
    ev_mem = eval_memory(recipe, shape=shape) if workload == "train" and recipe.eval is not None else None
    cands: list[Candidate] = []
    if local:
        cands.append(_local_candidate(recipe, want_name, want_count, workload, ev_mem, shape))
    for c in clouds:
        for offer in _cloud_offers(c, want_name, want_count, workload, notes):
            cand = _candidate(recipe, offer, nodes, spot, workload, ev_mem, shape)
            if cand is not None:
                cands.append(cand)
    cands.sort(key=lambda x: (not x.fits, x.total_usd, x.eta_hours))
    fitting = [x for x in cands if x.fits]
    # Prefer a confident fit over a borderline one when it costs at most 10% more.
    chosen = None
    if fitting:
        chosen = fitting[0]
        if chosen.borderline:
            sure = [x for x in fitting if not x.borderline and x.total_usd <= chosen.total_usd * 1.10]
            chosen = sure[0] if sure else chosen
    reason = None
    if chosen is None:
        no_k8s_inventory = "kubernetes" in clouds and not want_name and not catalog.offers("kubernetes")
        reason = _nothing_fits(recipe, cands, clouds, spot, want_name, want_count, shape, no_k8s_inventory)
    return Plan(cands, chosen, reason, recipe.model.id, workload, notes)


def _local_candidate(recipe: Recipe, gpu: str | None, count: int | None, workload: str,
                     ev_mem: Memory | None, shape: dict[str, Any]) -> Candidate:
    """`up --local`: the recipe's named GPU (e.g. a Colab T4) or, with none named, the CPU."""
    name = gpu if gpu and gpu in catalog.gpus() else "CPU"
    n = count or 1
    mem = memory(recipe, gpus=n, workload=workload, shape=shape)
    avail = catalog.gpu_memory_gb(name)
    fit = fit_verdict(mem, avail, ev_mem)
    why = _with_eval_fix(fit, recipe, shape)
    t = timing(recipe, "local", name, n, workload, shape=shape)
    return Candidate("local", None, name, n, 1, False, 0.0, mem.total, avail, fit.fits, fit.borderline, t.total_hours,
                     0.0, mem, t, None if fit.fits else why, ev_mem, why if fit.borderline else None,
                     blocked_by_eval=fit.eval_tight and not fit.fits)


def _nothing_fits(recipe: Recipe, cands: list[Candidate], clouds: list[str], spot: bool, want_name: str | None,
                  want_count: int | None, shape: dict[str, Any], no_k8s_inventory: bool) -> str:
    if recipe.resources.clouds == ["local"]:
        c = cands[0]
        return f"on this machine ({c.gpu}): {c.why_not}"
    if not clouds:
        return "no SkyPilot cloud is allowed; add one to resources.clouds"
    if not cands:
        if clouds == ["kubernetes"] and no_k8s_inventory:
            return _kubernetes_empty_note()
        what = (f"{want_count}×{want_name}" if want_count else want_name) if want_name else "any GPU"
        fix = "pick another GPU, or auto" if want_name else "allow another cloud in resources.clouds"
        return f"no offer of {what} on {', '.join(clouds)}{' as spot' if spot else ''}; {fix}"
    label = recipe.model.id.split("/")[-1]
    method = {"full": "full fine-tune", "lora": "LoRA", "qlora": "QLoRA"}[recipe.method]
    by_eval = [c for c in cands if c.blocked_by_eval]
    if by_eval:
        best = max(by_eval, key=lambda x: x.mem_available_gb)
        kind = "4-bit" if recipe.eval is not None and recipe.eval.load_4bit else "bf16"
        return (f"{label} {method} trains on {best.gpu} ({best.mem_needed_gb:.0f} of {best.mem_available_gb:.0f} GB), "
                f"but its post-training eval needs ≈{best.eval_mem_gb:.0f} GB per GPU ({kind} weights, one replica "
                f"per GPU), more than any GPU it trains on: {_eval_fix(recipe, shape)}")
    one = memory(recipe, gpus=1, shape=shape)
    needed = one.total
    size = f"≈{needed / 1000:.1f} TB" if needed >= 1000 else f"≈{needed:.0f} GB"
    hints = []
    if recipe.method == "full":
        hints.append("use method qlora")
        n = shape["params_b"] * 1e9
        # ZeRO-3-offload keeps bf16 weights+grads sharded on GPUs (4 bytes/param) + activations.
        acts = one.activations + one.fixed
        for gpus_total in (8, 16, 32, 64):
            per_gpu = n * 4 / gpus_total / GB + acts
            if per_gpu <= 80 * (1 - catalog.workloads()["headroom"]):
                nodes = max(1, gpus_total // 8)
                hints.append(f"{nodes}×8 H100-80GB with zero3-offload" if nodes > 1 else "8 H100-80GB with zero3-offload")
                break
    else:
        if recipe.data.seq_len > 512 or recipe.train.micro_batch_size > 1:
            hints.append("lower data.seq_len or train.micro_batch_size")
        if not recipe.train.gradient_checkpointing:
            hints.append("turn on train.gradient_checkpointing")
        if recipe.method == "lora":
            hints.append("use method qlora")
    biggest = max(cands, key=lambda x: x.mem_available_gb)
    return (f"{label} {method} needs {size} of GPU memory on one GPU (largest offered here: {biggest.gpu}, "
            f"{biggest.mem_available_gb:.0f} GB): " + (", or ".join(hints) if hints else "allow a larger GPU"))
