"""Shared fakes for the launcher's tests."""

from __future__ import annotations

import pytest

from tests.launcher.fake_backend import installed


@pytest.fixture
def fake(monkeypatch):
    """The fake SkyPilot (tests/launcher/fake_backend.py) in place of the real backend; the test
    fails if its scenario downed or cancelled anything that is not ours."""
    with installed(monkeypatch) as fake:
        yield fake
