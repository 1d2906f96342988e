"""`sftlaunch preflight` and up's preflight, offline: the Hub is tests/jobs/fake_hub.py (the Hub's
whoami-v2, model/dataset info and auth-check endpoints, spoken to by the real huggingface_hub),
buckets are a moto S3 server (IAM enforced for the read-only case), cloud credentials come from
SkyPilot's own per-cloud check in a temporary HOME, and a loopback socket that accepts and never
answers stands in for a hung endpoint."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import yaml
from click.testing import CliRunner

from launcher import preflight as pf
from launcher.cli import cli
from launcher.runs import Registry
from tests.jobs.fake_hub import FakeHub
from tests.launcher.fake_backend import FakeCandidate, FakePlan, FakeSky
from tests.launcher.test_cli import _probe

HF_CANARY = "hf_CANARYpreflight0123456789abcdefXYZ"
READ_CANARY = "hf_CANARYreadonly0123456789abcdefXYZ"
AWS_CANARY = "CANARYawsSECRET0123456789abcdefXYZ"
GATED = "meta-llama/Llama-2-7b-hf"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def hub(monkeypatch):
    import huggingface_hub.constants as constants

    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        fake.add_token(HF_CANARY, "me", "write", orgs={"my-org": "write", "their-org": "read"})
        fake.add_token(READ_CANARY, "me", "read")
        fake.add_repo("sftlaunch-test/public-model")
        fake.add_repo(GATED, gated="manual")
        fake.add_repo("other/granted-model", gated="auto", granted=("me",))
        fake.add_repo("other/taken")
        fake.add_repo("me/already-there")
        fake.add_repo("ehartford/dolphin", kind="dataset")
        yield fake


@pytest.fixture()
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 with a writable bucket and a bucket `reader` may only read."""
    import boto3
    import s3fs
    from moto import settings
    from moto.server import ThreadedMotoServer

    url = f"http://127.0.0.1:{_port()}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(url.rsplit(":", 1)[1]), verbose=False)
    server.start()
    import urllib.request

    # moto keeps its backends per process, not per server: start from nothing (users, buckets)
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).read()
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIAPREFLIGHTTEST", "AWS_SECRET_ACCESS_KEY": AWS_CANARY,
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="sftl-writable")
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="sftl-readonly")
    iam = boto3.client("iam", endpoint_url=url)
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                                                "Resource": ["arn:aws:s3:::sftl-readonly", "arn:aws:s3:::sftl-readonly/*"]}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]

    def as_reader():
        """From now on the server checks every request against IAM, and we are `reader`."""
        monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])

    yield type("S3", (), {"url": url, "as_reader": staticmethod(as_reader),
                          "client": boto3.client("s3", endpoint_url=url)})
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture()
def clouds_ok(monkeypatch):
    """SkyPilot's check, answered: every cloud has credentials (the real check is tested below)."""
    monkeypatch.setattr("launcher.backends.credentials.sky_credentials", lambda clouds, timeout=None: {c: (True, "") for c in clouds})


