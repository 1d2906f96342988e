"""Estimated vs published memory and time for the planner's reference comparisons.

Prints one row per comparison: what was published (and where), what launcher.estimate says.
    python bench/estimate_vs_published.py
"""

from __future__ import annotations

from pathlib import Path

from launcher.estimate import memory, timing
from launcher.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]


def _r(model, method, seq, mb, **train):
    d = {"name": "b", "model": {"id": model}, "method": method,
         "data": {"sources": [{"path": "ehartford/dolphin", "format": "dolphin", "max_samples": 25000}], "seq_len": seq},
         "train": {"micro_batch_size": mb, **train}, "resources": {"clouds": ["lambda", "runpod", "gcp"]}}
    if method != "full":
        d["lora"] = {"r": 64, "alpha": 16, "target_modules": "all-linear"}
    if method == "qlora":
        d["quantization"] = {"double_quant": True}
    return recipe_from_dict(d)


def main() -> None:
    rows = []
    m = memory(_r("huggyllama/llama-65b", "qlora", 512, 1))
    rows.append(("LLaMA-65B QLoRA, seq 512, mb 1 (QLoRA paper)", "< 48 GB on one GPU",
                 f"{m.total:.1f} GB ({m.total - m.pageable:.1f} GB with paged optimizer states spilled)"))
    ref = load_recipe(REPO / "recipes/llama2-70b-qlora.yaml")
    m = memory(ref)
    rows.append(("Llama-2-70B QLoRA seq 2048 mb 4 (sft-demos)", "fits 1x80 GB", f"{m.total:.1f} GB"))
    full = _r("meta-llama/Llama-2-7b-hf", "full", 2048, 1, deepspeed="zero3", optimizer="adamw_torch")
    one, eight = memory(full, gpus=1), memory(full, gpus=8)
    rows.append(("7B full, Adam mixed precision (ZeRO paper)", "16 B/param = ~108 GB + activations",
                 f"{one.weights + one.trainable:.1f} GB + {one.activations:.1f} GB act; ZeRO-3 x8: {eight.total:.1f} GB/GPU"))
    t = timing(ref, "lambda", "H100", 1)
    rows.append(("Llama-2-70B QLoRA 25k dolphin rows, 1xH100 (sft-demos)", "~17 h training",
                 f"{t.train_hours + t.overhead_hours:.1f} h (+ {t.eval_hours:.1f} h leaderboard eval)"))
    w = max(len(r[0]) for r in rows)
    print(f"{'comparison':<{w}}  {'published':<36}  estimate")
    for name, pub, est in rows:
        print(f"{name:<{w}}  {pub:<36}  {est}")


if __name__ == "__main__":
    main()
