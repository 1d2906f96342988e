"""The three packages' layering (pyproject's [tool.importlinter], docs/architecture.md), checked by
import-linter itself: sftcore imports neither half, jobs never import the launcher, the launcher
imports job code only in the two commands that run it on this machine, no package has an import
circle. Each rule is also shown to fail on a planted violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sftcore", "launcher", "jobs")


def _lint(root: Path) -> subprocess.CompletedProcess:
    cli = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", cli, "--no-cache"], cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


def test_the_layering_holds():
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout, done.stdout


def _lint_with(tmp_path: Path, appended: dict[str, str]) -> subprocess.CompletedProcess:
    """The same config on a copy of the packages with `appended` code at the end of some modules."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for module, code in appended.items():
        with open(tmp_path / module, "a") as f:
            f.write(code)
    return _lint(tmp_path)


def test_a_core_module_importing_the_launcher_breaks_the_build(tmp_path):
    """The check can fail: the same config on a copy where sftcore reaches into launcher."""
    done = _lint_with(tmp_path, {
        "sftcore/contract.py": "\n\ndef _leak():\n    from launcher import runs  # noqa: F401\n",
        "jobs/train.py": "\n\ndef _leak():\n    import launcher.render  # noqa: F401\n",
    })
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sftcore.contract -> launcher.runs" in done.stdout and "jobs.train -> launcher.render" in done.stdout
    assert "2 kept, 2 broken" in done.stdout, done.stdout


def test_an_import_circle_breaks_the_build(tmp_path):
    """run_outputs is read by lifecycle; a lazy import back from it is a circle, and is refused."""
    done = _lint_with(tmp_path, {
        "launcher/run_outputs.py": "\n\ndef _back():\n    from launcher import lifecycle  # noqa: F401\n",
    })
    assert done.returncode == 1, done.stdout + done.stderr
    assert "No cycles are allowed in launcher." in done.stdout and "3 kept, 1 broken" in done.stdout, done.stdout


def test_modules_and_functions_stay_readable_in_one_sitting():
    """The habit the guide sets (a module under ~450 lines, a function under ~80), held for the
    three packages so a split by line budget is a choice made in review, not drift."""
    import ast

    too_long = []
    for name in PACKAGES:
        for path in sorted((REPO / name).rglob("*.py")):
            source = path.read_text()
            if len(source.splitlines()) > 450:
                too_long.append(f"{path.relative_to(REPO)}: {len(source.splitlines())} lines")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: "
                                    f"{node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "split by concept:\n" + "\n".join(too_long)
