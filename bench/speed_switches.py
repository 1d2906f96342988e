"""Training tokens per CPU-second for each speed switch, as ratios within one run.

Why: what does each switch buy? Each variant trains the tiny model (recipes/
tiny-local.yaml's data and packing, jobs.model's loading, jobs.data's collator, AdamW) for the
same batches; the variants run interleaved, several rounds, and the median real (non-pad)
tokens/s of each is compared with its baseline in the same run, so the machine's load (2 shared
cores here) hits all alike. Figures, no asserts.

- packed layout: one row per packed sequence (block-diagonal mask built by transformers from the
  position ids) vs one flattened padding-free row (what jobs.data uses for flash-attention's
  varlen kernels), under sdpa and eager. On CPU there is no varlen kernel: the flattened row's
  mask is (micro_batch × seq_len)², which is why jobs.data flattens only for flash.
- gradient checkpointing on vs off (the ~1/3 recompute train.gradient_checkpointing: auto avoids
  where the plan finds the activations fit).
Liger kernels, TF32, flash-attention and DataLoader workers are CUDA-only: not measurable here.

    python bench/speed_switches.py [--steps 3] [--rounds 3] [--micro 4] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _setup(micro: int, seq_len: int):
    from jobs import model as jm
    from jobs.data import build_datasets
    from sftcore.recipe import load_recipe, recipe_from_dict

    d = load_recipe(REPO / "recipes" / "tiny-local.yaml").resolved_dict()
    d["data"].update(seq_len=seq_len, eval_fraction=0.0)
    d["train"].update(micro_batch_size=micro)
    d["eval"] = None
    recipe = recipe_from_dict(d)
    tok = jm.load_tokenizer(recipe)
    train, _ = build_datasets(recipe, tok)
    return recipe, tok, train


def _variant(recipe, tok, train, impl: str, flatten: bool, gc: bool, micro: int):
    """A fresh model (same seed, same weights) and the collated batches for one variant."""
    import torch

    from jobs import model as jm
    from jobs.data import make_collator, prepare_model_for_packing

    torch.manual_seed(0)
    model = jm.load_model(recipe, tok, gradient_checkpointing=gc)
    model.set_attn_implementation(impl)
    prepare_model_for_packing(model, recipe)
    model.train()
    collate = make_collator(recipe, tok, impl, flatten=flatten)
    batches = [collate(train[i:i + micro]) for i in range(0, len(train) - micro + 1, micro)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt, batches


def _rate(model, opt, batches, steps: int, pad: int) -> float:
    """Real tokens per second of this process's CPU time over `steps` optimizer steps (after one
    warm-up step). CPU time, on one thread, because the cores are shared: wall-clock rates moved
    3-4x between rounds of the same variant at a load average of 13 on 2 cores."""
    def step(b):
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])
    tokens, t0 = 0, time.process_time()
    for i in range(steps):
        b = batches[(i + 1) % len(batches)]
        step(b)
        tokens += int((b["input_ids"] != pad).sum())
    return tokens / (time.process_time() - t0)


VARIANTS = {  # name: (attention, flatten packed rows, gradient checkpointing)
    "sdpa rows": ("sdpa", False, False),
    "sdpa flat": ("sdpa", True, False),
    "eager rows": ("eager", False, False),
    "eager flat": ("eager", True, False),
    "sdpa rows +gc": ("sdpa", False, True),
}
RATIOS = [("sdpa flat", "sdpa rows", "flattened / block-mask rows (sdpa)"),
          ("eager flat", "eager rows", "flattened / block-mask rows (eager)"),
          ("sdpa rows +gc", "sdpa rows", "checkpointing on / off (sdpa rows)")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    recipe, tok, train = _setup(a.micro, a.seq_len)
    built = {name: _variant(recipe, tok, train, *spec, a.micro) for name, spec in VARIANTS.items()}
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(a.rounds):
        for name, (model, opt, batches) in built.items():
            rates[name].append(_rate(model, opt, batches, a.steps, tok.pad_token_id))
    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"tiny-llama full fine-tune, CPU, 1 thread, rates per CPU-second (load avg {os.getloadavg()[0]:.1f}), "
          f"micro {a.micro}, seq_len {a.seq_len}, {a.steps} steps × {a.rounds} interleaved rounds")
    print(f"{'variant':16} {'real tokens/CPU-s (median)':>27} {'rounds':>30}")
    for name in VARIANTS:
        print(f"{name:16} {med[name]:>27.0f} {' '.join(f'{x:.0f}' for x in rates[name]):>30}")
    for num, den, words in RATIOS:
        print(f"{words:40} {med[num] / med[den]:.2f}x")
    print("CUDA-only (not measured here): Liger kernels, TF32, flash-attention varlen, DataLoader workers")


if __name__ == "__main__":
    main()
