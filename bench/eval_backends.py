"""Eval wall time of one model with lm-eval's HF backend against its vLLM backend, beside what the
planner assumes for each (launcher/estimate/timing.py).

    python bench/eval_backends.py --model meta-llama/Llama-3.1-8B-Instruct [--preset leaderboard-v2]
                                  [--limit N] [--backends hf,vllm] [--gpu H100-SXM]

Needs an NVIDIA GPU, the Hub (the v2 datasets; GPQA is gated) and a vLLM venv: the image's
/opt/vllm, or $SFTLAUNCH_VLLM_PYTHON. Each backend runs as its own `python -m jobs.evaluate`
process (a fresh GPU each time, as in the job); the figure is the process wall time and the
harness's wall_s from results.json, with the scores so the two runs can be compared. --limit
scales the planner's figure the way timing.eval_workload does (limit / 1000, capped at 1). Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(model: str, preset: str, backend: str, limit: int | None, out: Path) -> dict:
    cmd = [sys.executable, "-m", "jobs.evaluate", "--model", model, "--preset", preset, "--backend", backend,
           "--out", str(out)] + (["--limit", str(limit)] if limit else [])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    code = subprocess.call(cmd, env=env)
    wall = time.perf_counter() - t0
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    return {"backend": backend, "exit": code, "wall_s": wall, "harness_s": res.get("wall_s"),
            "ran": res.get("backend"), "average": res.get("average")}


def planned(model: str, preset: str, limit: int | None, gpu: str) -> dict[str, float]:
    from launcher.estimate.timing import timing
    from sftcore.recipe import recipe_from_dict

    out = {}
    for backend in ("hf", "vllm"):
        r = recipe_from_dict({"name": "bench", "model": {"id": model}, "method": "full",
                              "data": {"sources": [{"path": "ehartford/dolphin", "format": "dolphin"}]},
                              "resources": {"clouds": ["runpod", "lambda", "gcp"]},
                              "eval": {"preset": preset, "backend": backend, **({"limit": limit} if limit else {})}})
        out[backend] = timing(r, "runpod", gpu, 1, workload="eval").eval_hours * 3600
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="leaderboard-v2")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--backends", default="hf,vllm")
    p.add_argument("--gpu", default="H100-SXM", help="the planner's GPU name for this machine")
    args = p.parse_args()
    plan = planned(args.model, args.preset, args.limit, args.gpu)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            rows.append(run(args.model, args.preset, backend, args.limit, Path(tmp) / backend))
    print(f"\n{args.model}, {args.preset}" + (f", --limit {args.limit}" if args.limit else "") + f", on {args.gpu}")
    print("| backend | exit | process wall s | harness wall_s | planned eval s | average |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        avg = f"{r['average']:.4f}" if isinstance(r["average"], float) else "-"
        print(f"| {r['backend']} (ran {r['ran']}) | {r['exit']} | {r['wall_s']:.0f} | {r['harness_s'] or '-'} | "
              f"{plan.get(r['backend'], 0):.0f} | {avg} |")


if __name__ == "__main__":
    main()
