"""Shared fakes for the launcher's tests."""

from __future__ import annotations

import pytest

from launcher.backends import sky as sky_backend
from tests.launcher.fake_backend import FakeSky


@pytest.fixture
def fake(monkeypatch):
    """The fake SkyPilot (tests/launcher/fake_backend.py) in place of the real backend."""
    fake = FakeSky()
    monkeypatch.setattr(sky_backend, "_backend_factory", lambda: fake)
    return fake
