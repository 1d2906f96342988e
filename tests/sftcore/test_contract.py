"""The launcher/container contract is spelled in sftcore/contract.py only.

Scope: launcher/, jobs/ and bench/ must take every `SFTLAUNCH_*` name and every `<bucket>/<run id>`
path from the contract module (docstrings may mention them: they document, they do not decide).
tests/ is deliberately outside the scan: the tests spell user-visible names (SFTLAUNCH_HOME,
SFTLAUNCH_BUCKET, ...) literally on purpose, so a rename in the contract that would break a
user's shell or a running job fails a test instead of silently changing both sides.
docker/entrypoint.sh cannot import Python; it is checked against the module here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from sftcore import contract
from sftcore.contract import Env

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [p for d in ("launcher", "jobs", "bench") for p in sorted((ROOT / d).rglob("*.py"))
           if p != ROOT / "launcher" / "contract.py"]
ENTRYPOINT = (ROOT / "docker" / "entrypoint.sh").read_text()


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _is_layout(node: ast.JoinedStr, source: str) -> bool:
    """An f-string that builds `<bucket>/<run id>/...` or `<out root>/<run id>` by hand."""
    parts = node.values
    for i, part in enumerate(parts):
        if not isinstance(part, ast.FormattedValue):
            continue
        expr = ast.get_source_segment(source, part.value) or ""
        if not re.search(r"bucket|run_id|OUT_ROOT|CONTAINER_OUT", expr) or (
                isinstance(part.value, ast.Call) and not expr.endswith(".rstrip('/')")):
            continue  # a helper's result (contract.run_prefix(...)) is the way to do it
        before = parts[i - 1] if i else None
        after = parts[i + 1] if i + 1 < len(parts) else None
        if (isinstance(after, ast.Constant) and str(after.value).startswith("/")) or (
                isinstance(before, ast.Constant) and str(before.value).endswith("/")
                and isinstance(part.value, ast.Name | ast.Subscript) and "run_id" in expr):
            return True
    return False


def _offences(path: Path) -> list[str]:
    source = path.read_text()
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if "SFTLAUNCH_" in node.value:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: SFTLAUNCH_ literal {node.value[:60]!r}")
        elif isinstance(node, ast.JoinedStr) and _is_layout(node, source):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: layout f-string "
                         f"{ast.get_source_segment(source, node)}")
        elif isinstance(node, ast.keyword) and node.arg and node.arg.startswith("SFTLAUNCH_"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: SFTLAUNCH_ keyword {node.arg}")
    return found


def test_no_contract_literal_outside_the_contract_module():
    offences = [o for p in SCANNED for o in _offences(p)]
    assert not offences, "use sftcore.contract instead:\n" + "\n".join(offences)


def test_the_scan_finds_what_it_forbids(tmp_path):
    """The scanner is not vacuous: each kind of offence it exists for is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""SFTLAUNCH_OK in a docstring."""\nimport os\nx = os.environ.get("SFTLAUNCH_RECIPE")\n'
                   'def f(bucket, run_id):\n    return f"{bucket.rstrip(\'/\')}/{run_id}/logs"\n'
                   'y = f"/data/sftlaunch/{run_id}"\nz = dict(SFTLAUNCH_HOME="h")\n')
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = _offences(bad)
    finally:
        ROOT = saved
    assert sorted(int(f.split(":")[1]) for f in found) == [3, 5, 6, 7], found


def test_entrypoint_names_are_the_contract():
    """Every SFTLAUNCH_ name entrypoint.sh reads is one the contract defines, and the script's
    steps, files, default output root and stop line are the module's."""
    used = set(re.findall(r"SFTLAUNCH_[A-Z0-9_]+", ENTRYPOINT))
    assert used and used <= Env.names(), sorted(used - Env.names())
    assert "train|eval|publish|all)" in ENTRYPOINT
    assert "|".join(contract.STEPS) + "|all)" in ENTRYPOINT
    assert f'${{{Env.STEPS}:-{",".join(contract.STEPS)}}}' in ENTRYPOINT
    assert f'OUT="{contract.CONTAINER_OUT_ROOT}/$RUN_ID"' in ENTRYPOINT
    assert f'"$OUT/{contract.STOPPED_MARKER}"' in ENTRYPOINT
    assert f'LOGS="$OUT/{contract.LOGS_DIR}"' in ENTRYPOINT
    assert f'echo "{contract.STOPPED_LINE} ' in ENTRYPOINT
    assert f'"$PY" -m jobs eval --model "$OUT/{contract.FINAL_DIR}"' in ENTRYPOINT
    # The image runs the entrypoint where the rendered task calls it.
    assert f'ENTRYPOINT ["bash", "{contract.ENTRYPOINT}"]' in (ROOT / "docker" / "Dockerfile").read_text()


def test_entrypoint_stop_line_matches_what_the_launcher_looks_for():
    from launcher.lifecycle import STOPPED_LINE

    assert STOPPED_LINE == contract.STOPPED_LINE
    line = re.search(r'echo "(sftlaunch: run stopped[^"]*)"', ENTRYPOINT).group(1)
    assert line.startswith(STOPPED_LINE)


def test_env_names_are_unique_and_prefixed():
    values = [v for k, v in vars(Env).items() if k.isupper()]
    assert len(values) == len(set(values)) and all(v == f"SFTLAUNCH_{k}" for k, v in vars(Env).items() if k.isupper())


@pytest.mark.parametrize(("fn", "want"), [
    (contract.run_prefix, "gs://b/x/sftl-a-0001"),
    (contract.checkpoints_prefix, "gs://b/x/sftl-a-0001/checkpoints"),
    (contract.logs_prefix, "gs://b/x/sftl-a-0001/logs"),
    (contract.control_prefix, "gs://b/x/sftl-a-0001/control"),
    (contract.model_prefix, "gs://b/x/sftl-a-0001/model"),
    (contract.results_uri, "gs://b/x/sftl-a-0001/eval/results.json"),
])
def test_bucket_layout(fn, want):
    """docs/architecture.md's `<bucket>/<run id>/...`; a trailing slash on the bucket changes nothing."""
    assert fn("gs://b/x", "sftl-a-0001") == fn("gs://b/x/", "sftl-a-0001") == want


def test_each_name_list_is_the_one_its_implementation_serves():
    """The recipe's vocabulary (contract) and what the job implements name the same things."""
    from jobs.evaluate import PRESETS
    from jobs.templates import TEMPLATES
    from launcher import render, runid
    from launcher.commands import eval as eval_command
    from sftcore import masking, recipe
    from sftcore.formats import FORMATTERS

    assert tuple(FORMATTERS) == recipe.FORMATS
    assert tuple(PRESETS) == contract.EVAL_PRESETS == recipe.EVAL_PRESETS == eval_command.PRESETS
    assert TEMPLATES is contract.TEMPLATES is recipe.TEMPLATES
    assert masking.JOB_SECRETS is render.SECRET_NAMES is contract.JOB_SECRETS
    assert runid.PREFIX == recipe.RUN_ID_PREFIX == contract.RUN_ID_PREFIX
    assert runid.RUN_ID_RE.match(runid.new_run_id("demo")) and not runid.RUN_ID_RE.match("sftlx-demo-abcd")
