"""Time from `sftlaunch up RECIPE --dry-run` start to the printed plan (goal < 3 s).

Why: a user must see where a run goes and what it costs before anything slow happens. The plan
(planner only: no SkyPilot import) is printed first; SkyPilot's credential check and optimizer
come after it. This starts the real CLI in a fresh process, with an empty HOME and SkyPilot
pointed at an unreachable API server (so no server is started and nothing is contacted), and
reads its output until the plan's last line. Prints medians; asserts nothing.

    python bench/up_dry_run.py [RECIPE] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launcher.contract import Env

REPO = Path(__file__).resolve().parents[1]


def one_run(recipe: str) -> tuple[float, float, int, str]:
    with tempfile.TemporaryDirectory(prefix="sftlaunch-bench-") as home:
        env = dict(os.environ, HOME=home, **{Env.HOME: f"{home}/.sftlaunch"},
                   SKYPILOT_API_SERVER_ENDPOINT="http://127.0.0.1:9",  # refused at once: never a real server
                   SKYPILOT_DISABLE_USAGE_COLLECTION="1", PYTHONUNBUFFERED="1")
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "up", recipe, "--dry-run"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        to_plan = None
        out = []
        for line in proc.stdout:
            out.append(line)
            if to_plan is None and line.lstrip().startswith("run id"):
                to_plan = time.perf_counter() - start
        code = proc.wait()
        total = time.perf_counter() - start
    return (to_plan if to_plan is not None else float("nan")), total, code, "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "llama2-70b-qlora.yaml"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results = [one_run(args.recipe) for _ in range(args.runs)]
    plan_s = statistics.median(r[0] for r in results)
    total_s = statistics.median(r[1] for r in results)
    print(f"sftlaunch up {Path(args.recipe).name} --dry-run (no credentials), median of {args.runs}:")
    print(f"  to the printed plan:  {plan_s:6.2f} s  (goal < 3 s)")
    print(f"  to exit (SkyPilot check included): {total_s:6.2f} s, exit code {results[-1][2]}")
    if results[-1][2] != 0 or plan_s != plan_s:
        print("last output:\n" + results[-1][3][-2000:])


if __name__ == "__main__":
    main()