@pytest.fixture()
def hanging():
    """A loopback server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    t.join()
    for conn in held:
        conn.close()
    server.close()


def recipe(tmp_path, model="sftlaunch-test/public-model", hub_repo=None, bucket=None, sources=None,
           clouds=("runpod",)) -> str:
    (tmp_path / "train.jsonl").write_text('{"instruction": "add 1 and 2", "input": "", "output": "3"}\n')
    data = {"name": "pf-test", "model": {"id": model}, "method": "full",
            "data": {"sources": sources or [{"path": "train.jsonl", "format": "alpaca"}]},
            "resources": {"clouds": list(clouds), "gpu": "H100:1"},
            "output": {"bucket": bucket, "hub_repo": hub_repo}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def run(*args):
    return CliRunner().invoke(cli, ["preflight", *map(str, args)])


def checks(*args) -> tuple[int, dict]:
    res = CliRunner(mix_stderr=False).invoke(cli, ["preflight", *map(str, args), "--json"])
    out = json.loads(res.stdout)  # notes (a --bucket that replaces output.bucket) go to stderr
    return res.exit_code, {(c["check"], c["target"]): c for c in out["checks"]}


# -- the Hub --------------------------------------------------------------------------------------
def test_gated_model_without_access_says_where_to_accept_the_license(tmp_path, hub, clouds_ok, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_CANARY)
    code, lines = checks(recipe(tmp_path, model=GATED))
    line = lines[("model", GATED)]
    assert code == 2 and line["status"] == "fail"
    assert "not been granted access" in line["detail"] and f"accept the license at {hub.url}/{GATED}" in line["fix"]
    res = run(recipe(tmp_path, model=GATED))  # the table: the same line, readable
    assert res.exit_code == 2 and "FAIL" in res.output and "preflight: 1 failed" in res.output
    assert HF_CANARY not in res.output


def test_gated_model_without_a_token_and_with_access(tmp_path, hub, clouds_ok, monkeypatch):
    code, lines = checks(recipe(tmp_path, model=GATED))
    line = lines[("model", GATED)]
    assert code == 2 and "no HF_TOKEN" in line["detail"] and "export HF_TOKEN" in line["fix"]
    assert f"{hub.url}/{GATED}" in line["fix"]
    monkeypatch.setenv("HF_TOKEN", HF_CANARY)
    code, lines = checks(recipe(tmp_path, model="other/granted-model"))
    assert code == 0 and lines[("model", "other/granted-model")]["status"] == "pass"
    assert "gated (auto)" in lines[("model", "other/granted-model")]["detail"]


def test_a_saved_login_token_is_not_what_a_cloud_run_gets(tmp_path, hub, clouds_ok, monkeypatch):
    from huggingface_hub import constants

    token_file = tmp_path / "hf-token"
    token_file.write_text(HF_CANARY)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    code, lines = checks(recipe(tmp_path, model="other/granted-model"))
    line = lines[("model", "other/granted-model")]
    assert code == 2 and "runs receive only HF_TOKEN" in line["detail"]


def test_missing_model_and_missing_dataset(tmp_path, hub, clouds_ok):
    sources = [{"path": "train.jsonl", "format": "alpaca"}, {"path": "ehartford/dolphin", "format": "dolphin"},
               {"path": "nobody/no-such-data", "format": "alpaca"}]
    code, lines = checks(recipe(tmp_path, model="nobody/no-such-model", sources=sources))
    assert code == 2
    assert lines[("model", "nobody/no-such-model")]["status"] == "fail"
    assert "fix model.id" in lines[("model", "nobody/no-such-model")]["fix"]
    assert lines[("data[0]", str(tmp_path / "train.jsonl"))]["status"] == "pass"
    assert lines[("data[1]", "ehartford/dolphin")]["status"] == "pass"
    missing = lines[("data[2]", "nobody/no-such-data")]
    assert missing["status"] == "fail" and "no such dataset" in missing["detail"]


def test_local_data_removed_after_the_recipe_loaded(tmp_path):
    from sftcore.recipe import DataSource

    src = DataSource(path=str(tmp_path / "gone.jsonl"), format="alpaca")
    line = pf.run_checks([pf.data_check(0, src, local=False, timeout=5)])[0]
    assert line.status == "fail" and "local file not found" in line.detail and line.fix == "fix data.sources[0].path"


@pytest.mark.parametrize("token, repo, status, words", [
    (READ_CANARY, "me/new-model", "fail", "read-only token"),
    (HF_CANARY, "other/taken", "fail", "refuses writes to other/taken"),
    (HF_CANARY, "their-org/new-model", "fail", "may not create repos in their-org (is read there)"),
    (HF_CANARY, "stranger/new-model", "fail", "(is not a member)"),
    (HF_CANARY, "me/already-there", "fail", "publish refuses to overwrite it"),
    ("hf_NOTknownTOKEN0123456789abcdefXYZ", "me/new-model", "fail", "refused HF_TOKEN"),
    (None, "me/new-model", "fail", "HF_TOKEN is not set"),
    (HF_CANARY, "me/new-model", "pass", "will be created (private) under me"),
    (HF_CANARY, "my-org/new-model", "pass", "where me is write"),
])
def test_hub_repo_write(tmp_path, hub, clouds_ok, monkeypatch, token, repo, status, words):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    code, lines = checks(recipe(tmp_path, hub_repo=repo))
    line = lines[("hub_repo", repo)]
    assert line["status"] == status and words in line["detail"], line
    assert code == (2 if status == "fail" else 0)
    assert (line["fix"] != "") == (status == "fail")


def test_a_fine_grained_token_needs_repo_write_in_the_namespace(tmp_path, hub, clouds_ok, monkeypatch):
    hub.add_token("hf_FINEgrained0123456789abcdefXYZ", "me", "fineGrained",
                  scoped=[{"entity": {"type": "org", "name": "my-org"}, "permissions": ["repo.write"]}])
    monkeypatch.setenv("HF_TOKEN", "hf_FINEgrained0123456789abcdefXYZ")
    _, lines = checks(recipe(tmp_path, hub_repo="my-org/new-model"))
    assert lines[("hub_repo", "my-org/new-model")]["status"] == "pass"
    _, lines = checks(recipe(tmp_path, hub_repo="me/new-model"))
    assert "no repo.write permission in me" in lines[("hub_repo", "me/new-model")]["detail"]


def test_without_huggingface_hub_the_hub_checks_say_how_to_install_it(tmp_path, clouds_ok, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    monkeypatch.setenv("HF_TOKEN", HF_CANARY)
    code, lines = checks(recipe(tmp_path, hub_repo="me/new-model"))
    for key in (("model", "sftlaunch-test/public-model"), ("hub_repo", "me/new-model")):
        assert lines[key]["status"] == "unknown" and 'pip install "sftlaunch[train]"' in lines[key]["fix"]
    assert code == 0  # could not check is shown, not fatal


def test_offline_mode_is_could_not_check(tmp_path, clouds_ok):
    code, lines = checks(recipe(tmp_path))  # conftest sets HF_HUB_OFFLINE=1
    line = lines[("model", "sftlaunch-test/public-model")]
    assert code == 0 and line["status"] == "unknown" and "unset HF_HUB_OFFLINE" in line["fix"]


# -- buckets --------------------------------------------------------------------------------------
def test_bucket_writable_missing_and_read_only(tmp_path, s3, clouds_ok):
    code, lines = checks(recipe(tmp_path, model="sftlaunch/tiny-llama", bucket="s3://sftl-writable/runs"))
    assert code == 0 and lines[("bucket", "s3://sftl-writable/runs")]["status"] == "pass"
    left = s3.client.list_objects_v2(Bucket="sftl-writable").get("Contents", [])
    assert left == []  # the probe object was deleted

    code, lines = checks(recipe(tmp_path, model="sftlaunch/tiny-llama", bucket="s3://sftl-nowhere/runs"))
    line = lines[("bucket", "s3://sftl-nowhere/runs")]
    assert code == 2 and "does not exist" in line["detail"] and "aws s3 mb s3://sftl-nowhere" in line["fix"]

    s3.as_reader()
    code, lines = checks(recipe(tmp_path, model="sftlaunch/tiny-llama", bucket="s3://sftl-readonly/runs"))
    line = lines[("bucket", "s3://sftl-readonly/runs")]
    assert code == 2 and "refused" in line["detail"] and "s3:PutObject" in line["fix"]


@pytest.mark.parametrize("status, kind", [(404, "missing"), (403, "denied"), (401, "badcreds"), (500, "unknown")])
def test_gcs_errors_as_gcsfs_raises_them(status, kind):
    from gcsfs.retry import validate_response

    with pytest.raises(Exception) as info:  # gcsfs's own mapping of the JSON API's answers
        validate_response(status, b'{"error": {"code": %d, "message": "no"}}' % status, "b/o")
    assert pf._classify_store_error(info.value) == kind


def test_gcs_bucket_without_google_credentials(tmp_path, clouds_ok, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # not on a Google VM, and never wait for one
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    code, lines = checks(recipe(tmp_path, model="sftlaunch/tiny-llama", bucket="gs://sftl-test/runs"))
    line = lines[("bucket", "gs://sftl-test/runs")]
    assert code == 2 and "no credentials for it on this machine" in line["detail"]
    assert "gcloud auth application-default login" in line["fix"]


def test_s3_bucket_without_keys_in_the_environment(tmp_path, clouds_ok, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    code, lines = checks(recipe(tmp_path, model="sftlaunch/tiny-llama", bucket="s3://sftl-writable/runs"))
    line = lines[("bucket", "s3://sftl-writable/runs")]
    assert code == 2 and "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set" in line["detail"]


def test_bucket_flag_is_checked_instead_of_output_bucket(tmp_path, s3, clouds_ok):
    path = recipe(tmp_path, model="sftlaunch/tiny-llama", bucket="s3://sftl-nowhere/runs")
    code, lines = checks(path, "--bucket", "s3://sftl-writable/other")
    assert code == 0 and lines[("bucket", "s3://sftl-writable/other")]["status"] == "pass"


# -- clouds ---------------------------------------------------------------------------------------
def test_no_cloud_credentials_from_skypilots_own_check(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", "http://127.0.0.1:9")
    code, lines = checks(recipe(tmp_path, model="sftlaunch/tiny-llama", clouds=("runpod", "lambda")))
    assert code == 2
    runpod, lam = lines[("cloud", "runpod")], lines[("cloud", "lambda")]
    assert runpod["status"] == lam["status"] == "fail"
    assert "~/.runpod/config.toml does not exist" in runpod["detail"] and "runpod config" in runpod["fix"]
    assert "lambda_keys" in lam["fix"]


def test_one_cloud_with_credentials_is_enough(monkeypatch):
    lines = pf.cloud_lines(["runpod", "gcp"], {"runpod": (False, "no key"), "gcp": (True, "")})
    assert [ln.status for ln in lines] == ["warn", "pass"] and "gcp will be used" in lines[0].detail


def test_without_skypilot_the_cloud_check_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sky" else real(name, *a))
    code, lines = checks(recipe(tmp_path, model="sftlaunch/tiny-llama"))
    line = lines[("cloud", "runpod")]
    assert code == 0 and line["status"] == "unknown" and 'pip install "sftlaunch[cloud]"' in line["fix"]


def test_the_command_never_imports_skypilot_itself(tmp_path):
    for args in (["preflight", "--help"], ["preflight", recipe(tmp_path, model="sftlaunch/tiny-llama", clouds=("local",))]):
        result = _probe(*args)
        assert result["code"] == 0 and result["heavy"] == [], args


# -- deadlines and secrets ------------------------------------------------------------------------
def test_a_hanging_endpoint_is_could_not_check_within_the_timeout(tmp_path, hanging, clouds_ok, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", hanging)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", HF_CANARY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", hanging)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPREFLIGHTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_CANARY)
    path = recipe(tmp_path, hub_repo="me/new-model", bucket="s3://sftl-writable/runs",
                  sources=[{"path": "ehartford/dolphin", "format": "dolphin"}])
    start = time.monotonic()
    res = CliRunner(mix_stderr=False).invoke(cli, ["preflight", path, "--timeout", "1.5", "--json"])
    elapsed = time.monotonic() - start
    out = json.loads(res.stdout)
    stuck = {c["check"]: c for c in out["checks"] if c["check"] not in ("cloud", "image")}
    assert set(stuck) == {"model", "hub_repo", "data[0]", "bucket"}
    for c in stuck.values():
        assert c["status"] == "unknown", c
    assert "no answer within 1.5 s" in stuck["hub_repo"]["detail"]  # whoami has no timeout of its own
    assert res.exit_code == 0 and elapsed < 10, elapsed  # the checks run at once, each with its deadline


def test_no_secret_value_in_any_output(tmp_path, hub, s3, clouds_ok, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_CANARY)
    path = recipe(tmp_path, model=GATED, hub_repo="other/taken", bucket="s3://sftl-nowhere/runs")
    outputs = [run(path).output, run(path, "--json").output]
    # A token the Hub refuses and keys the store rejects: their errors must not echo them either.
    monkeypatch.setenv("HF_TOKEN", "hf_CANARYrefused0123456789abcdefXYZ")
    s3.as_reader()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "CANARYrejectedSECRET0123456789abcdef")
    outputs += [run(path).output, run(path, "--json").output]
    for out in outputs:
        for canary in (HF_CANARY, AWS_CANARY, "hf_CANARYrefused0123456789abcdefXYZ", "CANARYrejectedSECRET0123456789abcdef"):
            assert canary not in out
    assert all("FAIL" in out or '"fail"' in out for out in outputs)
    bucket = json.loads(outputs[-1])["checks"][3]
    assert bucket["check"] == "bucket" and "did not accept these credentials" in bucket["detail"]
    assert "export AWS_ACCESS_KEY_ID" in bucket["fix"]
    model = json.loads(outputs[-1])["checks"][0]
    assert "refused HF_TOKEN (invalid, expired or revoked)" in model["detail"]


# -- up -------------------------------------------------------------------------------------------
@pytest.fixture()
def fake_sky(monkeypatch):
    from launcher.backends import sky as sky_backend

    fake = FakeSky()
    monkeypatch.setattr(sky_backend, "_backend_factory", lambda: fake)

    def plan(recipe, cloud=None, gpu=None, spot=None):
        cands = [FakeCandidate("runpod", total_usd=5.0), FakeCandidate("gcp", total_usd=6.0)]
        cands = [c for c in cands if cloud is None or c.cloud == cloud]
        return FakePlan(cands, cands[0] if cands else None)

    monkeypatch.setattr("launcher.commands.up_cloud._candidates", plan)
    return fake


def test_up_runs_preflight_before_anything_is_launched(tmp_path, hub, s3, fake_sky, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_CANARY)
    path = recipe(tmp_path, model=GATED, bucket="s3://sftl-writable/runs", clouds=("runpod", "gcp"))
    res = CliRunner().invoke(cli, ["up", path, "--yes"])
    assert res.exit_code == 2 and "accept the license at" in res.output
    assert "preflight: 1 check(s) failed" in res.output and "nothing was launched" in res.output
    assert not fake_sky.launched and Registry().list() == []
    assert [c[0] for c in fake_sky.calls] == ["check"]  # credentials were asked once, by up itself

    res = CliRunner().invoke(cli, ["up", path, "--dry-run"])  # shows it all, then exit 2 at its end
    assert res.exit_code == 2 and "dry run: nothing launched." in res.output
    assert res.output.index("Preflight") < res.output.index("SkyPilot optimizer (dry run)")
    assert "preflight failed" in res.output.splitlines()[-1] and HF_CANARY not in res.output

    path = recipe(tmp_path, model="other/granted-model", bucket="s3://sftl-writable/runs", clouds=("runpod", "gcp"))
    res = CliRunner().invoke(cli, ["up", path, "--yes", "--detach"])
    assert res.exit_code == 0, res.output
    assert "preflight: ok" in res.output and len(fake_sky.launched) == 1


def test_up_dry_run_without_cloud_credentials_still_shows_the_table(tmp_path, hub, fake_sky, monkeypatch):
    fake_sky.enabled = set()
    path = recipe(tmp_path, model=GATED, clouds=("runpod", "gcp"))
    res = CliRunner().invoke(cli, ["up", path, "--dry-run"])
    assert res.exit_code == 2 and "no HF_TOKEN" in res.output and "No credentials for any allowed cloud" in res.output
    assert "│ cloud" not in res.output  # the clouds' own lines follow the table, each with its set-up step
    path = recipe(tmp_path, model="sftlaunch-test/public-model", clouds=("runpod", "gcp"))
    res = CliRunner().invoke(cli, ["up", path, "--dry-run"])
    assert res.exit_code == 0 and "preflight: ok" in res.output and "nothing launched" in res.output


def test_up_local_checks_only_what_asks_a_service(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("SFTLAUNCH_LOCAL_DOCKER", "0")
    monkeypatch.setenv("HF_TOKEN", READ_CANARY)
    path = recipe(tmp_path, model="sftlaunch/tiny-llama", hub_repo="me/new-model", clouds=("local",))
    res = CliRunner().invoke(cli, ["up", "--local", path, "--dry-run"])
    assert res.exit_code == 2 and "read-only token" in res.output and "dry run: nothing started." in res.output
    assert "data[0]" not in res.output and "cloud" not in res.output.split("Preflight")[1]
    path = recipe(tmp_path, model="sftlaunch/tiny-llama", clouds=("local",))
    res = CliRunner().invoke(cli, ["up", "--local", path, "--dry-run"])
    assert res.exit_code == 0 and "Preflight" not in res.output  # nothing to ask a service about
