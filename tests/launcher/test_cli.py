"""CLI basics: help, lazy imports, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("sky", "torch", "transformers")

PROBE = f"""
import json, sys
from launcher.cli import cli
code = cli.main(args=sys.argv[1:], standalone_mode=False)
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _probe(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    ["--help"],
    ["validate", "recipes/llama2-70b-qlora.yaml"],
    ["validate", "recipes/does-not-exist.yaml"],
    ["render", "recipes/llama2-70b-qlora.yaml", "--cloud", "gcp", "--gpu", "H100:1", "--run-id", "sftl-x-0000"],
])
def test_light_commands_import_no_heavy_modules(args):
    result = _probe(*args)
    assert result["heavy"] == [], f"{args} imported {result['heavy']}"


def test_help_lists_every_contract_command():
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for verb in ("validate", "plan", "render", "up", "status", "logs", "eval", "teardown", "image"):
        assert f"  {verb} " in proc.stdout


def test_validate_all_shipped_recipes_exit_0():
    recipes = sorted(str(p) for p in (REPO / "recipes").glob("*.yaml"))
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "validate", *recipes], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_unknown_flag_is_exit_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "validate", "--nope", "x.yaml"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
