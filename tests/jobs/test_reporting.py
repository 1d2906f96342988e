"""W&B never blocks or fails training: an endpoint on loopback that never answers, one
that rejects the key, one that accepts it, and a malformed key. The unit tests call
jobs.reporting directly; the slow ones run a real training process against the silent endpoint
and the malformed key, bounded by a timeout, from a scratch working directory that must stay empty.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from jobs import reporting

REPO = Path(__file__).resolve().parents[2]
GOOD_KEY = "canary" + "c0ffee" * 5 + "7e57"  # 40 word characters: the shape wandb accepts
SHORT_KEY = "abc123"


@contextmanager
def silent_endpoint():
    """A loopback port that completes TCP handshakes (listen backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def answering_endpoint(status: int, body: dict):
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                         "body": json.loads(self.rfile.read(length) or b"{}")})
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest disables W&B; these tests decide
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    for name in reporting.BOUNDED_RETRIES:  # report_to sets them: undone after each test
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", GOOD_KEY)
    monkeypatch.setenv("SFTLAUNCH_WANDB_TIMEOUT_S", "1")
    return tmp_path / "run"


def _bounded(fn, *args, limit_s: float = 60):
    """Run fn in a thread; a hang fails the test instead of stalling it."""
    box: dict = {}
    worker = threading.Thread(target=lambda: box.setdefault("v", fn(*args)), daemon=True)
    worker.start()
    worker.join(limit_s)
    assert "v" in box, f"{fn.__name__} did not return within {limit_s} s"
    return box["v"]


def test_silent_endpoint_means_offline_with_a_warning(wandb_env, monkeypatch, capsys):
    with silent_endpoint() as url:
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert _bounded(reporting.report_to, wandb_env) == ["wandb"]
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(wandb_env)
    err = capsys.readouterr().err
    assert f"warning: W&B at {url} is unreachable (no answer within 1 s); logging offline under {wandb_env}/wandb" in err
    assert GOOD_KEY not in err


def test_the_sockets_own_timeout_reads_like_the_deadline(monkeypatch):
    """Under load the socket's timeout can fire before the probe's deadline (both are `timeout`):
    the user sees one wording either way (urllib wraps it in URLError or raises it bare)."""
    import urllib.error
    import urllib.request

    for raised in (urllib.error.URLError(TimeoutError("timed out")), TimeoutError("timed out")):
        def urlopen(*args, _exc=raised, **kwargs):
            raise _exc

        monkeypatch.setattr(urllib.request, "urlopen", urlopen)
        assert reporting.probe("http://127.0.0.1:9", GOOD_KEY, 1.0) == ("unreachable", "no answer within 1 s")


def test_refused_connection_means_offline(wandb_env, monkeypatch, capsys):
    with silent_endpoint() as url:
        pass  # closed: nothing listens there now
    monkeypatch.setenv("WANDB_BASE_URL", url)
    assert _bounded(reporting.report_to, wandb_env) == ["wandb"] and os.environ["WANDB_MODE"] == "offline"
    assert "Connection refused" in capsys.readouterr().err


def test_a_rejected_key_means_no_wandb(wandb_env, monkeypatch, capsys):
    with answering_endpoint(401, {"errors": [{"message": "unauthorized"}]}) as (url, seen):
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert _bounded(reporting.report_to, wandb_env) == "none"
    assert seen[0]["path"] == "/graphql" and "viewer" in seen[0]["body"]["query"]
    import base64

    assert seen[0]["auth"] == "Basic " + base64.b64encode(f"api:{GOOD_KEY}".encode()).decode()
    err = capsys.readouterr().err
    assert f"W&B at {url} rejected WANDB_API_KEY (HTTP 401); training goes on without W&B" in err
    assert GOOD_KEY not in err and "WANDB_MODE" not in os.environ


