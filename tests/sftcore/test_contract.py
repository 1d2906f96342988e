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
            continue  # a helper's result (RunLayout.in_bucket(...).logs) is the way to do it
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


# A run's file and folder names (RunLayout's parts). Words that are also run states, step names
# or SkyPilot statuses ("stopped", "STOPPED", "eval", "model", "logs") are left out: they are not
# only file names, so a literal of them proves nothing.
RUN_FILE_NAMES = {contract.METRICS, contract.END_RECORD, contract.RESULTS, contract.FINAL_DIR, contract.RUN_META,
                  contract.CHECKPOINTS_DIR, contract.EVAL_BASE_DIR}


def _keys(tree: ast.AST) -> set[int]:
    """Strings used as mapping keys (`d["checkpoints"]`, `d.get("checkpoints")`): names of
    figures, not of files."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            ids.add(id(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
            ids.add(id(node.args[0]))
    return ids


def _string_parts(tree: ast.AST, skip: set[int]):
    """(line, text) of every string constant and f-string literal part not in `skip`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def _layout_offences(path: Path) -> list[str]:
    """A run file's name spelled by hand: a string whose path segment is one of RUN_FILE_NAMES,
    or a `step-N` folder name."""
    tree = ast.parse(path.read_text())
    found = []
    for line, text in _string_parts(tree, _docstrings(tree) | _keys(tree)):
        segments = text.split("/")
        if any(seg in RUN_FILE_NAMES for seg in segments) or any(
                seg.startswith(contract.STEP_PREFIX) for seg in segments):
            found.append(f"{path.relative_to(ROOT)}:{line}: run file name {text[:60]!r}")
    return found


def test_no_run_file_name_outside_the_contract_module():
    """jobs/ and launcher/ take every run file's name and path from contract.RunLayout."""
    offences = [o for p in SCANNED if not p.is_relative_to(ROOT / "bench") for o in _layout_offences(p)]
    assert not offences, "use sftcore.contract.RunLayout instead:\n" + "\n".join(offences)


def _offending_lines(scan, path: Path, root: Path) -> list[int]:
    """The line numbers `scan` reports for a file outside the repo (ROOT pointed at its folder)."""
    global ROOT
    saved, ROOT = ROOT, root
    try:
        return sorted(int(f.split(":")[1]) for f in scan(path))
    finally:
        ROOT = saved


