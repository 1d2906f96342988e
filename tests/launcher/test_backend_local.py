"""Local runs: a detached process group with its exit code beside run.log; Docker by name only."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.backends import local
from launcher.cli import cli
from launcher.runs import Registry, run_dir
from tests.launcher.fake_backend import STUB_RECIPE_YAML


class _Recipe:
    image = None
    eval = {"tasks": ["tiny_mc"]}

    def to_yaml(self):
        return STUB_RECIPE_YAML


class _NoEvalRecipe(_Recipe):
    eval = None  # `eval: null`


def _start(monkeypatch, command, rid="sftl-local-0002"):
    monkeypatch.setattr(local, "_direct_command", lambda recipe_path, steps: command)
    fields = local.start(_Recipe(), rid, run_dir(rid), use_docker=False)
    Registry().create(rid, {"name": "local"}, state="running", cloud="local", usd_per_hour=0.0, **fields)
    return Registry().get(rid)


def test_follow_poll_and_status(monkeypatch):
    rec = _start(monkeypatch, 'echo "$SFTLAUNCH_RUN_ID starts"; echo \'{"step": 2, "total_steps": 4}\' '
                              '> "$SFTLAUNCH_OUT/metrics.jsonl"; echo done; exit 4')
    lines = []
    assert local.follow_log(rec, lines.append) == 4
    assert lines == ["sftl-local-0002 starts", "done"]
    assert local.poll(rec) == ("failed", "exit code 4")
    res = CliRunner().invoke(cli, ["status", "sftl-local-0002"])
    assert res.exit_code == 0 and "failed" in res.output and "2/4 (50%)" in res.output
    logs = CliRunner().invoke(cli, ["logs", "sftl-local-0002"])
    assert "sftl-local-0002 starts" in logs.output


def test_a_local_runs_bucket_is_its_recipes(monkeypatch, tmp_path):
    """The job reads its bucket from the recipe copy in the run dir, never from the environment:
    SFTLAUNCH_BUCKET in the user's shell (`up`'s default for cloud runs) changes nothing. A direct
    run's copy keeps output.bucket; a Docker run's copy names none (no mount or credentials)."""
    import yaml

    from sftcore.recipe import recipe_from_dict

    monkeypatch.setenv("SFTLAUNCH_BUCKET", str(tmp_path / "shell-default"))
    recipe = recipe_from_dict({**yaml.safe_load(STUB_RECIPE_YAML), "output": {"bucket": str(tmp_path / "mine")}})
    monkeypatch.setattr(local, "_direct_command", lambda recipe_path, steps: "true")
    rid = "sftl-local-0003"
    local.start(recipe, rid, run_dir(rid), use_docker=False)
    assert yaml.safe_load(local.paths(run_dir(rid))["recipe"].read_text())["output"]["bucket"] == str(tmp_path / "mine")
    monkeypatch.setattr(local, "_docker_command", lambda *a: "true")
    monkeypatch.setattr("launcher.images.resolve_image", lambda image: "img:test")
    rid = "sftl-local-0005"
    local.start(recipe, rid, run_dir(rid), use_docker=True)
    copy = local.paths(run_dir(rid))["recipe"].read_text()
    assert yaml.safe_load(copy)["output"]["bucket"] is None and "shell-default" not in copy


def test_docker_command_passes_secrets_by_name_only(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_DOCKERcanary0123456789abcdefXY")
    cmd = local._docker_command("sftl-x-0001", "ghcr.io/sftlaunch/sftlaunch:0.1.0", tmp_path / "recipe.yaml",
                                {"/sftlaunch/data/0-train.jsonl": str(tmp_path / "train.jsonl")}, tmp_path / "out")
    assert "-e HF_TOKEN " in cmd and "hf_DOCKERcanary" not in cmd
    assert "--label sftlaunch-run=sftl-x-0001" in cmd and "--name sftl-x-0001" in cmd
    assert f"{tmp_path}/train.jsonl:/sftlaunch/data/0-train.jsonl:ro" in cmd
    assert cmd.endswith("ghcr.io/sftlaunch/sftlaunch:0.1.0 all")


def test_docker_probe_honours_the_override(monkeypatch):
    monkeypatch.setenv("SFTLAUNCH_LOCAL_DOCKER", "0")
    assert local.docker_available() is False
    monkeypatch.setenv("SFTLAUNCH_LOCAL_DOCKER", "1")
    assert local.docker_available() is True


def test_budget_stop_is_recorded_as_stopped(monkeypatch):
    # jobs.train's contract: exit 0 with the STOPPED marker (the entrypoint ends with 0 too).
    rec = _start(monkeypatch, 'echo \'{"reason": "budget"}\' > "$SFTLAUNCH_OUT/STOPPED"; exit 0', rid="sftl-local-0004")
    assert local.follow_log(rec, lambda line: None) == 0
    state, detail = local.poll(rec)
    assert state == "stopped" and "budget" in detail
    res = CliRunner().invoke(cli, ["status", "--json", "sftl-local-0004"])
    assert '"state": "stopped"' in res.output


def _entrypoint_run(tmp_path, rid, recipe=None, steps=("train", "eval", "publish"), **env):
    """A local run through the real docker/entrypoint.sh with the stub job Python
    (tests/launcher/fake_backend): the ran-<step> files say which steps ran."""
    from tests.launcher.fake_backend import stub_job_python

    fields = local.start(recipe or _Recipe(), rid, run_dir(rid), steps=steps, use_docker=False,
                         extra_env={"SFTLAUNCH_PYTHON": stub_job_python(tmp_path / "bin"), **env})
    Registry().create(rid, {"name": "local"}, state="running", cloud="local", usd_per_hour=0.0, **fields)
    lines = []
    code = local.follow_log(Registry().get(rid), lines.append)
    from launcher import lifecycle

    lifecycle.refresh(Registry(), lambda: None, [Registry().get(rid, history=False)])
    ran = sorted(p.name.removeprefix("ran-") for p in run_dir(rid).glob("ran-*"))
    return code, lines, ran, Registry().get(rid)


@pytest.mark.parametrize("steps", [("train", "eval", "publish"), ("train", "publish")])
def test_a_train_stopped_early_skips_eval_and_publish_and_is_recorded_stopped(tmp_path, steps):
    code, lines, ran, rec = _entrypoint_run(tmp_path, "sftl-local-0006", steps=steps, STUB_STOP="1")
    assert code == 0 and ran == ["train"]
    assert any(line.startswith("sftlaunch: run stopped before the end of training") for line in lines)
    assert rec.state == "stopped" and "budget" in rec.history[-1]["detail"]


def test_a_local_run_is_the_entrypoints_all_over_the_recipes_steps(tmp_path):
    code, _, ran, rec = _entrypoint_run(tmp_path, "sftl-local-0007")
    assert code == 0 and ran == ["eval", "publish", "train"] and rec.state == "succeeded"
    assert (run_dir("sftl-local-0007") / "exit.json").is_file()  # written by the entrypoint
    code, _, ran, _ = _entrypoint_run(tmp_path, "sftl-local-0008", recipe=_NoEvalRecipe())
    assert code == 0 and ran == ["publish", "train"]  # eval: null drops the eval step
    code, _, ran, rec = _entrypoint_run(tmp_path, "sftl-local-0009", STUB_TRAIN_EXIT="1")
    assert code == 1 and ran == ["train"] and rec.state == "failed"


JOBS_STUB = """#!/usr/bin/env bash
# `python -m jobs STEP ...` of an install without docker/entrypoint.sh: record the call.
echo "$*" >> "$SFTLAUNCH_OUT/calls"
if [ "$3" = train ] && [ "${STUB_STOP:-0}" = 1 ]; then echo '{"reason": "budget"}' > "$SFTLAUNCH_OUT/STOPPED"; fi
"""


@pytest.mark.parametrize("stop", [False, True])
def test_without_an_entrypoint_the_steps_run_as_jobs_and_a_stop_skips_the_rest(tmp_path, monkeypatch, stop):
    import os
    import subprocess
    import sys

    stub = tmp_path / "python"
    stub.write_text(JOBS_STUB)
    stub.chmod(0o755)
    monkeypatch.setattr(local, "ENTRYPOINT", tmp_path / "no-entrypoint.sh")
    monkeypatch.setattr(sys, "executable", str(stub))
    command = local._direct_command(tmp_path / "recipe.yaml", ("train", "eval", "publish"))
    monkeypatch.undo()
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "SFTLAUNCH_OUT": str(out), "SFTLAUNCH_RUN_ID": "sftl-x-0001", "STUB_STOP": "1" if stop else "0"}
    assert subprocess.run(["bash", "-c", command], env=env, timeout=60).returncode == 0
    calls = (out / "calls").read_text().splitlines()
    assert [c.split()[2] for c in calls] == (["train"] if stop else ["train", "eval", "publish"])
    if not stop:  # eval gets the recipe, so its eval section (or `eval: null`) applies
        assert f"--recipe {tmp_path / 'recipe.yaml'}" in calls[1] and "--run-id sftl-x-0001" in calls[1]


def test_run_log_is_masked_as_it_is_written(monkeypatch):
    canary = "hf_CANARYrunLOG0123456789abcdefghij"
    monkeypatch.setenv("HF_TOKEN", canary)
    monkeypatch.setenv("WANDB_API_KEY", "wandb-canary-value-42")
    rec = _start(monkeypatch, 'echo "token $HF_TOKEN"; echo "key $WANDB_API_KEY" >&2; exit 0', rid="sftl-local-0005")
    lines = []
    assert local.follow_log(rec, lines.append) == 0
    raw = (run_dir("sftl-local-0005") / "run.log").read_text()
    assert canary not in raw and "wandb-canary-value-42" not in raw
    assert lines == ["token ****", "key ****"]


FAKE_DOCKER = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1 $2" in
  "version --format") echo "27.3.1" ;;
  "image inspect") if [ "${FAKE_DOCKER_HAS_IMAGE:-0}" = "1" ]; then echo "sha256:abc"; else
                     echo "Error: No such image: $5" >&2; exit 1; fi ;;
  *) echo "fake docker: unexpected $*" >&2; exit 99 ;;
esac
"""


