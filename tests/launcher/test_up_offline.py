"""`up --dry-run` asks SkyPilot's credential check and optimizer without an API server
(launcher/backends/sky_offline.py): none is started, no process is left behind.

Before: with a fresh HOME the SDK's `sdk.check` found no server at its local port,
started one (`sky.server.server`, 70-89 s in all) and it outlived the command. Here the real CLI
runs in a child process with a fresh HOME, SkyPilot's local port moved to a free one and no
SKYPILOT_API_SERVER_ENDPOINT, exactly the set-up in which the SDK starts a server; afterwards
nothing may listen on that port and no process may carry the run's HOME (found by pid in /proc).
The optimizer is SkyPilot's own, on the fixture catalogs (tests/sky_catalog.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launcher.fake_backend import write_recipe
from tests.sky_catalog import install_catalogs

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")

# The CLI with one stand-in: RunPod's credential check answers yes (SkyPilot's own check calls
# RunPod's API, which this machine cannot reach). Everything after it is real.
_CLI = """
import sys
from launcher.backends import credentials
credentials.sky_credentials = lambda clouds, timeout=None: {c: (c == "runpod", "") for c in clouds}
from launcher.cli import main
sys.argv = ["sftlaunch", "up", sys.argv[1], "--dry-run", "--cloud", "runpod"]
main()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_with_home(home: Path) -> list[int]:
    """Pids of live processes whose environment holds HOME=<home> (every child the run started)."""
    marker = f"HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in env and state != "Z":
            pids.append(int(entry.name))
    return pids


def _env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SKYPILOT_API_SERVER_ENDPOINT"}
    install_catalogs(home)
    env.update(HOME=str(home), SFTLAUNCH_HOME=str(home / ".sftlaunch"), SKY_RUNTIME_DIR=str(home),
               SKYPILOT_API_SERVER_LOCAL_PORT=str(port), SKYPILOT_DISABLE_USAGE_COLLECTION="1",
               SFTLAUNCH_IMAGE_REPO=f"127.0.0.1:{_free_port()}/sftlaunch/sftlaunch",  # no registry: could not check
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", PYTHONPATH=str(REPO))
    for var in ("NO_PROXY", "no_proxy", "https_proxy", "http_proxy"):
        env.pop(var, None)
    return env


def test_the_leftover_finder_finds_a_process_by_its_home(tmp_path):
    """The check below can fail: a process started with the run's HOME is found by pid."""
    home = tmp_path / "h"
    home.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "HOME": str(home)})
    try:
        assert sleeper.pid in processes_with_home(home)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert processes_with_home(home) == []


@pytest.mark.slow
def test_dry_run_starts_no_api_server_and_leaves_no_process(tmp_path):
    home = tmp_path / "run-home"  # not the test's own HOME (tests/conftest.py): only the run's children carry it
    home.mkdir()
    port = _free_port()
    path = write_recipe(tmp_path / "r", clouds=("runpod",), bucket=False, max_usd=100)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _CLI, str(path)], env=_env(home, port), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "SkyPilot optimizer (dry run)" in out and "dry run: nothing launched." in out
    assert "runpod (chosen): H100×1" in out and "RunPod" in out.split("SkyPilot optimizer (dry run)")[1]
    assert "API server" not in out  # SkyPilot says "Starting a local server" / "API server started" when it does
    time.sleep(1)
    assert not _listening(port), f"something listens on SkyPilot's local port {port} after the dry run"
    assert processes_with_home(home) == [], "processes left by the dry run"
    assert not (home / ".sky" / "api_server").exists()  # a server would have made its state dir
    print(f"dry run: {elapsed:.1f} s")


@pytest.mark.slow
def test_offline_optimizer_says_when_no_enabled_cloud_offers_the_gpu(tmp_path, monkeypatch):
    """SkyPilot's ResourcesUnavailableError comes back as the refusal `up` shows, in one line."""
    from launcher.backends.sky_offline import OfflineSky
    from launcher.render import Target, render_task
    from sftcore.recipe import load_recipe

    home = tmp_path / "run-home"
    home.mkdir()
    for key, value in _env(home, _free_port()).items():
        monkeypatch.setenv(key, value)
    recipe = load_recipe(write_recipe(tmp_path / "r", clouds=("runpod",), bucket=False))
    offline = OfflineSky()
    offline._enabled = ["runpod"]  # what enabled_clouds() sets from SkyPilot's per-cloud check
    gpu = Target(cloud="runpod", gpu="A100")  # GCP sells it, RunPod does not
    task = render_task(recipe, gpu, "sftl-demo-abcd", str(tmp_path / "r" / "demo.yaml"))
    with pytest.raises(RuntimeError) as info:
        offline.optimize(task)
    assert "A100" in str(info.value) and "SkyPilot's optimizer failed" not in str(info.value)  # its own refusal
    assert processes_with_home(home) == []