def test_the_layout_scan_finds_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""final/ and results.json in a docstring."""\nfrom pathlib import Path\n'
                   'a = Path("x") / "final"\nb = f"{a}/eval/results.json"\nc = f"{a}/step-{1}"\n'
                   'd = "checkpoints"\ne = "final answer"\nf = {}.get("final")\n')
    assert _offending_lines(_layout_offences, bad, tmp_path) == [3, 4, 5, 6]


def test_no_contract_literal_outside_the_contract_module():
    offences = [o for p in SCANNED for o in _offences(p)]
    assert not offences, "use sftcore.contract instead:\n" + "\n".join(offences)


def test_the_scan_finds_what_it_forbids(tmp_path):
    """The scanner is not vacuous: each kind of offence it exists for is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""SFTLAUNCH_OK in a docstring."""\nimport os\nx = os.environ.get("SFTLAUNCH_RECIPE")\n'
                   'def f(bucket, run_id):\n    return f"{bucket.rstrip(\'/\')}/{run_id}/logs"\n'
                   'y = f"/data/sftlaunch/{run_id}"\nz = dict(SFTLAUNCH_HOME="h")\n')
    assert _offending_lines(_offences, bad, tmp_path) == [3, 5, 6, 7]


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
    assert f'--out "$OUT/{contract.EVAL_DIR}"' in ENTRYPOINT
    # The bucket and the budget are the recipe's: the entrypoint hands the recipe to `jobs sync`.
    assert Env.BUCKET not in ENTRYPOINT and "MAX_USD" not in ENTRYPOINT
    assert 'SYNC=(push --out "$OUT" --recipe "$SFTLAUNCH_RECIPE"' in ENTRYPOINT
    # The image runs the entrypoint where the rendered task calls it.
    assert f'ENTRYPOINT ["bash", "{contract.ENTRYPOINT}"]' in (ROOT / "docker" / "Dockerfile").read_text()


def test_entrypoint_stop_line_matches_what_the_launcher_looks_for():
    from sftcore.contract import STOPPED_LINE

    assert STOPPED_LINE == contract.STOPPED_LINE
    line = re.search(r'echo "(sftlaunch: run stopped[^"]*)"', ENTRYPOINT).group(1)
    assert line.startswith(STOPPED_LINE)


def test_env_names_are_unique_and_prefixed():
    values = [v for k, v in vars(Env).items() if k.isupper()]
    assert len(values) == len(set(values)) and all(v == f"SFTLAUNCH_{k}" for k, v in vars(Env).items() if k.isupper())


@pytest.mark.parametrize(("attr", "want"), [
    ("root", "gs://b/x/sftl-a-0001"),
    ("checkpoints", "gs://b/x/sftl-a-0001/checkpoints"),
    ("logs", "gs://b/x/sftl-a-0001/logs"),
    ("control", "gs://b/x/sftl-a-0001/control"),
    ("model", "gs://b/x/sftl-a-0001/model"),
    ("metrics", "gs://b/x/sftl-a-0001/metrics.jsonl"),
    ("end_record", "gs://b/x/sftl-a-0001/exit.json"),
])
def test_bucket_layout(attr, want):
    """docs/architecture.md's `<bucket>/<run id>/...`; a trailing slash on the bucket changes nothing."""
    layout = contract.RunLayout.in_bucket
    assert getattr(layout("gs://b/x", "sftl-a-0001"), attr) == getattr(layout("gs://b/x/", "sftl-a-0001"), attr) == want
    assert layout("gs://b/x", "sftl-a-0001").eval_results() == "gs://b/x/sftl-a-0001/eval/results.json"
    assert layout("gs://b/x", "sftl-a-0001").eval_results(base=True) == "gs://b/x/sftl-a-0001/eval-base/results.json"


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
    assert masking.JOB_SECRETS is render.SECRET_NAMES
    assert runid.PREFIX == recipe.RUN_ID_PREFIX == contract.RUN_ID_PREFIX
    assert runid.RUN_ID_RE.match(runid.new_run_id("demo")) and not runid.RUN_ID_RE.match("sftlx-demo-abcd")


def test_run_layout_of_a_run_dir_gives_paths():
    from pathlib import Path

    run = contract.RunLayout(Path("/runs/sftl-a-0001"))
    assert run.metrics == Path("/runs/sftl-a-0001/metrics.jsonl")
    assert run.end_record.name == "exit.json" and run.stopped_marker.name == "STOPPED"
    assert run.step(12) == Path("/runs/sftl-a-0001/checkpoints/step-12")
    assert run.final_meta == Path("/runs/sftl-a-0001/final/sftlaunch.json")
    assert run.eval_results() == Path("/runs/sftl-a-0001/eval/results.json")
    assert run.eval_results(base=True) == Path("/runs/sftl-a-0001/eval-base/results.json")
    assert run.publish.name == "publish" and run.recipe.name == "recipe.yaml" and run.logs.name == "logs"


def test_run_layout_in_a_bucket_gives_uris():
    b = contract.RunLayout.in_bucket("gs://b/x/", "sftl-a-0001")
    assert b == contract.RunLayout.in_bucket("gs://b/x", "sftl-a-0001") and b.root == "gs://b/x/sftl-a-0001"
    assert b.checkpoints == "gs://b/x/sftl-a-0001/checkpoints"
    assert b.step(3) == "gs://b/x/sftl-a-0001/checkpoints/step-3"
    assert b.model == "gs://b/x/sftl-a-0001/model" and b.results == "gs://b/x/sftl-a-0001/results.json"
    assert b.stop_flag == "gs://b/x/sftl-a-0001/control/stop"
    assert b.stopped_flag == "gs://b/x/sftl-a-0001/control/stopped"
    with pytest.raises(AttributeError):
        b.root = "gs://elsewhere"  # frozen


@pytest.mark.parametrize(("name", "step"), [("step-12", 12), ("step-0", 0), ("step-", None), ("step-1a", None),
                                            ("checkpoint-3", None), ("step-\u0663", None)])
def test_step_names_round_trip(name, step):
    assert contract.step_of(name) == step
    if step is not None:
        assert contract.step_dir(step) == name


