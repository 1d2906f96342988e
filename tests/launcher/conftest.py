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


@pytest.fixture
def fake_serve(monkeypatch):
    """The fake SkyServe (tests/launcher/fake_serve.py) in place of the real one."""
    from tests.launcher.fake_serve import installed as serve_installed

    with serve_installed(monkeypatch) as fake:
        yield fake