def test_an_accepted_key_reports_online(wandb_env, monkeypatch, capsys):
    with answering_endpoint(200, {"data": {"viewer": {"id": "VXNlcjox"}}}) as (url, _seen):
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert _bounded(reporting.report_to, wandb_env) == ["wandb"]
    assert "WANDB_MODE" not in os.environ and capsys.readouterr().err == ""
    # Online, wandb's retries are bounded, and each name is one wandb reads into a setting.
    from wandb.sdk.wandb_settings import Settings

    settings = Settings()
    settings.update_from_env_vars({k: os.environ[k] for k in reporting.BOUNDED_RETRIES})
    assert settings.x_file_stream_retry_max == 10 and settings.x_graphql_retry_max == 10
    assert settings.x_file_transfer_retry_wait_max_seconds == 30 and settings.x_graphql_timeout_seconds == 30
    assert settings.x_file_stream_timeout_seconds == 30
    # An anonymous answer (viewer null) is not a working key.
    with answering_endpoint(200, {"data": {"viewer": None}}) as (url, _seen):
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert _bounded(reporting.report_to, wandb_env) == "none"


def test_a_malformed_key_means_no_wandb_without_a_network_call(wandb_env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", SHORT_KEY)
    monkeypatch.setattr(reporting, "probe", lambda *a: pytest.fail("probed with a malformed key"))
    assert reporting.report_to(wandb_env) == "none"
    err = capsys.readouterr().err
    assert "WANDB_API_KEY is malformed (API key must have 40+ characters, has 6.)" in err and SHORT_KEY not in err


def test_key_check_is_wandbs_own():
    from wandb.sdk.lib.wbauth.validation import check_api_key

    for key in (GOOD_KEY, SHORT_KEY, "local-" + "a" * 40, "has space" + "a" * 40, ""):
        assert reporting.key_problem(key) == check_api_key(key)


def test_explicit_modes_are_respected_without_a_probe(wandb_env, monkeypatch):
    monkeypatch.setattr(reporting, "probe", lambda *a: pytest.fail("probed"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert reporting.report_to(wandb_env) == "none"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert reporting.report_to(wandb_env) == ["wandb"]
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("RANK", "1")  # only rank 0 logs to W&B; the others never probe
    assert reporting.report_to(wandb_env) == ["wandb"]
    monkeypatch.delenv("WANDB_API_KEY")
    assert reporting.report_to(wandb_env) == "none"


def test_a_base_url_without_a_scheme_is_unreachable_not_a_crash(wandb_env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_BASE_URL", "api.wandb.ai")
    assert reporting.report_to(wandb_env) == ["wandb"] and os.environ["WANDB_MODE"] == "offline"
    assert "unknown url type" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A real training process


def _train_in(cwd: Path, tiny_root: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = cwd.parent / "home"
    home.mkdir(exist_ok=True)
    full = {**base, "PYTHONPATH": str(REPO), "HOME": str(home), "SFTLAUNCH_WANDB_TIMEOUT_S": "3", **env}
    return subprocess.run([sys.executable, "-m", "tests.jobs.test_train_support", str(tiny_root), str(out),
                           json.dumps({"max_steps": 2})], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_training_goes_on_offline_when_wandb_never_answers(tmp_path):
    cwd, out = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    with silent_endpoint() as url:
        proc = _train_in(cwd, tmp_path / "tiny", out, {"WANDB_API_KEY": GOOD_KEY, "WANDB_BASE_URL": url})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert (out / "final" / "sftlaunch.json").is_file()
    assert f"W&B at {url} is unreachable" in log and "logging offline" in log
    assert list((out / "wandb").glob("offline-run-*")), log[-3000:]  # the metrics are kept, under the run
    assert list(cwd.iterdir()) == []  # nothing in the directory the job was started from
    assert GOOD_KEY not in log


@pytest.mark.slow
def test_training_goes_on_without_wandb_when_the_key_is_malformed(tmp_path):
    cwd, out = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    with silent_endpoint() as url:
        proc = _train_in(cwd, tmp_path / "tiny", out, {"WANDB_API_KEY": SHORT_KEY, "WANDB_BASE_URL": url})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert (out / "final" / "sftlaunch.json").is_file() and "WANDB_API_KEY is malformed" in log
    assert not (out / "wandb").exists() and list(cwd.iterdir()) == []
