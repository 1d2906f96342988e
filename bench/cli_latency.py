"""Median wall time of `sftlaunch --help`, `sftlaunch validate recipes/*.yaml` and `sky --help`.

Why: the launcher's light commands must feel instant; SkyPilot's own CLI is the yardstick
(goal: `sftlaunch --help` at least 10x faster than `sky --help`). Prints figures; asserts nothing.

    python bench/cli_latency.py [--runs 7]
"""

from __future__ import annotations

import argparse
import glob
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _median_seconds(cmd: list[str], runs: int) -> tuple[float, int]:
    times = []
    code = 0
    subprocess.run(cmd, capture_output=True, cwd=REPO)  # warm the OS file cache once
    for _ in range(runs):
        start = time.perf_counter()
        code = subprocess.run(cmd, capture_output=True, cwd=REPO).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    sftlaunch = shutil.which("sftlaunch", path=str(bindir)) or shutil.which("sftlaunch")
    sky = shutil.which("sky", path=str(bindir)) or shutil.which("sky")
    if not sftlaunch:
        sys.exit("sftlaunch is not installed in this environment (pip install -e .)")
    recipes = sorted(glob.glob(str(REPO / "recipes" / "*.yaml")))
    rows = [
        ("sftlaunch --help", [sftlaunch, "--help"]),
        (f"sftlaunch validate recipes/*.yaml ({len(recipes)} files)", [sftlaunch, "validate", *recipes]),
    ]
    if sky:
        rows.append(("sky --help", [sky, "--help"]))
    results = {}
    print(f"{'command':<48} {'median s':>9}  exit  (runs={args.runs})")
    for label, cmd in rows:
        median, code = _median_seconds(cmd, args.runs)
        results[label] = median
        print(f"{label:<48} {median:>9.3f}  {code:>4}")
    if sky:
        ratio = results["sky --help"] / results["sftlaunch --help"]
        print(f"sky --help / sftlaunch --help = {ratio:.1f}x (goal >= 10x)")
    else:
        print("sky is not installed: install the cloud extra to compare")


if __name__ == "__main__":
    main()
