"""Preflight's image check (launcher/registry.py) against a registry on 127.0.0.1 that speaks the
token-auth and manifest protocol (tests/launcher/fake_registry.py, which cites the specs), and
`sftlaunch preflight` with the image line. Docker's own name and login rules are checked against
docker-py, the Docker SDK installed beside the test tools (docker.auth)."""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.parse
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher import __version__, registry
from launcher.cli import cli
from launcher.registry import DENIED, EXISTS, MANIFEST_TYPES, MISSING, UNKNOWN
from tests.launcher.test_preflight import recipe

REPO = "sftlaunch/sftlaunch"
PASSWORD_CANARY = "CANARYregistryPASSWORD0123456789"
SKY_PASSWORD_CANARY = "CANARYskyDOCKERpassword0123456789"


def _docker_login(home, host: str, user: str, password: str, key: str | None = None) -> None:
    """What `docker login HOST` saves: auths[HOST].auth = base64(user:password)."""
    (home / ".docker").mkdir(exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {key or host: {"auth": auth}}}))


# -- names ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["ubuntu", "ubuntu:24.04", "me/app:1", "docker.io/me/app", "index.docker.io/me/app",
                                 "ghcr.io/sftlaunch/sftlaunch:0.1.0-root", "localhost:5000/a/b", "127.0.0.1:5000/x:y",
                                 f"ghcr.io/a/b@sha256:{'0' * 64}"])
def test_registry_and_repository_as_docker_resolves_them(ref):
    import docker.auth
    import docker.utils

    image = registry.parse_reference(ref)
    name, tag = docker.utils.parse_repository_tag(ref)
    index, remote = docker.auth.resolve_repository_name(name)
    assert image.registry == index
    assert image.repository == (f"library/{remote}" if index == "docker.io" and "/" not in remote else remote)
    assert image.reference == (tag or "latest")  # docker-py returns the digest as the "tag" after @


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "127.0.0.1:5000", "https://ghcr.io", "ghcr.io"])
def test_credentials_are_found_as_docker_finds_them(tmp_path, key):
    import docker.auth

    _docker_login(tmp_path, key, "someone", PASSWORD_CANARY)
    config = docker.auth.load_config(str(tmp_path / ".docker" / "config.json"))
    for reg in ("docker.io", "127.0.0.1:5000", "ghcr.io"):
        expected = docker.auth.resolve_authconfig(config, reg)
        found = registry.find_credentials(reg, {"HOME": str(tmp_path)})
        assert (found[:2] if found else None) == ((expected["username"], expected["password"]) if expected else None)


# -- the protocol --------------------------------------------------------------------------------------
def test_an_existing_image_through_the_anonymous_token_flow(fake_registry):
    digest = fake_registry.push(REPO, "0.1.0")
    answer = registry.manifest_state(f"{fake_registry.host}/{REPO}:0.1.0", timeout=5)
    assert (answer.state, answer.digest, answer.credentials) == (EXISTS, digest, None)
    (m1, p1, h1), (m2, p2, h2), (m3, p3, h3) = fake_registry.requests
    assert (m1, p1, "Authorization" in h1) == ("HEAD", f"/v2/{REPO}/manifests/0.1.0", False)
    token_url = urllib.parse.urlsplit(p2)
    assert (m2, token_url.path) == ("GET", "/token")  # the challenge's realm, asked for its scope and service
    assert urllib.parse.parse_qs(token_url.query) == {"scope": [f"repository:{REPO}:pull"], "service": ["fake-registry"]}
    assert "Authorization" not in h2  # anonymous: how the GPU host pulls
    assert m3 == "HEAD" and h3["Authorization"].startswith("Bearer ")
    assert h1["Accept"].split(", ") == list(MANIFEST_TYPES)  # index and manifest, OCI and Docker


def test_a_proxy_applies_to_remote_registries_not_to_loopback(fake_registry, monkeypatch):
    fake_registry.push(REPO, "0.1.0")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert registry.manifest_state(f"{fake_registry.host}/{REPO}:0.1.0", timeout=5).state == EXISTS


