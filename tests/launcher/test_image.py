"""`sftlaunch image build|push` against a fake `docker` on PATH (this machine has a docker CLI
but no engine, and CI has neither): the fake records its argv and, for `buildx build`, writes the
metadata file buildx would write, so the digest bookkeeping is tested end to end."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher import __version__, images
from launcher.cli import cli

DIGEST = "sha256:" + "ab12" * 16
FAKE_DOCKER = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    argv = sys.argv[1:]
    with open(os.environ["FAKE_DOCKER_LOG"], "a") as f:
        f.write(json.dumps(argv) + "\\n")
    mode = os.environ.get("FAKE_DOCKER_MODE", "ok")
    if argv[:1] == ["info"]:
        if mode == "nodaemon":
            sys.stderr.write("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                             "Is the docker daemon running?\\n")
            sys.exit(1)
        print("27.3.1")
        sys.exit(0)
    if argv[:2] == ["buildx", "version"]:
        if mode == "nobuildx":
            sys.stderr.write("docker: unknown command: docker buildx\\n")
            sys.exit(1)
        print("github.com/docker/buildx v0.19.3")
        sys.exit(0)
    if argv[:2] == ["buildx", "build"]:
        if mode == "buildfails":
            sys.stderr.write("ERROR: failed to solve\\n")
            sys.exit(1)
        meta = argv[argv.index("--metadata-file") + 1]
        tag = argv[argv.index("--tag") + 1]
        data = {{"image.name": tag, "containerimage.config.digest": "sha256:" + "cd34" * 16}}
        if mode != "nodigest":
            data["containerimage.digest"] = "{digest}"
        with open(meta, "w") as f:
            json.dump(data, f)
        sys.exit(0)
    if argv[:3] == ["buildx", "imagetools", "inspect"]:
        print(json.dumps({{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "{digest}"}}))
        sys.exit(0)
    sys.stderr.write("fake docker: unexpected " + " ".join(argv) + "\\n")
    sys.exit(99)
    """
)


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker"
    exe.write_text(FAKE_DOCKER.format(python=sys.executable, digest=DIGEST))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "docker-argv.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    monkeypatch.delenv("SFTLAUNCH_IMAGE_REPO", raising=False)

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


def invoke(*args: str):
    result = CliRunner(mix_stderr=False).invoke(cli, list(args))
    assert "Traceback" not in result.stdout + result.stderr
    return result


def _build_call(calls) -> list[str]:
    builds = [c for c in calls() if c[:2] == ["buildx", "build"]]
    assert len(builds) == 1, calls()
    return builds[0]


def _build_args(argv: list[str]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "--build-arg"]
    return dict(p.split("=", 1) for p in pairs)


def test_build_runs_buildx_with_version_tag_and_loads(fake_docker):
    result = invoke("image", "build")
    assert result.exit_code == 0, result.stderr
    argv = _build_call(fake_docker)
    tag = f"ghcr.io/sftlaunch/sftlaunch:{__version__}"
    assert argv[argv.index("--tag") + 1] == tag
    assert argv[argv.index("--file") + 1].endswith("docker/Dockerfile")
    assert argv[argv.index("--platform") + 1] == "linux/amd64"
    assert "--load" in argv and "--push" not in argv
    assert Path(argv[-1]) == Path(argv[argv.index("--file") + 1]).parents[1]  # context = repo root
    args = _build_args(argv)
    assert args["SFTLAUNCH_VERSION"] == __version__ and "IMAGE_USER" not in args
    assert f"built {tag} ({DIGEST})" in result.stdout
    # A local build records nothing: only a pushed digest is something a cloud host can pull.
    assert not images.images_file().exists()
    assert images.resolve_image(None) == tag


def test_push_records_digest_and_runs_resolve_to_it(fake_docker):
    result = invoke("image", "push", "--tag", "registry.example.com:5000/me/sftl:exp1")
    assert result.exit_code == 0, result.stderr
    argv = _build_call(fake_docker)
    assert "--push" in argv and "--load" not in argv
    ref = f"registry.example.com:5000/me/sftl@{DIGEST}"
    assert ref in result.stdout
    assert json.loads(images.images_file().read_text()) == {"registry.example.com:5000/me/sftl:exp1": ref}

    # The default tag for this version, pushed: recipes without `image:` now render by digest.
    assert invoke("image", "push").exit_code == 0
    default_ref = f"ghcr.io/sftlaunch/sftlaunch@{DIGEST}"
    assert images.resolve_image(None) == default_ref
    assert images.resolve_image("me/custom:1") == "me/custom:1"  # a recipe's image: wins
    assert images.resolve_image(None, cloud="runpod") == f"ghcr.io/sftlaunch/sftlaunch:{__version__}-root"


def test_render_uses_the_recorded_digest(fake_docker):
    from launcher.render import Target, render_task
    from sftcore.recipe import load_recipe

    assert invoke("image", "push").exit_code == 0
    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "llama2-70b-qlora.yaml")
    task = render_task(recipe, Target(cloud="lambda", gpu="H100"), "sftl-x-0000", "/tmp/r.yaml")
    assert task["resources"]["image_id"] == f"docker:ghcr.io/sftlaunch/sftlaunch@{DIGEST}"


