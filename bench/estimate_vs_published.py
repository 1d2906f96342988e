"""Estimated vs published memory and time for the planner's reference comparisons.

One row per comparison the planner issue asks for: what was published (and where), the card
the estimate is for (the one `plan` picks, or the one the source used), and what
launcher.estimate says. Training memory and time only where the source measured training; the
post-training eval is shown separately. Offline, no GPU:
    python bench/estimate_vs_published.py
"""

from __future__ import annotations

from pathlib import Path

from launcher.estimate.candidates import plan
from launcher.estimate.memory import memory
from sftcore.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]


def _r(model, method, seq, mb, **train):
    d = {"name": "b", "model": {"id": model}, "method": method,
         "data": {"sources": [{"path": "ehartford/dolphin", "format": "dolphin", "max_samples": 25000}], "seq_len": seq},
         "train": {"micro_batch_size": mb, **train}, "resources": {"clouds": ["lambda", "runpod", "gcp"]},
         "eval": None}
    if method != "full":
        d["lora"] = {"r": 64, "alpha": 16, "target_modules": "all-linear"}
    if method == "qlora":
        d["quantization"] = {"double_quant": True}
    return recipe_from_dict(d)


def _card(c) -> str:
    return f"{c.nodes}×{c.gpus_per_node}×{c.gpu}" if c.nodes > 1 else f"{c.gpus_per_node}×{c.gpu} ({c.cloud})"


def _fit(c) -> str:
    if c is None:
        return "does not fit"
    return "fits, borderline" if c.borderline else "fits"


def rows() -> list[tuple[str, str, str, str]]:
    out = []
    # Dettmers et al. 2023 (QLoRA), abstract: a 65B model fine-tuned on a single 48 GB GPU.
    r65 = _r("huggyllama/llama-65b", "qlora", 512, 1)
    m = memory(r65)
    c = plan(r65, gpu="A6000:1").chosen
    out.append(("LLaMA-65B QLoRA, seq 512, mb 1 (QLoRA paper)", "fits one 48 GB GPU", "1×A6000 48 GB",
                f"{m.total:.1f} GB, {m.total - m.pageable:.1f} GB with paged optimizer states spilled: {_fit(c)}"))

    # sft-demos' reference run: Llama-2-70B QLoRA, seq 2048, on one 80 GB GPU.
    ref = load_recipe(REPO / "recipes/llama2-70b-qlora.yaml")
    chosen = plan(ref).chosen
    m = memory(ref)
    small = plan(ref, gpu="RTX4090:1").chosen
    out.append(("Llama-2-70B QLoRA seq 2048 mb 4 (sft-demos)", "fits 1×80 GB, not 24 GB", _card(chosen),
                f"train {m.total:.1f} GB + eval {chosen.eval_mem_gb:.1f} GB (4-bit) of {chosen.mem_available_gb:.0f}: "
                f"{_fit(chosen)}; 1×RTX4090 24 GB: {_fit(small)}"))

    # ZeRO (Rajbhandari et al. 2020, section 3.1): mixed-precision Adam = 16 bytes per parameter.
    full = _r("meta-llama/Llama-2-7b-hf", "full", 2048, 1, deepspeed="zero3", optimizer="adamw_torch")
    one, eight = memory(full, gpus=1), memory(full, gpus=8)
    fit_one, fit_eight = plan(full, gpu="A100-80GB:1").chosen, plan(full, gpu="A100-80GB:8").chosen
    out.append(("Llama-2-7B full, Adam mixed precision (ZeRO paper)", "16 B/param ≈ 108 GB: not 1×80, fits 8×80 ZeRO-3",
                "1× and 8×A100-80GB",
                f"{(one.weights + one.trainable) / 6.74:.1f} B/param = {one.weights + one.trainable:.1f} GB + "
                f"{one.activations:.1f} GB act ({_fit(fit_one)} on 1); ZeRO-3 ×8: {eight.total:.1f} GB/GPU ({_fit(fit_eight)})"))

    # sft-demos: ~17 h for 25k dolphin rows at seq 2048 on 1×H100 (training only).
    t = chosen.timing
    train = t.train_hours + t.terms["checkpoint_hours"]
    out.append(("Llama-2-70B QLoRA 25k dolphin rows (sft-demos)", "~17 h training on 1×H100", _card(chosen),
                f"{train:.1f} h training incl. checkpoints ({train / 17:.0%} of 17 h; eval not included: "
                f"+{t.eval_hours:.1f} h 4-bit leaderboard eval, ETA {chosen.eta_hours:.1f} h, ${chosen.total_usd:.0f})"))
    return out


def main() -> None:
    table = rows()
    heads = ("comparison", "published", "card", "estimate")
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(heads[:3])]
    print("  ".join(h.ljust(w) for h, w in zip(heads[:3], widths, strict=True)) + "  " + heads[3])
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])


if __name__ == "__main__":
    main()
