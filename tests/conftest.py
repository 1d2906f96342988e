"""Test isolation: every test gets a temporary HOME and SFTLAUNCH_HOME; nothing touches the
user's real ~/.sky, ~/.sftlaunch or HF cache. The tiny-model cache is shared by the session so
it is built once. Hubs are unreachable here, so the HF libraries are told to stay offline."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
SKY_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens there
# google-auth reads this once, at import: no test may wait on (or talk to) a GCE metadata
# server, which off Google Cloud costs seconds of retries per credential lookup. Set here, for
# the whole process and every child it starts (each test's environment is copied from this one).
os.environ["NO_GCE_CHECK"] = "true"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "requires(*modules): skip the test as pytest.importorskip does when a module does not import;"
        " checked when the test runs, so collecting it imports nothing",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tests marked `requires("transformers")` import it at setup, not at collection: collecting
    the suite (in every xdist worker) then loads no torch, transformers or sky, and only a worker
    that runs such a test pays for the import. The skip reason is importorskip's own; no fixture
    of a skipped test is set up."""
    for mark in item.iter_markers("requires"):
        for name in mark.args:
            pytest.importorskip(name)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    override = os.environ.get("SFTLAUNCH_TEST_CACHE")
    if override:
        Path(override).mkdir(parents=True, exist_ok=True)
        return Path(override)
    return tmp_path_factory.mktemp("sftlaunch-cache")


# Secrets and launcher-only settings a developer's shell may hold; no test may see them.
SCRUBBED = ("HF_TOKEN", "WANDB_API_KEY", "HUGGING_FACE_HUB_TOKEN", "SFTLAUNCH_BUCKET")


def isolation(home: Path, cache: Path) -> dict[str, str]:
    """The environment every test (and the shared tiny run) gets: its own HOME, sftlaunch home and
    SkyPilot state, the session's model cache, the hubs offline."""
    return {
        "HOME": str(home),
        "SFTLAUNCH_HOME": str(home / ".sftlaunch"),
        "SFTLAUNCH_CACHE": str(cache),
        "HF_HOME": str(cache / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
        "SKY_RUNTIME_DIR": str(home / ".sky-runtime"),
        # SkyPilot's client talks to whatever answers on its default local port (46580), and
        # starts a server there itself: a user's own `sky` server and state must never see a
        # test. A port nothing serves refuses at once (the optimizer tests run it in-process).
        "SKYPILOT_API_SERVER_ENDPOINT": SKY_ENDPOINT,
    }


def session_root(tmp_path_factory) -> Path:
    """A directory every pytest-xdist worker of this run shares (each worker's own base temp dir
    sits in it), or the base temp dir without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def torch_extensions(tmp_path_factory) -> Path:
    """Where torch keeps JIT-built C++ ops, shared by the whole run: DeepSpeed's CPU accelerator
    compiles its shared-memory comm op (about a minute on 2 cores) into $HOME/.cache unless told
    otherwise, and every test has its own HOME, so each DeepSpeed test compiled it again. torch
    locks the build directory, so concurrent workers wait for one build."""
    override = os.environ.get("SFTLAUNCH_TEST_CACHE")
    path = (Path(override) if override else session_root(tmp_path_factory)) / "torch-extensions"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, shared_cache, torch_extensions):
    home = tmp_path / "home"
    home.mkdir()
    for name, value in isolation(home, shared_cache).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(torch_extensions))
    for name in SCRUBBED:  # SFTLAUNCH_BUCKET: up's default must not reach a test's runs
        monkeypatch.delenv(name, raising=False)
    yield home


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory, shared_cache):
    """recipes/tiny-local.yaml trained, evaluated and published once per session by the README's
    `sftlaunch up --local --yes` (tests/tiny_run.py); tests that need a real run read it."""
    from tests import tiny_run

    root = session_root(tmp_path_factory) / "tiny-local-run"
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(isolation(root / "home", shared_cache))  # tiny_run adds what a user's shell holds
    return tiny_run.start(root, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on a free local port with bucket `ckpts`; yields "s3://ckpts"."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ckpts")
    import fsspec

    fsspec.config.conf.clear()
    yield "s3://ckpts"
    server.stop()