def test_a_digest_reference(fake_registry):
    digest = fake_registry.push(REPO, "0.1.0")
    fake_registry.images[(REPO, digest)] = fake_registry.images[(REPO, "0.1.0")]
    assert registry.manifest_state(f"{fake_registry.host}/{REPO}@{digest}", timeout=5).state == EXISTS


def test_a_missing_tag_and_a_missing_repository(fake_registry):
    fake_registry.push(REPO, "0.1.0")
    tag = registry.manifest_state(f"{fake_registry.host}/{REPO}:0.1.0-root", timeout=5)
    assert tag.state == MISSING and "HTTP 404, MANIFEST_UNKNOWN" in tag.detail
    name = registry.manifest_state(f"{fake_registry.host}/someone/else:1", timeout=5)
    assert name.state == MISSING and "HTTP 404, NAME_UNKNOWN" in name.detail


def test_a_private_image_without_credentials_is_denied(fake_registry):
    fake_registry.push(REPO, "0.1.0")
    fake_registry.private.add(REPO)
    answer = registry.manifest_state(f"{fake_registry.host}/{REPO}:0.1.0", timeout=5, env={"HOME": "/nonexistent"})
    assert answer.state == DENIED and "UNAUTHORIZED" in answer.detail and answer.credentials is None


def test_docker_login_credentials_go_to_the_token_service_only(fake_registry, tmp_path):
    fake_registry.push(REPO, "0.1.0")
    fake_registry.private.add(REPO)
    fake_registry.users["someone"] = PASSWORD_CANARY
    _docker_login(tmp_path, fake_registry.host, "someone", PASSWORD_CANARY)
    answer = registry.manifest_state(f"{fake_registry.host}/{REPO}:0.1.0", timeout=5, env={"HOME": str(tmp_path)})
    assert answer.state == EXISTS and answer.credentials.startswith("docker login (")
    basic = [p for _, p, h in fake_registry.requests if h.get("Authorization", "").startswith("Basic ")]
    assert basic and all(p.startswith("/token?") for p in basic)
    assert PASSWORD_CANARY not in json.dumps(answer.__dict__)

    fake_registry.users["someone"] = "changed"  # the saved password no longer works
    answer = registry.manifest_state(f"{fake_registry.host}/{REPO}:0.1.0", timeout=5, env={"HOME": str(tmp_path)})
    assert answer.state == DENIED and "refused these credentials (HTTP 401)" in answer.detail


def test_skypilots_docker_login_variables_for_their_own_server_only(fake_registry, tmp_path):
    fake_registry.push(REPO, "0.1.0")
    fake_registry.private.add(REPO)
    fake_registry.users["sky"] = SKY_PASSWORD_CANARY
    env = {"HOME": str(tmp_path), "SKYPILOT_DOCKER_USERNAME": "sky", "SKYPILOT_DOCKER_PASSWORD": SKY_PASSWORD_CANARY,
           "SKYPILOT_DOCKER_SERVER": fake_registry.host}
    answer = registry.manifest_state(f"{fake_registry.host}/{REPO}:0.1.0", timeout=5, env=env)
    assert answer.state == EXISTS and answer.credentials == "SKYPILOT_DOCKER_USERNAME/PASSWORD"
    env["SKYPILOT_DOCKER_SERVER"] = "nvcr.io"  # credentials for another registry are not sent here
    assert registry.manifest_state(f"{fake_registry.host}/{REPO}:0.1.0", timeout=5, env=env).state == DENIED


def test_skypilots_docker_login_variable_names_are_skypilots():
    from sky.skylet import constants

    assert set(registry.SKY_DOCKER_ENV) == constants.DOCKER_LOGIN_ENV_VARS


def test_nothing_listening_is_could_not_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answer = registry.manifest_state(f"127.0.0.1:{port}/{REPO}:0.1.0", timeout=5)
    assert answer.state == UNKNOWN and "did not answer" in answer.detail


