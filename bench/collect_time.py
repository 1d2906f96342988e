"""Wall time of collecting the test suite, serial (`pytest --collect-only -n 0`) and as the
README's `python -m pytest` runs it (pyproject's `-n auto` addopts: each xdist worker collects the
whole suite), with the heavy packages the serial collection imported.

Why: every pytest run pays collection before its first test, in every worker; a test module that
imports torch, transformers or sky at module level adds seconds per process on 2 cores (goal:
under 15 s serial on the 2-core VM). The machine's load average is printed beside the figures,
which move with it. Prints figures; asserts nothing.

    python bench/collect_time.py [--runs 3] [--no-xdist]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE_ENV = "COLLECT_PROBE_OUT"  # tests/collect_probe.py writes its JSON there


# xdist leaves --collect-only serial, so the xdist figure is a run whose workers each collect the
# suite and then deselect every test (pytest exits 5: no test ran).
SERIAL = ["--collect-only", "-n", "0"]
XDIST = ["-k", "collect_time_bench_selects_no_test"]


def collect(extra: list[str], probe: Path | None) -> tuple[float, str]:
    """One `pytest -q` run: its wall seconds and the last line of its output."""
    env = dict(os.environ)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    if probe is not None:
        env[PROBE_ENV] = str(probe)
        args += ["-p", "tests.collect_probe"]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    if proc.returncode not in (0, 5):
        sys.exit(f"pytest --collect-only {' '.join(extra)} exited {proc.returncode}: {lines[-1] if lines else proc.stderr[-500:]}")
    return seconds, lines[-1] if lines else ""


def row(label: str, extra: list[str], runs: int, probe: Path | None = None) -> None:
    times, inner, last = [], [], ""
    for _ in range(runs):
        seconds, last = collect(extra, probe)
        times.append(seconds)
        found = re.search(r" in ([\d.]+)s", last)  # pytest's own figure: collection after start-up
        if found:
            inner.append(float(found.group(1)))
    reported = f"{statistics.median(inner):.2f}" if inner else "-"
    print(f"{label:<34} {statistics.median(times):>8.2f}  {min(times):>6.2f}  {max(times):>6.2f}"
          f"  {reported:>8}  {os.getloadavg()[0]:>5.2f}")
    if last:
        print(f"{'':<34} {last}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-xdist", action="store_true", help="only the serial (-n 0) collection")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; {args.runs} runs each")
    print(f"{'collection':<34} {'median s':>8}  {'min':>6}  {'max':>6}  {'pytest s':>8}  {'load':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.json"
        row("pytest --collect-only -n 0", SERIAL, args.runs, probe)
        heavy = json.loads(probe.read_text())["heavy"]
        print(f"heavy packages imported while collecting (-n 0): {', '.join(heavy) or 'none'}")
    if not args.no_xdist:
        row("pytest (-n auto), all deselected", XDIST, args.runs)


if __name__ == "__main__":
    main()
