"""Time from `sftlaunch up RECIPE --dry-run` start to the printed plan (goal < 3 s).

Why: a user must see where a run goes and what it costs before anything slow happens. The plan
(planner only: no SkyPilot import) is printed first; SkyPilot's credential check and optimizer
come after it. This starts the real CLI in a fresh process, with an empty HOME and SkyPilot
pointed at an unreachable API server (so no server is started and nothing is contacted), and
reads its output until the plan's last line. Prints medians; asserts nothing.

`--fresh-server-port`: the first-run user instead: no endpoint set, SkyPilot's local
port moved to a free one and its runtime dir in the empty HOME, so an SDK call that wants a
server starts one there. Also reports what the run left behind: a listener on that port and the
pids of processes carrying the run's HOME (they are ours: the temporary HOME is this run's alone;
they are stopped after being counted).

    python bench/up_dry_run.py [RECIPE] [--runs 5] [--fresh-server-port] [--repo DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sftcore.contract import Env

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _left_behind(home: str) -> list[int]:
    """Live processes whose environment holds this run's HOME: children that outlived the command."""
    marker = f"HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0") \
                    and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def one_run(recipe: str, fresh_server_port: bool = False, repo: Path = REPO) -> tuple[float, float, int, str, str]:
    with tempfile.TemporaryDirectory(prefix="sftlaunch-bench-") as home:
        env = dict(os.environ, HOME=home, **{Env.HOME: f"{home}/.sftlaunch"},
                   SKYPILOT_API_SERVER_ENDPOINT="http://127.0.0.1:9",  # refused at once: never a real server
                   SKYPILOT_DISABLE_USAGE_COLLECTION="1", PYTHONUNBUFFERED="1")
        port = _free_port()
        if fresh_server_port:
            del env["SKYPILOT_API_SERVER_ENDPOINT"]
            env.update(SKYPILOT_API_SERVER_LOCAL_PORT=str(port), SKY_RUNTIME_DIR=home)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "up", recipe, "--dry-run"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=repo)
        to_plan = None
        out = []
        for line in proc.stdout:
            out.append(line)
            if to_plan is None and line.lstrip().startswith("run id"):
                to_plan = time.perf_counter() - start
        code = proc.wait()
        total = time.perf_counter() - start
        left = ""
        if fresh_server_port:
            with socket.socket() as s:
                listening = s.connect_ex(("127.0.0.1", port)) == 0
            pids = _left_behind(home)
            left = f"listener on {port}: {'yes' if listening else 'no'}; processes left: {pids or 'none'}"
            for sig in (signal.SIGTERM, signal.SIGKILL):  # started by this run (its temporary HOME): stop them
                for pid in _left_behind(home):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                time.sleep(2)
    return (to_plan if to_plan is not None else float("nan")), total, code, "".join(out), left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "llama2-70b-qlora.yaml"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fresh-server-port", action="store_true",
                        help="no API server endpoint set: SkyPilot's local port moved to a free one")
    parser.add_argument("--repo", type=Path, default=REPO, help="run the CLI of this checkout (a before/after)")
    args = parser.parse_args()
    results = [one_run(args.recipe, args.fresh_server_port, args.repo) for _ in range(args.runs)]
    plan_s = statistics.median(r[0] for r in results)
    total_s = statistics.median(r[1] for r in results)
    print(f"sftlaunch up {Path(args.recipe).name} --dry-run (no credentials), median of {args.runs}:")
    print(f"  to the printed plan:  {plan_s:6.2f} s  (goal < 3 s)")
    print(f"  to exit (SkyPilot check included): {total_s:6.2f} s, exit code {results[-1][2]}")
    for r in results:
        if r[4]:
            print(f"  run: {r[1]:6.2f} s; {r[4]}")
    if results[-1][2] != 0 or plan_s != plan_s:
        print("last output:\n" + results[-1][3][-2000:])


if __name__ == "__main__":
    main()