def test_job_env_reads_the_launchers_variables_once():
    job = contract.JobEnv.from_env({Env.RUN_ID: "sftl-a-0001", Env.USD_PER_HOUR: " 2.5 ", Env.GRADIENT_CHECKPOINTING: "0",
                                    Env.RATES: "[]", Env.PLAN: "{}", Env.HARDWARE: "gcp 1×A100", Env.OUT: ""})
    assert (job.run_id, job.usd_per_hour, job.gradient_checkpointing, job.out) == ("sftl-a-0001", 2.5, False, None)
    assert (job.rates, job.plan, job.hardware) == ("[]", "{}", "gcp 1×A100")
    assert contract.JobEnv.from_env({}) == contract.JobEnv()
    ev = contract.JobEnv.from_env({Env.EVAL_WITH_BASE: "1", Env.EVAL_PARALLEL: "model", Env.EVAL_BACKEND: "hf"})
    assert (ev.eval_with_base, ev.eval_parallel, ev.eval_backend) == (True, "model", "hf")
    # What the recipe owns has no field: the job reads output.bucket and resources.max_usd from it.
    fields = set(contract.JobEnv.__dataclass_fields__)
    assert not fields & {"bucket", "max_usd"} and not hasattr(Env, "MAX_USD")


@pytest.mark.parametrize(("name", "value", "want"), [
    (Env.USD_PER_HOUR, "cheap", "a price in $/hour"), (Env.USD_PER_HOUR, "-1", "a price in $/hour"),
    (Env.USD_PER_HOUR, "nan", "a price in $/hour"), (Env.GRADIENT_CHECKPOINTING, "yes", "1 (on) or 0 (off)"),
    (Env.EVAL_WITH_BASE, "true", "1 (on) or 0 (off)"),
])
def test_a_bad_job_env_value_is_one_line_naming_the_variable(name, value, want):
    from sftcore.errors import UserError

    with pytest.raises(UserError) as err:
        contract.JobEnv.from_env({name: value})
    assert str(err.value) == f"{name}={value!r}: expected {want}" + (", e.g. 2.5" if name == Env.USD_PER_HOUR else ", or unset")


def test_a_bad_job_env_value_exits_2_without_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, Env.USD_PER_HOUR: "cheap"}
    proc = subprocess.run([sys.executable, "-m", "jobs", "publish", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == f"error: {Env.USD_PER_HOUR}='cheap': expected a price in $/hour, e.g. 2.5\n"


def _env_reads(source: str) -> list[int]:
    """Lines that read an SFTLAUNCH_ variable by its Env name straight from an environment:
    `os.environ.get(Env.X)`, `env.get(Env.X)`, `os.getenv(Env.X)`, `os.environ[Env.X]` (loads)."""
    def is_env_name(node) -> bool:
        return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Env"

    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv")
                and node.args and is_env_name(node.args[0])):
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_env_name(node.slice):
            lines.append(node.lineno)
    return lines


def test_the_job_reads_the_launchers_variables_only_through_jobenv():
    """Every SFTLAUNCH_ variable a job reads is parsed and checked once, in contract.JobEnv."""
    found = [f"{p.relative_to(ROOT)}:{line}" for p in sorted((ROOT / "jobs").rglob("*.py"))
             for line in _env_reads(p.read_text())]
    assert not found, "read these through sftcore.contract.JobEnv:\n" + "\n".join(found)
    assert _env_reads("import os\nx = os.environ.get(Env.OUT)\ny = env[Env.RUN_ID]\nz = os.getenv(Env.CACHE)\n"
                      "env[Env.OUT] = 'set'\n") == [2, 3, 4]


@pytest.mark.parametrize(("name", "value"), [("SFTLAUNCH_MAX_STEPS", "0"), ("SFTLAUNCH_MAX_STEPS", "ten"),
                                             ("SFTLAUNCH_MASTER_PORT", "-1"), ("SFTLAUNCH_RENDEZVOUS_TIMEOUT", "soon"),
                                             ("SFTLAUNCH_LARGE_UPLOAD_BYTES", "1e3x")])
def test_a_malformed_knob_is_one_line_naming_it(name, value):
    from sftcore.contract import JobEnv
    from sftcore.errors import UserError

    with pytest.raises(UserError, match=rf"^{name}={value!r}: expected a (positive number|port number)"):
        JobEnv.from_env({name: value})
    assert JobEnv.from_env({"SFTLAUNCH_MAX_STEPS": "12", "SFTLAUNCH_WANDB_TIMEOUT_S": "2.5"}).max_steps == 12
