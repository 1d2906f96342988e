"""The GPU check: what the GPU host really has, then an 8B-shaped QLoRA and LoRA run through the
real jobs.train path, in at most ~8 minutes on one H100.

Why: every figure the planner promises for a GPU (memory, tokens/s, MFU) and every assumption the
image makes (CUDA build vs driver, bitsandbytes' CUDA library, DeepSpeed built for CUDA, which
SDPA kernel runs) is checked here in one go on a lent machine, and the numbers land in
bench/RESULTS.md.

Prints:
  1. environment facts: torch and its CUDA, the driver, the GPUs; bitsandbytes' version and the
     native library it loaded; DeepSpeed's accelerator and which ops are prebuilt/compatible; the
     SDPA backends enabled and whether the flash kernel runs for bf16 causal attention; flash-attn.
  2. bench/gpu_train.py with Llama-3.1-8B's shape (vocab 128256, seq 2048, random weights), QLoRA
     and LoRA: tokens/s per GPU, MFU with the planner's FLOPs per token, peak allocated and
     reserved memory beside `plan`'s estimate, the slowest checkpoint save and the adapter size.

    python bench/gpu_check.py             # facts + QLoRA and LoRA (needs a CUDA GPU)
    python bench/gpu_check.py --dry-run   # facts + the recipes and estimates only

Exit: 0 all ran, 1 a run failed, 2 no CUDA GPU (after printing the facts).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# 12 optimizer steps of micro 2 x 2048 tokens each, a checkpoint every 15 s: enough steady steps
# for a median after the first three, and at least one timed save, within --time-limit.
RUN_ARGS = ["--shape", "8b", "--methods", "qlora,lora", "--steps", "12", "--micro", "2", "--seq-len", "2048",
            "--checkpoint-minutes", "0.25", "--time-limit", "390"]


def _try(fn, default="unavailable"):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a fact we could not read is itself the fact
        return f"{default} ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"


def torch_facts() -> list[str]:
    from jobs import gpu_env

    f = gpu_env.gather()
    lines = [f"torch: {gpu_env.describe(f)}", f"GPUs visible: {f.visible} {f.names}"]
    if f.cuda_error:
        lines.append(f"CUDA error: {f.cuda_error}")
    if f.visible:
        import torch

        cap = torch.cuda.get_device_capability(0)
        lines.append(f"compute capability {cap[0]}.{cap[1]}; bf16 supported: {torch.cuda.is_bf16_supported()}; "
                     f"tf32 matmul allowed: {torch.backends.cuda.matmul.allow_tf32}")
    return lines


def bnb_facts() -> list[str]:
    def read():
        import bitsandbytes as bnb
        from bitsandbytes import cextension

        lib = getattr(cextension, "lib", None)
        path = getattr(getattr(lib, "_lib", None), "_name", None) or repr(lib)
        return f"bitsandbytes {bnb.__version__}; native library: {path}"

    return [_try(read, "bitsandbytes: not importable")]


def deepspeed_facts() -> list[str]:
    def read():
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from deepspeed.git_version_info import accelerator_name, installed_ops, torch_info

        built = sorted(k for k, v in installed_ops.items() if v)
        return (f"deepspeed {deepspeed.__version__}; accelerator now: {get_accelerator().device_name()}, "
                f"at install: {accelerator_name or '?'}; prebuilt ops: {built or 'none'}; "
                f"built against torch {torch_info.get('version')} CUDA {torch_info.get('cuda_version')}")

    return [_try(read, "deepspeed: not importable")]


def sdpa_facts() -> list[str]:
    def read():
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        enabled = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
                   for name in ("flash", "mem_efficient", "cudnn", "math")}
        if not torch.cuda.is_available():
            return f"SDPA backends enabled: {enabled}; flash kernel: not tried (no CUDA)"
        q = torch.randn(1, 32, 2048, 128, device="cuda", dtype=torch.bfloat16)
        runs = {}
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("mem_efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel([backend]):
                    torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
                runs[name] = "runs"
            except RuntimeError as exc:
                runs[name] = f"no ({str(exc).splitlines()[0][:80]})"
        return f"SDPA backends enabled: {enabled}; bf16 causal 2048x128: {runs}"

    def flash_attn():
        import flash_attn

        return f"flash-attn {flash_attn.__version__}"

    return [_try(read, "SDPA: could not check"), _try(flash_attn, "flash-attn: not installed")]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    print("== environment")
    for line in torch_facts() + bnb_facts() + deepspeed_facts() + sdpa_facts():
        print(f"  {line}", flush=True)
    print("== 8B-shaped QLoRA and LoRA (bench/gpu_train.py " + " ".join(RUN_ARGS + argv) + ")", flush=True)
    import gpu_train

    return gpu_train.main(RUN_ARGS + argv)


if __name__ == "__main__":
    sys.exit(main())