@pytest.fixture
def fake_docker(monkeypatch, tmp_path):
    """A `docker` on PATH that answers like an engine without our image (FAKE_DOCKER_HAS_IMAGE=1: with it)."""
    import os

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER)
    (bindir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_HOST", "unix:///fake.sock")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(tmp_path / "docker.log"))
    monkeypatch.delenv("SFTLAUNCH_LOCAL_DOCKER", raising=False)


def test_local_uses_docker_only_when_the_image_is_there(monkeypatch, tmp_path, fake_docker):
    import os

    use, image, why = local.choose_runner(_Recipe())
    assert (use, image) == (False, None) and "has no image" in why and "sftlaunch image build" in why
    assert "image inspect --format {{.Id}} ghcr.io/sftlaunch/sftlaunch:" in (tmp_path / "docker.log").read_text()
    monkeypatch.setenv("FAKE_DOCKER_HAS_IMAGE", "1")
    use, image, why = local.choose_runner(_Recipe())
    assert use and image.startswith("ghcr.io/sftlaunch/sftlaunch:") and "in the local Docker engine" in why
    monkeypatch.setenv("SFTLAUNCH_LOCAL_DOCKER", "0")
    assert local.choose_runner(_Recipe())[0] is False
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setattr(local.Path, "exists", lambda self: False if str(self) == "/var/run/docker.sock" else
                        os.path.exists(self))
    monkeypatch.delenv("SFTLAUNCH_LOCAL_DOCKER")
    assert local.choose_runner(_Recipe())[2] == "no Docker daemon reachable"


def test_up_local_says_which_runner_it_chose(monkeypatch, tmp_path, fake_docker):
    tiny = Path(__file__).resolve().parents[2] / "recipes" / "tiny-local.yaml"
    res = CliRunner().invoke(cli, ["up", "--local", str(tiny), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "directly with" in res.output and "has no image" in res.output
    monkeypatch.setenv("FAKE_DOCKER_HAS_IMAGE", "1")
    res = CliRunner().invoke(cli, ["up", "--local", str(tiny), "--dry-run"])
    assert "in Docker, image ghcr.io/sftlaunch/sftlaunch:" in res.output


def test_container_clean_up_removes_only_containers_labelled_for_the_run(tmp_path, monkeypatch):
    """the failure path ran `docker rm -f <run_id>`, deleting any container that had the
    run id as its name. Now only containers carrying our label for this run are removed."""
    import os

    log = tmp_path / "docker.log"
    fake_docker = tmp_path / "bin" / "docker"
    fake_docker.parent.mkdir()
    # A docker CLI stand-in: `ps` answers with the one container labelled for sftl-demo-0001.
    fake_docker.write_text(f"""#!/usr/bin/env bash
echo "$@" >> {log}
if [ "$1" = "ps" ]; then
  case "$*" in *"label=sftlaunch-run=sftl-demo-0001"*) echo c0ffee123456 ;; esac
fi
""")
    fake_docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_docker.parent}{os.pathsep}{os.environ['PATH']}")
    assert local.remove_containers("sftl-demo-0001") == ["c0ffee123456"]
    assert local.remove_containers("sftl-demo-0002") == []
    calls = log.read_text().splitlines()
    assert calls == ["ps -aq --filter label=sftlaunch-run=sftl-demo-0001", "rm -f c0ffee123456",
                     "ps -aq --filter label=sftlaunch-run=sftl-demo-0002"]