def test_outside_registries_are_unreachable_in_tests():
    """The autouse guard in conftest: the real error path (could not check), never ghcr.io."""
    assert registry.manifest_state("ghcr.io/sftlaunch/sftlaunch:0.1.0", timeout=5).state == UNKNOWN


# -- preflight -----------------------------------------------------------------------------------------
def _preflight_json(path, *args):
    res = CliRunner(mix_stderr=False).invoke(cli, ["preflight", path, "--json", *args])
    return res.exit_code, [c for c in json.loads(res.stdout)["checks"] if c["check"] == "image"], res.stdout


def test_preflight_checks_each_image_the_run_may_pull(tmp_path, fake_registry, monkeypatch):
    monkeypatch.setattr("launcher.backends.credentials.sky_credentials", lambda clouds, timeout=None: {c: (True, "") for c in clouds})
    monkeypatch.setenv("SFTLAUNCH_IMAGE_REPO", f"{fake_registry.host}/{REPO}")
    digest = fake_registry.push(REPO, __version__)
    path = recipe(tmp_path, clouds=("gcp", "runpod", "lambda"))
    code, lines, _ = _preflight_json(path)
    assert code == 2
    by_target = {c["target"]: c for c in lines}
    assert len(lines) == 2  # gcp and lambda share the image; RunPod runs the -root variant
    ok = by_target[f"{fake_registry.host}/{REPO}:{__version__}"]
    assert ok["status"] == "pass" and digest in ok["detail"]
    root = by_target[f"{fake_registry.host}/{REPO}:{__version__}-root"]
    assert root["status"] == "fail" and "MANIFEST_UNKNOWN" in root["detail"]
    assert "`sftlaunch image push --root`" in root["fix"] and "SFTLAUNCH_IMAGE_REPO" in root["fix"]

    fake_registry.push(REPO, f"{__version__}-root")
    code, lines, _ = _preflight_json(path)
    assert code == 0 and [c["status"] for c in lines] == ["pass", "pass"]
    code, lines, _ = _preflight_json(path, "--cloud", "runpod")  # only the image RunPod pulls
    assert [c["target"] for c in lines] == [f"{fake_registry.host}/{REPO}:{__version__}-root"]


def test_preflight_with_the_recipes_image_and_no_network(tmp_path, fake_registry, monkeypatch):
    monkeypatch.setattr("launcher.backends.credentials.sky_credentials", lambda clouds, timeout=None: {c: (True, "") for c in clouds})
    path = recipe(tmp_path, clouds=("gcp",))
    data = open(path).read() + f"image: {fake_registry.host}/me/mine:v1\n"
    open(path, "w").write(data)
    code, lines, _ = _preflight_json(path)
    assert code == 2 and lines[0]["status"] == "fail" and "fix image: in the recipe" in lines[0]["fix"]
    fake_registry.stop()  # the registry goes away: could not check, shown, not fatal
    code, lines, _ = _preflight_json(path)
    assert code == 0 and lines[0]["status"] == "unknown"
    res = CliRunner().invoke(cli, ["preflight", path])
    assert "could not check" in res.output and "preflight: ok, 2 could not be checked" in res.output  # + the Hub


