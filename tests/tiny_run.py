"""One trained tiny model per test session: `sftlaunch up --local --yes recipes/tiny-local.yaml`,
run once and shared by every test that needs a real run (tests/conftest.py's `tiny_local_run`).

Why once: the run trains 120 steps, evaluates and publishes (about a minute on 2 idle cores);
three tests used to train the same recipe each. They only read the result, so they share it.
The run is started as a user would start it, from a shell that has SFTLAUNCH_BUCKET (up's
default for cloud runs) and HF_TOKEN set: tests check that neither leaks into what the run
wrote. Under pytest-xdist each worker is its own session; a file lock in the shared base temp
dir makes the first worker train and the others reuse its run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "recipes" / "tiny-local.yaml"
CANARY = "hf_CANARYlocalRUN0123456789abcdefZ"
COMMAND = ["sftlaunch", "up", "--local", "--yes", str(TINY_RECIPE)]


@dataclass(frozen=True)
class TinyRun:
    """A finished `up --local` run of recipes/tiny-local.yaml and the environment it ran in."""

    env: dict  # HOME, SFTLAUNCH_HOME, caches: point a test's environment here to see the run
    output: str  # stdout and stderr of the command, interleaved as printed
    returncode: int
    run_id: str
    run_dir: Path
    shell_bucket: Path  # SFTLAUNCH_BUCKET in the launching shell: nothing may appear there
    command: tuple[str, ...] = tuple(COMMAND)


def run_env(root: Path, base: dict) -> dict:
    """The isolated test environment (`base`, from tests/conftest.py) plus what a user's shell
    might hold: a default bucket for cloud runs and a Hub token."""
    Path(base["HOME"]).mkdir(parents=True, exist_ok=True)
    env = dict(base)
    env.update({"SFTLAUNCH_LOCAL_DOCKER": "0", "HF_TOKEN": CANARY, "SFTLAUNCH_BUCKET": str(root / "shell-default-bucket"),
                "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"})
    return env


def start(root: Path, base_env: dict) -> TinyRun:
    """Run the command (or reuse the result another xdist worker recorded in `root`)."""
    from filelock import FileLock

    record = root / "tiny-run.json"
    with FileLock(str(root / "tiny-run.lock")):
        if not record.exists():
            env = run_env(root, base_env)
            proc = subprocess.run(COMMAND, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=1800)
            lines = proc.stdout.strip().splitlines()
            record.write_text(json.dumps({"env": env, "output": proc.stdout, "returncode": proc.returncode,
                                          "run_id": lines[-1] if lines else ""}))
    data = json.loads(record.read_text())
    run_dir = Path(data["env"]["SFTLAUNCH_HOME"]) / "runs" / data["run_id"]
    return TinyRun(env=data["env"], output=data["output"], returncode=data["returncode"], run_id=data["run_id"],
                   run_dir=run_dir, shell_bucket=root / "shell-default-bucket")
