"""Which lm-eval backend scores a model: `hf` (transformers, lm-eval's HFLM) or `vllm` (lm-eval's
VLLM model on vLLM's engine). One rule for the planner (which backend the ETA assumes) and the
job (which one runs), so `plan --explain` names the backend that will run.

Why vLLM: leaderboard-v2's IFEval and MATH generate up to 1,280 / 1,024 tokens per row, and
lm-eval's HF backend decodes a padded batch one token per forward until its longest row stops;
vLLM's continuous batching and paged KV cache keep the GPU busy instead. Why not always: vLLM runs
CUDA only (the image's vLLM is the CUDA build), its kernels need compute capability 8.0+ for bf16
(no bf16 on V100/T4), it serves a LoRA adapter only up to the ranks its LoRAConfig allows, and the
4-bit path here is bitsandbytes through HF. `auto` takes vLLM where none of those rule it out.

Standard library only (the launcher imports it).
"""

from __future__ import annotations

BACKENDS = ("auto", "vllm", "hf")
# vLLM's LoRAConfig.max_lora_rank choices: `MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256,
# 320, 512]` in vllm/config/lora.py (vLLM 0.33). The image build (docker/Dockerfile) asserts that
# the installed vLLM's MaxLoRARanks equals this tuple.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MIN_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores


class BackendError(ValueError):
    """`vllm` was asked for where it cannot run; the message says why and the fix."""


def max_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts as max_lora_rank that holds an adapter of rank `r`."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise BackendError(f"LoRA rank {r} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}; "
                       "use eval backend hf, or merge the adapter and evaluate the merged model")


def choose(requested: str, cuda: bool, capable: bool = True, load_4bit: bool = False,
           lora_r: int | None = None) -> tuple[str, str]:
    """(backend, why). `cuda`: an NVIDIA GPU will run the eval; `capable`: it has compute
    capability 8.0+ (bf16); `lora_r`: the adapter's rank when an adapter (not merged weights) is
    scored. `vllm` where it cannot run raises BackendError; `auto` then says why it keeps hf.
    `capable` only steers auto: asked for by name, vLLM runs a pre-Ampere GPU in fp16 itself."""
    if requested not in BACKENDS:
        raise BackendError(f"eval backend {requested!r}: use one of {', '.join(BACKENDS)}")
    if requested == "hf":
        return "hf", "eval.backend hf"
    blocker = None
    if not cuda:
        blocker = "vLLM needs an NVIDIA GPU (CPU runs use hf)"
    elif not capable and requested == "auto":  # asked for by name, vLLM itself decides (fp16)
        blocker = "vLLM's bf16 kernels need compute capability 8.0+ (Ampere or newer)"
    elif load_4bit:
        blocker = "eval.load_4bit loads bitsandbytes 4-bit weights through hf"
    elif lora_r is not None and lora_r > VLLM_LORA_RANKS[-1]:
        blocker = f"LoRA rank {lora_r} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}"
    if blocker is None:
        return "vllm", "eval.backend vllm" if requested == "vllm" else "auto: vLLM on this GPU"
    if requested == "vllm":
        raise BackendError(f"eval.backend vllm: {blocker}; set eval.backend to auto or hf")
    return "hf", f"auto: {blocker}"