def test_push_root_variant_for_runpod(fake_docker):
    result = invoke("--json", "image", "push", "--root")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["tag"] == f"ghcr.io/sftlaunch/sftlaunch:{__version__}-root"
    assert _build_args(_build_call(fake_docker))["IMAGE_USER"] == "root"
    assert images.resolve_image(None, cloud="runpod") == f"ghcr.io/sftlaunch/sftlaunch@{DIGEST}"
    assert images.resolve_image(None, cloud="gcp") == f"ghcr.io/sftlaunch/sftlaunch:{__version__}"


def test_push_falls_back_to_imagetools_for_the_digest(fake_docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_MODE", "nodigest")
    result = invoke("image", "push")
    assert result.exit_code == 0, result.stderr
    assert any(c[:3] == ["buildx", "imagetools", "inspect"] for c in fake_docker())
    assert images.resolve_image(None) == f"ghcr.io/sftlaunch/sftlaunch@{DIGEST}"


def test_no_daemon_is_exit_2_with_the_fix(fake_docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_MODE", "nodaemon")
    result = invoke("image", "build")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Docker daemon reachable")
    assert "systemctl start docker" in lines[0] and "DOCKER_HOST" in lines[0]
    assert not any(c[:2] == ["buildx", "build"] for c in fake_docker())


def test_docker_not_installed_is_exit_2(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = invoke("image", "push")
    assert result.exit_code == 2
    assert "docker is not installed" in result.stderr
    assert not images.images_file().exists()


def test_missing_buildx_is_exit_2(fake_docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_MODE", "nobuildx")
    result = invoke("image", "build")
    assert result.exit_code == 2 and "buildx is not available" in result.stderr


def test_failed_build_is_exit_1_and_records_nothing(fake_docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_MODE", "buildfails")
    result = invoke("image", "push")
    assert result.exit_code == 1 and "docker login ghcr.io" in result.stderr
    assert not images.images_file().exists()


def test_dry_run_prints_the_command_and_runs_nothing(fake_docker):
    result = invoke("image", "push", "--dry-run", "--tag", "me/sftl:t", "--build-arg", "FLASH_ATTN_VERSION=2.8.3")
    assert result.exit_code == 0
    assert result.stdout.startswith("docker buildx build ")
    assert "--push" in result.stdout and "FLASH_ATTN_VERSION=2.8.3" in result.stdout and "me/sftl:t" in result.stdout
    assert fake_docker() == []
    assert not images.images_file().exists()


@pytest.mark.parametrize("arg", ["HF_TOKEN=hf_abc", "nonsense", "=x"])
def test_bad_or_secret_build_args_are_refused(fake_docker, arg):
    result = invoke("image", "build", "--build-arg", arg)
    assert result.exit_code == 2
    assert "hf_abc" not in result.stdout + result.stderr
    assert fake_docker() == []


def test_corrupt_images_json_is_ignored_not_fatal():
    images.images_file().parent.mkdir(parents=True, exist_ok=True)
    images.images_file().write_text("{not json")
    assert images.resolve_image(None) == images.default_tag()


def test_split_tag_keeps_registry_ports():
    assert images.split_tag("localhost:5000/a/b:t") == ("localhost:5000/a/b", "t")
    assert images.split_tag("localhost:5000/a/b") == ("localhost:5000/a/b", None)
    assert images.split_tag("me/x:1") == ("me/x", "1")


@pytest.mark.parametrize("tag,why", [
    ("Bad::tag", "repository component 'Bad:'"),
    ("Me/sftl:1", "repository component 'Me'"),
    ("me/sftl:", "tag ''"),
    ("me/sftl:-x", "tag '-x'"),
    ("me//sftl", "repository component ''"),
    ("me/sftl@sha256:" + "0" * 64, "a digest"),
    ("bad_host!:5000/me/sftl:1", "registry 'bad_host!:5000' is not a host[:port]"),
    ("me/" + "a" * 260, "longer than 255"),
])
def test_bad_tags_are_refused_before_docker_runs(fake_docker, tag, why):
    for verb in ("build", "push"):
        result = invoke("image", verb, "--tag", tag)
        assert result.exit_code == 2, result.stdout + result.stderr
        line = result.stderr.strip()
        assert line.startswith(f"error: --tag {tag!r}: not a valid image reference") and why in line
        assert len(line.splitlines()) == 1
    assert fake_docker() == [] and not images.images_file().exists()


@pytest.mark.parametrize("tag", ["me/sftl", "me/sftl:0.1.0", "ghcr.io/a-b/c.d_e:v1.2-rc_3", "localhost:5000/x/y:z",
                                 "[::1]:5000/me/sftl:1", "registry.example.com:5000/me/sftl:exp1", "a__b/c--d"])
def test_good_tags_pass(tag):
    assert images.reference_problem(tag) is None
