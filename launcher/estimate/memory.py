"""Per-GPU memory of a recipe: the model's shape and each term of training and eval memory.

Part of the planner (launcher/estimate/, see its __init__ for why we estimate at all).

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

The model's shape is looked up once per plan and handed down (`shape=`): a shape from a local or
cached config.json costs a file read and a parse, and a plan builds hundreds of candidates.
It imports neither torch nor sky.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from launcher import catalog
from sftcore.recipe import Recipe

GB = 1e9


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
# Shape: parameters, MoE, logits, attention span. Kept apart from the memory terms.

DEFAULT_EXPERT_MODULES = ("w1", "w2", "w3")  # Mixtral's names; other MoE shapes list theirs


def _expert_modules(shape: dict[str, Any]) -> tuple[str, ...]:
    experts = shape.get("experts")
    if not experts:
        return ()
    return tuple(experts.get("modules") or DEFAULT_EXPERT_MODULES)


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


def liger_chunk_tokens(tokens: float, vocab: int, hidden: int) -> int:
    """Tokens per chunk of Liger's fused linear cross-entropy (liger_kernel 0.8.5,
    ops/fused_linear_cross_entropy.py: inc_factor = cdiv(V, H), chunk = next_power_of_2(cdiv(BT,
    inc_factor)), at most BT), so that one chunk's logits weigh about as much as the hidden states."""
    bt = max(1, int(tokens))
    inc = -(-vocab // hidden)
    per = -(-bt // inc)
    return min(1 << (per - 1).bit_length(), bt)


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


def checkpointing(recipe: Recipe, decided: bool | None = None) -> bool:
    """Whether training recomputes activations: the plan's decision for `auto` when given, the
    recipe's true/false, and on (the safe side) for `auto` where no GPU was decided."""
    if decided is not None:
        return decided
    gc = recipe.train.gradient_checkpointing
    return True if gc == "auto" else bool(gc)


def fused_loss(recipe: Recipe) -> bool:
    """Whether the loss is Liger's fused linear cross-entropy, which never materializes the
    [tokens, vocab] logits. Only a recipe that forces `train.kernels: liger` is counted so: with
    `auto` the job uses Liger only on CUDA for the families Liger supports, which the planner's
    shape table does not name, so the logits stay counted (an over-estimate where Liger runs)."""
    return getattr(recipe.train, "kernels", "auto") == "liger"


def memory(recipe: Recipe, gpus: int = 1, micro_batch: int | None = None, seq_len: int | None = None,
           workload: str = "train", shape: dict[str, Any] | None = None,
           gradient_checkpointing: bool | None = None) -> Memory:
    """Per-GPU memory; `gradient_checkpointing` is the plan's decision for a recipe's `auto`."""
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
    if checkpointing(recipe, gradient_checkpointing):
        acts = tokens * h * 2 * layers + act_full_layer
        notes.append("gradient checkpointing on: one layer's activations kept whole, the others' inputs only")
    else:
        acts = act_full_layer * layers
        notes.append("gradient checkpointing off: every layer's activations kept for the backward")
    if fused_loss(recipe):
        # One chunk's logits in the compute dtype and their fp32 softmax/gradient work.
        logits = liger_chunk_tokens(tokens, shape["vocab"], h) * shape["vocab"] * (half + 4)
        notes.append("train.kernels liger: fused linear cross-entropy, logits computed in chunks")
    else:
        logits = logits_bytes(shape, tokens, half)
        if getattr(recipe.train, "kernels", "auto") == "auto" and workload == "train":
            notes.append("logits counted whole: train.kernels auto may fuse them away on CUDA (Liger, for the "
                         "families it supports); kernels: liger counts only its chunks")
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
