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


@pytest.fixture(autouse=True)
def no_outside_registry(monkeypatch):
    """Preflight's image check reaches only loopback registries (the fake below): ghcr.io or Docker
    Hub answer every test as an unreachable network does, through the real error path."""
    import urllib.error
    import urllib.parse

    from launcher import registry

    real = registry._request

    def request(url, *args, **kwargs):
        if not registry._is_loopback(urllib.parse.urlsplit(url).netloc):
            raise urllib.error.URLError("tests reach no registry outside 127.0.0.1")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(registry, "_request", request)


@pytest.fixture
def fake_registry():
    """A registry on 127.0.0.1 speaking the token-auth and manifest protocol (fake_registry.py)."""
    from tests.launcher.fake_registry import FakeRegistry

    reg = FakeRegistry().start()
    yield reg
    reg.stop()


@pytest.fixture
def fake_serve(monkeypatch):
    """The fake SkyServe (tests/launcher/fake_serve.py) in place of the real one."""
    from tests.launcher.fake_serve import installed as serve_installed

    with serve_installed(monkeypatch) as fake:
        yield fake
