"""How often the calibration probe changes the plan's ETA: the shipped CPU recipe's variants,
planned for this machine's CPU, then trained for a few steps with the probe on.

Why: does the plan's published-MFU estimate survive contact with the run? Each
variant of recipes/tiny-local.yaml (the shipped recipe that plans for a CPU; full / LoRA / QLoRA,
packed / padded) is planned (`launcher.estimate.plan`, the local CPU candidate), rendered into the
job's SFTLAUNCH_PLAN exactly as `render` does (`launcher.render.plan_prediction`), and trained
through the real jobs.train path for `--steps` steps with the probe measuring steps 2..N. The
probe's re-planned ETA is compared with the plan's; a change over 10% counts. Figures, no asserts.
Run counts and timings depend on this machine's load, which is printed.

    python bench/calibration.py [--steps 14] [--probe 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = [(m, p) for m in ("full", "lora", "qlora") for p in (True, False)]


def variant(method: str, packing: bool, steps: int):
    from sftcore.recipe import WEEK_MINUTES, load_recipe, recipe_from_dict

    d = load_recipe(REPO / "recipes" / "tiny-local.yaml").resolved_dict()
    d["method"] = method
    if method != "full":
        d["lora"] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
        d["train"]["learning_rate"] = 1e-3
    if method == "qlora":
        d["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": False, "compute_dtype": "float32"}
    d["data"].update(packing=packing, eval_fraction=0.0)  # train only: the probe measures training
    d["train"].update(max_steps=steps, checkpoint_minutes=WEEK_MINUTES)  # no timed save inside the probe
    return recipe_from_dict(d)


def run(method: str, packing: bool, steps: int, probe: int) -> dict:
    from jobs.train import train
    from launcher.estimate.candidates import plan
    from launcher.render import plan_prediction
    from sftcore.contract import METRICS, Env

    recipe = variant(method, packing, steps)
    chosen = plan(recipe).chosen
    prediction = plan_prediction(chosen)
    os.environ[Env.PLAN] = json.dumps(prediction)
    os.environ[Env.CALIBRATION] = f"{probe},3600"
    with tempfile.TemporaryDirectory() as tmp:
        train(recipe, Path(tmp), run_id="bench")
        rows = [json.loads(x) for x in (Path(tmp) / METRICS).read_text().splitlines()]
    cal = next(r["calibration"] for r in rows if "calibration" in r)
    return {"method": method, "packing": packing, "gpu": chosen.gpu, "plan_tps": prediction["tokens_per_s"],
            "tps": cal["tokens_per_s"], "plan_train_h": prediction["train_hours"], "train_h": cal["train_hours"],
            "plan_eta_h": cal["predicted_eta_hours"], "eta_h": cal["eta_hours"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--probe", type=int, default=10)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = [run(m, pk, a.steps, a.probe) for m, pk in VARIANTS]
    print(f"recipes/tiny-local.yaml variants on this CPU ({os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}), "
          f"{a.steps} steps, probe over steps 2..{a.probe + 1}")
    print(f"{'method':6} {'layout':7} {'plan tok/s':>10} {'measured':>9} {'plan train s':>12} {'measured':>9} "
          f"{'plan ETA s':>10} {'calibrated':>10} {'change':>7}")
    changed = 0
    for r in results:
        change = r["eta_h"] / r["plan_eta_h"] - 1
        changed += abs(change) > 0.10
        print(f"{r['method']:6} {'packed' if r['packing'] else 'padded':7} {r['plan_tps']:>10.0f} {r['tps']:>9.0f} "
              f"{r['plan_train_h'] * 3600:>12.1f} {r['train_h'] * 3600:>9.1f} {r['plan_eta_h'] * 3600:>10.1f} "
              f"{r['eta_h'] * 3600:>10.1f} {change:>+7.0%}")
    print(f"ETA changed by more than 10%: {changed} of {len(results)} plans")


if __name__ == "__main__":
    main()
