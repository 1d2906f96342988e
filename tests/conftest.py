"""Test isolation: every test gets a temporary HOME and SFTLAUNCH_HOME; nothing touches the
user's real ~/.sky, ~/.sftlaunch or HF cache. The tiny-model cache is shared by the session so
it is built once. Hubs are unreachable here, so the HF libraries are told to stay offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
SKY_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    override = os.environ.get("SFTLAUNCH_TEST_CACHE")
    if override:
        Path(override).mkdir(parents=True, exist_ok=True)
        return Path(override)
    return tmp_path_factory.mktemp("sftlaunch-cache")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, shared_cache):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SFTLAUNCH_HOME", str(home / ".sftlaunch"))
    monkeypatch.setenv("SFTLAUNCH_CACHE", str(shared_cache))
    monkeypatch.setenv("HF_HOME", str(shared_cache / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(home / ".sky-runtime"))
    # SkyPilot's client talks to whatever answers on its default local port (46580), and starts a
    # server there itself: a user's own `sky` server and state must never see a test. A port
    # nothing serves refuses at once (tests that need SkyPilot's optimizer run it in-process).
    monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", SKY_ENDPOINT)
    # The user's default bucket for `up` must not reach a test's runs (launcher.contract).
    monkeypatch.delenv("SFTLAUNCH_BUCKET", raising=False)
    for secret in ("HF_TOKEN", "WANDB_API_KEY", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(secret, raising=False)
    yield home
