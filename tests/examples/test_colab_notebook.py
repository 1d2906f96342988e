"""examples/colab_qlora.ipynb: valid for nbformat, its recipe is the shipped T4 recipe, and its
shell commands (`!` lines) run, verbatim, against the tiny recipe on CPU.

Exactly two things differ from Colab, both asserted below: the one `pip install` line is not run
(the package is already installed here, and there is no network), and the T4 recipe's file name
is replaced by recipes/tiny-local.yaml (a 7B model cannot train on 2 CPU cores)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sftcore.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "examples" / "colab_qlora.ipynb"
T4_RECIPE = REPO / "recipes" / "colab-t4-mistral-7b-qlora.yaml"
TINY_RECIPE = REPO / "recipes" / "tiny-local.yaml"
T4_NAME = T4_RECIPE.name


def notebook():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def shell_lines() -> list[str]:
    lines = []
    for cell in notebook().cells:
        if cell.cell_type != "code" or cell.source.startswith("%%"):
            continue
        lines += [line.strip()[1:] for line in cell.source.splitlines() if line.strip().startswith("!")]
    return lines


def is_install(line: str) -> bool:
    return bool(re.match(r"^(pip|python -m pip) install\b", line))


def test_notebook_is_valid_and_installs_sftlaunch_once():
    nb = notebook()
    assert nb.metadata["colab"]["gpuType"] == "T4"
    installs = [line for line in shell_lines() if "pip" in line]
    assert len(installs) == 1 and is_install(installs[0]), installs
    assert re.search(r'"sftlaunch\[train,eval\] @ git\+https://', installs[0])


def test_notebook_writes_exactly_the_shipped_t4_recipe():
    cells = [c.source for c in notebook().cells if c.cell_type == "code" and c.source.startswith("%%writefile")]
    assert len(cells) == 1
    header, _, body = cells[0].partition("\n")
    assert header == f"%%writefile {T4_NAME}"
    assert body + "\n" == T4_RECIPE.read_text(), "copy recipes/colab-t4-mistral-7b-qlora.yaml into the notebook"


def test_t4_recipe_fits_a_t4():
    r = load_recipe(T4_RECIPE)
    assert (r.method, r.model.id) == ("qlora", "mistralai/Mistral-7B-v0.1")
    assert r.train.precision == "fp16" and r.quantization.compute_dtype == "float16"  # T4: no bf16
    assert r.data.seq_len == 512 and r.data.sources[0].path == "garage-bAInd/Open-Platypus"
    assert r.data.sources[0].format == "platypus" and r.data.sources[0].max_samples
    assert r.resources.clouds == ["local"]


def test_the_commands_are_validate_up_eval_generate():
    verbs = [line.split()[1] for line in shell_lines() if line.startswith("sftlaunch ")]
    assert verbs == ["validate", "up", "status", "eval", "generate"], verbs
    up = next(line for line in shell_lines() if line.startswith("sftlaunch up"))
    assert "--local" in up.split() and T4_NAME in up.split()
    assert "--limit" in next(line for line in shell_lines() if line.startswith("sftlaunch eval")).split()


@pytest.mark.slow
def test_shell_commands_run_against_the_tiny_recipe(tmp_path, tiny_local_run):
    """The notebook's commands, in order, on CPU. Needs `up --local`, `eval` and `generate`.
    `sftlaunch up --local --yes <recipe>` is the very command the session's shared run ran
    (tests/tiny_run.py); its result stands in for running it again, and the later commands run
    in that run's environment."""
    assert TINY_RECIPE.exists(), "recipes/tiny-local.yaml (data helper) is missing"
    lines = shell_lines()
    commands = []
    for line in lines:
        if is_install(line):
            continue  # substitution 1 of 2: already installed here
        command = line.replace(T4_NAME, str(TINY_RECIPE))  # substitution 2 of 2
        assert command.replace(str(TINY_RECIPE), T4_NAME) == line
        commands.append(command)
    assert len(commands) == len(lines) - 1

    env = dict(os.environ)  # conftest already isolates HOME, SFTLAUNCH_HOME and the caches
    env.update({k: tiny_local_run.env[k] for k in ("HOME", "SFTLAUNCH_HOME")})  # where the shared run lives
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    outputs = {}
    for command in commands:
        if command.split() == list(tiny_local_run.command):
            rc, out = tiny_local_run.returncode, tiny_local_run.output  # run once per session
        else:
            proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=900)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        assert rc == 0, f"`{command}` exited {rc}:\n{out[-3000:]}"
        assert "Traceback" not in out, f"`{command}`:\n{out[-3000:]}"
        outputs[command.split()[1]] = out
    assert re.search(r"sftl-[a-z0-9-]+-[0-9a-f]{4}", outputs["up"])
    assert outputs["eval"].strip() and outputs["generate"].strip()


def test_substituted_name_only_appears_where_the_recipe_is_named():
    # Guards the substitution above: the file name appears only as the recipe argument.
    for line in shell_lines():
        if T4_NAME in line:
            assert line.split()[-1] == T4_NAME, line
