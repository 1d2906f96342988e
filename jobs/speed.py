"""The training path's speed switches, decided in one place: checkpointing, attention, kernels,
TF32 and DataLoader workers.

Why one module: each switch depends on the host (CUDA or CPU, the GPU's generation, what is
installed) and on the plan, and jobs.model / jobs.train only ask "which?". Each decision returns
the reason in words, logged once per run, so a slow run says why it is slow.

- Gradient checkpointing: `true`/`false` in the recipe are kept; `auto` takes the plan's choice
  (Env.GRADIENT_CHECKPOINTING, set by launcher.render from launcher.estimate, which knows the
  activation memory of the chosen GPU); with no plan (a local run) it is on with CUDA and off on
  CPU, where memory is not the limit.
- Attention: flash_attention_2 on CUDA when the flash_attn package imports (packed rows are then
  flattened and run through its varlen kernels, jobs.data.make_collator), SDPA otherwise.
- Kernels (`train.kernels`): Liger's fused linear cross-entropy, RMSNorm, RoPE and SwiGLU. `auto`
  uses them on CUDA when liger_kernel imports and the model's `model_type` is in Liger's own
  `MODEL_TYPE_TO_APPLY_LIGER_FN`; `liger` requires them (exit 2 naming the field otherwise);
  `none` and CPU never. The Trainer applies them (`use_liger_kernel`, via liger's
  `_apply_liger_kernel_to_instance` on the unwrapped model) and skips the eval logits with them.
- TF32 matmuls on Ampere and newer (compute capability >= 8), DataLoader workers with pinned
  memory on CUDA hosts.
"""

from __future__ import annotations

import importlib.util
import os

from sftcore.contract import JobEnv
from sftcore.errors import UserError


def gradient_checkpointing(recipe, cuda: bool | None = None) -> bool:
    """Whether this run recomputes activations (see the module docstring)."""
    gc = recipe.train.gradient_checkpointing
    if gc != "auto":
        return bool(gc)
    decided = JobEnv.from_env().gradient_checkpointing
    if decided is not None:
        return decided
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return bool(cuda)


def attention_implementation(cuda: bool | None = None) -> str:
    """flash_attention_2 where it can run (CUDA and flash_attn installed), sdpa otherwise."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def liger_families() -> frozenset[str] | None:
    """Liger's own model_type -> patch table, or None when liger_kernel does not import."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception:  # noqa: BLE001 - no triton, no GPU stack, an incompatible version: all mean "no Liger"
        return None
    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def use_liger(recipe, model_type: str | None, cuda: bool) -> tuple[bool, str]:
    """(apply Liger kernels, why) for `train.kernels` on this host and model family."""
    choice = getattr(recipe.train, "kernels", "auto")
    if choice == "none":
        return False, "train.kernels: none"
    families = liger_families() if cuda else None
    problem = None
    if not cuda:
        problem = "no CUDA device (Liger's kernels are Triton GPU kernels)"
    elif families is None:
        problem = "liger_kernel is not installed (or does not import)"
    elif model_type not in families:
        problem = f"Liger has no kernels for model_type {model_type!r}"
    if problem is None:
        return True, f"train.kernels: {choice}: Liger kernels for {model_type}"
    if choice == "liger":
        where = f"{recipe.source_path}: " if getattr(recipe, "source_path", None) else ""
        raise UserError(f"{where}train.kernels: liger, but {problem}; use kernels: auto or none")
    return False, f"train.kernels: auto: off, {problem}"


def enable_tf32() -> bool:
    """TF32 for fp32 matmuls and convolutions on Ampere+ (sm >= 80); True when turned on.
    bf16/fp16 autocast is unaffected; what stays fp32 (norms, the loss, LoRA's fp32 adapters
    under autocast-free ops, full fine-tunes' fp32 master math) gets the tensor cores."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def dataloader_kwargs(cuda: bool) -> dict:
    """TrainingArguments' DataLoader settings: workers collate the next batches while the GPU
    runs (collation is Python: tokens to tensors), with pinned memory for async copies. None on
    CPU, where a worker competes with the training threads for the same cores."""
    if not cuda:
        return {"dataloader_num_workers": 0, "dataloader_pin_memory": False}
    workers = max(1, min(4, (os.cpu_count() or 2) // 4))
    return {"dataloader_num_workers": workers, "dataloader_pin_memory": True,
            "dataloader_persistent_workers": True, "dataloader_prefetch_factor": 2}
