"""Local runs: a detached process group with its exit code beside run.log; Docker by name only."""

from __future__ import annotations

from click.testing import CliRunner

from launcher.backends import local
from launcher.cli import cli
from launcher.runs import Registry, run_dir


class _Recipe:
    image = None

    def to_yaml(self):
        return "name: local\n"


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


def test_budget_exit_is_recorded_as_stopped(monkeypatch):
    rec = _start(monkeypatch, "echo saving a checkpoint; exit 3", rid="sftl-local-0003")
    assert local.follow_log(rec, lambda line: None) == 3
    state, detail = local.poll(rec)
    assert state == "stopped" and "budget" in detail
