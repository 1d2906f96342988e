"""docker/entrypoint.sh steps fail on their first failing command: a step function runs on the
left of run_step's masking pipe, where bash ignores `set -e`, so a failed `jobs.dist info` must
not go on to train. The job Python is a stub that records each call (no torch needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.launcher.fake_backend import STUB_RECIPE_YAML

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "docker" / "entrypoint.sh"

STUB = """#!/usr/bin/env bash
# `jobs sync` (masking, the exit record) is the real module; every other job call is recorded and
# exits with STUB_EXIT_<module>_<command> (0 when unset), e.g. STUB_EXIT_jobs_dist_info=3.
if [ "$1 $2 $3" = "-m jobs sync" ]; then exec {python} "$@"; fi
echo "$2 $3" >> "$SFTLAUNCH_OUT/calls"
var="STUB_EXIT_${{2//./_}}_$3"
exit "${{!var:-0}}"
"""


def _entry(tmp_path: Path, step: str, **env) -> tuple[int, list[str], dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    stub = tmp_path / "stub-python"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(STUB_RECIPE_YAML)
    out = tmp_path / "out"
    full = {**os.environ, "SFTLAUNCH_PYTHON": str(stub), "SFTLAUNCH_RECIPE": str(recipe),
            "SFTLAUNCH_OUT": str(out), "SFTLAUNCH_RUN_ID": "sftl-r-0000", **env}
    proc = subprocess.run(["bash", str(ENTRY), step], env=full, capture_output=True, text=True, timeout=120)
    calls = (out / "calls").read_text().splitlines() if (out / "calls").exists() else []
    return proc.returncode, calls, json.loads((out / "exit.json").read_text())


def test_a_failing_start_check_stops_the_train_step_and_the_run(tmp_path):
    rc, calls, end = _entry(tmp_path, "all", STUB_EXIT_jobs_dist_info="3")
    assert rc == 3 and calls == ["jobs.dist info"]  # never trained, nothing after it
    assert end["exit_code"] == 3
    rc, calls, _ = _entry(tmp_path / "train", "train", STUB_EXIT_jobs_dist_info="3")
    assert rc == 3 and calls == ["jobs.dist info"]


def test_each_step_fails_with_its_command_and_later_steps_do_not_run(tmp_path):
    rc, calls, end = _entry(tmp_path, "all")
    assert rc == 0 and calls == ["jobs.dist info", "jobs.dist train", "jobs eval", "jobs publish"]
    assert end["exit_code"] == 0
    rc, calls, end = _entry(tmp_path / "t", "all", STUB_EXIT_jobs_dist_train="1")
    assert rc == 1 and calls == ["jobs.dist info", "jobs.dist train"] and end["exit_code"] == 1
    rc, calls, end = _entry(tmp_path / "e", "all", STUB_EXIT_jobs_eval="5")
    assert rc == 5 and calls[-1] == "jobs eval" and end["exit_code"] == 5
