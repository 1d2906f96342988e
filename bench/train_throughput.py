"""Training throughput of the tiny model on this machine's CPU: packed vs padded batches.

Why: packing is on by default because padded batches spend compute on pad tokens; this prints
how many real (non-pad) tokens per second each layout trains, through the real jobs.train path
(recipes/tiny-local.yaml, the data helper's pipeline and collator). Figures, no asserts.

    python bench/train_throughput.py [--steps 20] [--micro 8] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(packing: bool, steps: int, micro: int, seq_len: int) -> dict:
    from jobs.train import train
    from sftcore.recipe import WEEK_MINUTES, load_recipe, recipe_from_dict

    d = load_recipe(REPO / "recipes" / "tiny-local.yaml").resolved_dict()
    d["data"].update(packing=packing, seq_len=seq_len, eval_fraction=0.0)
    # The schema's largest checkpoint interval: no timed save inside the measured steps.
    d["train"].update(max_steps=steps, micro_batch_size=micro, grad_accum=1, checkpoint_minutes=WEEK_MINUTES)
    d["eval"] = None
    recipe = recipe_from_dict(d)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        train(recipe, out, run_id="bench")
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    # Skip the first log (warm-up, allocator) for the steady-state rate.
    steady = [r["tokens_per_s"] for r in train_rows[1:]] or [train_rows[0]["tokens_per_s"]]
    steady.sort()
    return {"packing": packing, "steps": steps, "median_tokens_per_s": steady[len(steady) // 2],
            "final_loss": train_rows[-1]["loss"], "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = [run(packing, a.steps, a.micro, a.seq_len) for packing in (True, False)]
    print(f"tiny-llama, CPU ({os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}), micro {a.micro}, "
          f"seq_len {a.seq_len}, {a.steps} steps")
    print(f"{'layout':8} {'real tokens/s':>14} {'final loss':>11} {'wall s':>8}")
    for r in results:
        print(f"{'packed' if r['packing'] else 'padded':8} {r['median_tokens_per_s']:>14.0f} "
              f"{r['final_loss']:>11.4f} {r['wall_s']:>8.1f}")
    if results[1]["median_tokens_per_s"]:
        print(f"packed/padded real-token throughput: {results[0]['median_tokens_per_s'] / results[1]['median_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
