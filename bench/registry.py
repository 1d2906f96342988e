"""`sftlaunch status` with 1,000 runs recorded (goal < 0.3 s).

Why: the registry is read by every status/logs/teardown call; it must stay instant as runs pile
up. Finished runs are never refreshed from SkyPilot, so this measures the registry and the table.
Prints three figures (medians): the in-process status command, `Registry.list()` alone, and the
whole `sftlaunch status` process (interpreter start-up included). Asserts nothing.

    python bench/registry.py [--runs 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sftcore.contract import Env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def populate(home: Path, n: int) -> None:
    from launcher.runs import Registry

    reg = Registry(home)
    rnd = random.Random(0)
    recipe = {"name": "bench", "model": {"id": "meta-llama/Llama-2-7b-hf"}, "method": "qlora",
              "data": {"sources": [{"path": "ehartford/dolphin"}]}, "train": {"epochs": 1}}
    t0 = time.time() - n * 3600
    for i in range(n):
        rid = f"sftl-bench-{i:04x}"
        reg.create(rid, recipe, backend=rnd.choice(["cluster", "managed"]), cloud=rnd.choice(["gcp", "runpod", "lambda"]),
                   gpu="H100", gpus_per_node=1, spot=rnd.random() < 0.3, usd_per_hour=2.5, max_usd=80.0)
        reg.set_state(rid, "running", at=t0 + i * 3600)
        reg.update(rid, progress_step=100, progress_total=100)
        reg.set_state(rid, rnd.choice(["succeeded", "succeeded", "failed", "cancelled"]), at=t0 + i * 3600 + 1800)
        reg.set_eval(rid, {"scores": {"arc": rnd.random(), "hellaswag": rnd.random()}})
    reg.close()


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="sftlaunch-bench-"))
    try:
        os.environ[Env.HOME] = str(home)
        start = time.perf_counter()
        populate(home, args.runs)
        fill = time.perf_counter() - start
        from click.testing import CliRunner

        from launcher.cli import cli
        from launcher.runs import Registry

        runner = CliRunner()
        out = runner.invoke(cli, ["status"])
        assert out.exit_code == 0 and out.output.count("\n") == args.runs + 1, out.output[-500:]
        in_process = median_time(lambda: runner.invoke(cli, ["status"]), args.repeat)
        list_only = median_time(lambda: Registry(home).list(), args.repeat)
        cmd = [sys.executable, "-m", "launcher.cli", "status"]
        env = dict(os.environ, **{Env.HOME: str(home)})
        subprocess.run(cmd, capture_output=True, env=env, cwd=REPO)
        whole = median_time(lambda: subprocess.run(cmd, capture_output=True, env=env, cwd=REPO, check=True), args.repeat)
        print(f"registry with {args.runs} runs (filled in {fill:.1f} s, {(home / 'runs.db').stat().st_size / 1e6:.1f} MB)")
        print(f"  sftlaunch status, in process:      {in_process * 1000:7.1f} ms  (goal < 300 ms)")
        print(f"  Registry.list() alone:             {list_only * 1000:7.1f} ms")
        print(f"  sftlaunch status, whole process:   {whole * 1000:7.1f} ms  (interpreter start-up included)")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
