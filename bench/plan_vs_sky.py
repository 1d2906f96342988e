"""Does SkyPilot launch what `plan` chooses, at plan's price? And how fast is `plan`?

    PYTHONPATH=. python bench/plan_vs_sky.py

Over every shipped recipe x every catalog cloud it allows: plan --cloud C chooses, render renders
it, and SkyPilot 0.14.1 (sky.Task.from_yaml_config + its optimizer, in a subprocess with a
temporary HOME holding the fixture excerpt of SkyPilot's v8 catalogs and a dead API endpoint)
must accept it; prints the share accepted and the largest $/h difference. Plan refusals (a count
a cloud does not sell) count as agreeing when SkyPilot refuses that accelerator too.
Then `sftlaunch plan` wall time against that SkyPilot catalog: cold (no offers cache: SkyPilot is
run once to build it) and warm (the cache is read; sky is not imported), median of 5 runs.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sftcore.contract import Env  # noqa: E402
from tests.launcher.test_plan_sky_optimizer import _probe, plan_cases  # noqa: E402
from tests.sky_catalog import sky_env, sky_optimize_tasks  # noqa: E402


def agreement() -> None:
    with tempfile.TemporaryDirectory() as home:
        os.environ["HOME"] = home  # the planner reads the packaged snapshot built from the same CSVs
        os.environ[Env.HOME] = str(Path(home) / ".sftlaunch")
        cases = list(plan_cases())
        specs = [{"task": _probe(t["accelerators"], c, t["spot"]) if refused else t, "clouds": [c]}
                 for _p, c, t, _u, refused in cases]
        results = sky_optimize_tasks(Path(home) / "sky", specs)
    agree, worst = 0, 0.0
    for (path, cloud, _t, usd, refused), got in zip(cases, results, strict=True):
        if refused:
            agree += not got["ok"]
            print(f"  {path.stem:28} {cloud:7} plan refuses; SkyPilot {'refuses too' if not got['ok'] else 'ACCEPTS'}")
            continue
        diff = abs(got["cost"] - usd) / got["cost"] if got["ok"] else float("inf")
        agree += got["ok"]
        worst = max(worst, diff)
        print(f"  {path.stem:28} {cloud:7} plan ${usd:8.4f}/h  SkyPilot "
              + (f"${got['cost']:8.4f}/h ({diff:.3%})" if got["ok"] else f"REFUSES: {got['error'][:80]}"))
    print(f"SkyPilot agrees with {agree}/{len(cases)} plans ({agree / len(cases):.0%}); "
          f"largest price difference {worst:.3%}")


def timing(runs: int = 5) -> None:
    recipe = str(ROOT / "recipes/llama2-70b-qlora.yaml")
    with tempfile.TemporaryDirectory() as home:
        env = {**sky_env(Path(home)), Env.HOME: str(Path(home) / ".sftlaunch"), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "launcher.cli", "plan", recipe, "--json"]
        cold, warm = [], []
        for _ in range(runs):
            (Path(home) / ".sftlaunch" / "offers-cache.json").unlink(missing_ok=True)
            t = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=ROOT)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=ROOT)
            warm.append(time.perf_counter() - t)
    print(f"plan wall time (median of {runs}): cold {statistics.median(cold):.2f} s (builds the offers cache "
          f"with SkyPilot), warm {statistics.median(warm):.2f} s")


if __name__ == "__main__":
    agreement()
    timing()
