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
    ["serve", "--help"],
    ["serve", "meta-llama/Llama-2-7b-hf", "--dry-run"],
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


CANARY = "mysecretvalue"


def _run(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _tiny_copy(tmp_path: Path, name: str = "tiny.yaml", **replace: str) -> Path:
    text = (REPO / "recipes" / "tiny-local.yaml").read_text()
    text = text.replace("path: data/", f"path: {REPO}/recipes/data/").replace("tasks_dir: ../jobs/tasks", f"tasks_dir: {REPO}/jobs/tasks")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path / name
    p.write_text(text)
    return p


def test_validate_directory_forms(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run("validate", str(empty))
    assert proc.returncode == 2, proc.stderr
    assert f"{empty}: no recipe files (*.yaml, *.yml); pass a recipe file or a directory of recipes" in proc.stderr

    named = tmp_path / "dir.yaml"
    named.mkdir()
    proc = _run("validate", str(named))
    assert proc.returncode == 2 and f"{named}: no recipe files" in proc.stderr, proc.stderr

    yml = tmp_path / "yml"
    yml.mkdir()
    _tiny_copy(yml, "good.yml")
    (yml / "broken.yml").write_text("name: x\nmodel: {id: a/b\n")
    proc = _run("validate", str(yml))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{yml / 'good.yml'}: ok" in proc.stdout
    assert f"{yml / 'broken.yml'}:" in proc.stderr and "YAML syntax error" in proc.stderr

    (yml / "broken.yml").unlink()
    proc = _run("validate", str(yml))
    assert proc.returncode == 0, proc.stderr


def test_validate_masks_secrets_in_recipe_errors(tmp_path):
    bad = _tiny_copy(tmp_path, **{"learning_rate: 3.0e-3": f"learning_rate: {CANARY}"})
    proc = _run("validate", str(bad), env={"HF_TOKEN": CANARY})
    assert proc.returncode == 2
    assert "train.learning_rate" in proc.stderr and "****" in proc.stderr
    assert CANARY not in proc.stdout + proc.stderr


def test_bad_flag_value_is_masked():
    proc = _run("render", "recipes/tiny-local.yaml", "--cloud", CANARY, env={"WANDB_API_KEY": CANARY})
    assert proc.returncode == 2 and "--cloud" in proc.stderr and "Traceback" not in proc.stderr
    assert CANARY not in proc.stdout + proc.stderr and "****" in proc.stderr


FAKE_COMMAND = """
import os, sys, types
import click
from launcher import cli as cli_mod

fake = types.ModuleType("fake_boom")

@click.command()
def boom():
    # What SkyPilot's ux_utils.print_exception_no_traceback leaves behind when an error escapes it.
    sys.tracebacklimit = 0
    raise RuntimeError("boom " + os.environ.get("HF_TOKEN", ""))

fake.boom = boom
sys.modules["fake_boom"] = fake
cli_mod.COMMANDS["boom"] = ("fake_boom:boom", "Fail on purpose.")
cli_mod.cli.main(args=sys.argv[1:])
"""


def test_internal_error_is_one_masked_line():
    proc = subprocess.run([sys.executable, "-c", FAKE_COMMAND, "boom"], capture_output=True, text=True, cwd=REPO,
                          env={**__import__("os").environ, "HF_TOKEN": CANARY})
    assert proc.returncode == 1
    assert proc.stderr.strip() == "internal error: RuntimeError: boom **** (rerun with --debug for a traceback)"


def test_debug_shows_traceback_even_after_tracebacklimit_was_zeroed():
    proc = subprocess.run([sys.executable, "-c", FAKE_COMMAND, "--debug", "boom"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert ", in boom\n" in proc.stderr  # the frame that raised, not just the last line