def test_a_private_image_passes_only_where_the_run_logs_in_and_no_secret_is_printed(tmp_path, fake_registry, monkeypatch):
    monkeypatch.setattr("launcher.backends.credentials.sky_credentials", lambda clouds, timeout=None: {c: (True, "") for c in clouds})
    fake_registry.push("me/private", "v1")
    fake_registry.private.add("me/private")
    fake_registry.users.update({"sky": SKY_PASSWORD_CANARY, "someone": PASSWORD_CANARY})
    path = recipe(tmp_path, clouds=("gcp",))
    open(path, "a").write(f"image: {fake_registry.host}/me/private:v1\n")
    code, lines, _ = _preflight_json(path)  # no credentials: refused, as the GPU host would be
    assert code == 2 and lines[0]["status"] == "fail" and "private or does not exist" in lines[0]["detail"]

    home = Path(os.environ["HOME"])  # the test's own HOME (tests/conftest.py)
    _docker_login(home, fake_registry.host, "someone", PASSWORD_CANARY)
    outputs = [_preflight_json(path)]
    monkeypatch.setenv("SKYPILOT_DOCKER_USERNAME", "sky")
    monkeypatch.setenv("SKYPILOT_DOCKER_PASSWORD", SKY_PASSWORD_CANARY)
    monkeypatch.setenv("SKYPILOT_DOCKER_SERVER", fake_registry.host)
    outputs.append(_preflight_json(path))
    texts = [out for _, _, out in outputs] + [CliRunner().invoke(cli, ["preflight", path]).output]
    (code, lines, _), (sky_code, sky_lines, _) = outputs
    # `docker login` on this machine: the run would still pull anonymously, and is told how to log in.
    assert code == 0 and lines[0]["status"] == "warn" and "docker login" in lines[0]["detail"]
    assert "the run pulls it without credentials" in lines[0]["detail"]
    assert f"SKYPILOT_DOCKER_SERVER={fake_registry.host}" in lines[0]["fix"]
    # SkyPilot's docker login variables: render passes them (names; values at launch), the run pulls it.
    assert sky_code == 0 and sky_lines[0]["status"] == "pass", sky_lines
    assert "the run logs in with SKYPILOT_DOCKER_USERNAME/PASSWORD" in sky_lines[0]["detail"]
    monkeypatch.setenv("SKYPILOT_DOCKER_PASSWORD", "wrong-" + SKY_PASSWORD_CANARY)
    code, lines, wrong = _preflight_json(path)
    texts.append(wrong)
    assert code == 2 and lines[0]["status"] == "fail" and "would be refused the same way" in lines[0]["detail"]
    tokens = list(fake_registry.tokens)
    for text in texts:
        for secret in (PASSWORD_CANARY, SKY_PASSWORD_CANARY, *tokens):
            assert secret not in text


def test_up_refuses_to_launch_when_the_image_is_missing(tmp_path, fake_registry, fake, monkeypatch):
    """`up` runs the same line before anything is rented: missing image, exit 2, nothing launched."""
    from launcher.runs import Registry
    from tests.launcher.fake_backend import FakeCandidate, FakePlan, write_recipe

    def plan(recipe, cloud=None, gpu=None, spot=None):
        cands = [FakeCandidate("gcp", total_usd=6.0)]
        return FakePlan(cands, cands[0])

    monkeypatch.setattr("launcher.commands.up_cloud._candidates", plan)
    # the bucket's own line passes (its check is tested in test_preflight.py)
    monkeypatch.setattr("launcher.preflight.probe_bucket", lambda uri, timeout=None: ("pass", "in-memory bucket", ""))
    monkeypatch.setattr("launcher.run_outputs.write_text", lambda *a, **k: None)
    monkeypatch.setenv("SFTLAUNCH_IMAGE_REPO", f"{fake_registry.host}/{REPO}")
    fake.enabled = {"gcp"}
    path = write_recipe(tmp_path / "r", clouds=("gcp",), bucket="gs://sftl-test/runs")
    res = CliRunner().invoke(cli, ["up", str(path), "--yes", "--detach"])
    assert res.exit_code == 2 and "NAME_UNKNOWN" in res.output, res.output
    assert "nothing was launched" in res.output and not fake.launched and Registry().list() == []

    fake_registry.push(REPO, __version__)  # pushed: the same command launches
    res = CliRunner().invoke(cli, ["up", str(path), "--yes", "--detach"])
    assert res.exit_code == 0, res.output
    assert len(fake.launched) == 1 and fake.launched[0][1]["resources"]["image_id"].endswith(f"{REPO}:{__version__}")
