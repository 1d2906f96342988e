"""The shared --gpu option refuses malformed or unknown GPUs (exit 2, no traceback) in every
command that takes it, and the same check applies to a recipe's resources.gpu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes/mistral-7b-qlora.yaml")
COMMANDS = [["plan", RECIPE], ["render", RECIPE], ["up", RECIPE, "--dry-run"]]


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.parametrize("gpu, needle", [
    ("H100:x", "the count must be a whole number"),
    ("H100:0", "the count must be 1 or more"),
    (":", "expected NAME[:COUNT]"),
    ("", "expected NAME[:COUNT]"),
    ("H100:1:2", "the count must be a whole number"),
    ("NOPE:1", "unknown GPU 'NOPE'; known GPUs: A10, A100, A100-80GB"),
    ("H10:1", "did you mean H100?"),
    ("A100-80G:8", "did you mean A100-80GB?"),
])
def test_bad_gpu_flag_is_exit_2_with_the_fix(command, gpu, needle):
    res = _run(*command, "--gpu", gpu)
    assert res.exit_code == 2, res.output
    assert "--gpu" in res.output and needle in res.output, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output


def test_gpu_flag_is_canonicalised():
    res = _run("plan", RECIPE, "--gpu", "h200-sxm:3", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["chosen"]["accelerators"] == "H200-SXM:3"
    res = _run("plan", RECIPE, "--gpu", "auto", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["chosen"] is not None


@pytest.mark.parametrize("command", ["plan", "render"])
def test_unknown_recipe_gpu_names_the_field_and_line(command, tmp_path):
    text = Path(RECIPE).read_text().replace("gpu: auto", 'gpu: "H1OO:1"')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "H1OO" in ln)
    res = _run(command, str(recipe))
    assert res.exit_code == 2, res.output
    assert f"r.yaml:{line}: resources.gpu: unknown GPU 'H1OO'" in res.output and "known GPUs" in res.output
    assert "Traceback" not in res.output


def test_gpu_flag_through_the_console_entry_point(capsys):
    # The same path the `sftlaunch` script takes (launcher.cli.run maps errors to exit codes).
    from launcher.cli import cli as group
    from launcher.cli import run

    assert run(group, ["render", RECIPE, "--gpu", "NOPE:1"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'NOPE'" in err and "Traceback" not in err
