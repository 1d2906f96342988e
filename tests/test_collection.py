"""Collecting the suite imports no heavy package, and the `requires` marker that keeps it so skips
exactly as pytest.importorskip does, before any fixture of the skipped test is set up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.collect_probe import OUT_ENV

REPO = Path(__file__).resolve().parents[1]
MISSING = "sftlaunch_no_such_module"


def _pytest(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=300)


def test_collecting_the_suite_imports_no_heavy_package(tmp_path):
    out = tmp_path / "probe.json"
    proc = _pytest(["--collect-only", "-q", "-n", "0", "-p", "tests.collect_probe", "tests"], REPO,
                   **{OUT_ENV: str(out)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    probe = json.loads(out.read_text())
    assert probe["heavy"] == [], f"imported while collecting: {probe['heavy']}"
    assert probe["items"] > 1000  # the whole suite was collected, not an early error


def test_requires_skips_with_importorskips_reason_and_sets_up_no_fixture(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "import pytest\n"
        "from tests.conftest import pytest_configure, pytest_runtest_setup  # noqa: F401\n\n\n"
        "@pytest.fixture\n"
        "def expensive():\n"
        "    raise AssertionError('set up for a skipped test')\n"
    )
    (tmp_path / "test_missing.py").write_text(
        "import pytest\n\n"
        f"pytestmark = pytest.mark.requires({MISSING!r})\n\n\n"
        "def test_skipped(expensive):\n"
        "    pass\n"
    )
    (tmp_path / "test_present.py").write_text(
        "import pytest\n\n\n"
        "@pytest.mark.requires('json', 'sqlite3')\n"
        "def test_runs():\n"
        "    import json\n"
        "    assert json.loads('1') == 1\n"
    )
    with pytest.raises(pytest.skip.Exception) as skipped:
        pytest.importorskip(MISSING)
    proc = _pytest(["-q", "-rs", "-p", "no:xdist"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 passed, 1 skipped" in proc.stdout
    assert skipped.value.msg in proc.stdout  # "could not import '...': No module named '...'"
    assert "set up for a skipped test" not in proc.stdout
