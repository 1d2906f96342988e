"""The image's ENTRYPOINT against how each cloud starts a `docker:` image, per the installed
SkyPilot 0.14.1: RunPod hands its pod start command to the ENTRYPOINT as arguments (it cannot
override it), so docker/entrypoint.sh must run anything that is not one of its steps; GCP/Lambda
and Kubernetes replace the ENTRYPOINT themselves."""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "docker" / "entrypoint.sh"


def entry(*args, **env):
    return subprocess.run(["bash", str(ENTRY), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def runpod_start_command(monkeypatch) -> str:
    """The `docker_args` SkyPilot's RunPod provisioner gives RunPod's create_pod, captured."""
    pytest.importorskip("sky")
    pytest.importorskip("runpod")
    import runpod
    from sky.provision.runpod import utils

    seen = {}
    monkeypatch.setattr(runpod, "get_gpu", lambda gpu_id: {"memoryInGb": 80}, raising=False)
    monkeypatch.setattr(runpod, "create_pod", lambda **params: seen.update(params) or {"id": "pod-1"}, raising=False)
    pod = utils.launch(cluster_name="sftl-x-0000", node_type="head", instance_type="1x_H100_SECURE",
                       region="US", zone="US-KS-2", disk_size=100, image_name="ghcr.io/sftlaunch/sftlaunch:0.1.0-root",
                       ports=None, public_key="ssh-ed25519 AAAA test", preemptible=False, bid_per_gpu=0.0,
                       docker_login_config=None)
    assert pod == "pod-1" and seen["image_name"] == "ghcr.io/sftlaunch/sftlaunch:0.1.0-root"
    return seen["docker_args"]


def test_runpods_start_command_reaches_the_entrypoint_and_runs(monkeypatch, tmp_path):
    docker_args = runpod_start_command(monkeypatch)
    argv = shlex.split(docker_args)
    assert argv[:2] == ["bash", "-c"]
    body = base64.b64decode(argv[2].split("echo ", 1)[1].split(" |", 1)[0]).decode()
    assert "sshd" in body and body.endswith("sleep infinity")  # the pod lives only while this runs
    # The same shape, with a body that can run here: executed, not refused.
    marker = tmp_path / "ran"
    proc = entry("bash", "-c", f"echo ok; touch {marker}")
    assert proc.returncode == 0 and proc.stdout == "ok\n" and marker.exists(), proc.stderr
    # ...and when the whole command arrives as one argument (RunPod stores it as one string).
    proc = entry("bash -c 'echo one string'")
    assert proc.returncode == 0 and proc.stdout == "one string\n", proc.stderr


def test_passthrough_keeps_exit_codes_and_needs_no_recipe():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFTLAUNCH_")}
    proc = subprocess.run(["bash", str(ENTRY), "bash", "-c", "exit 7"], capture_output=True, text=True, env=env)
    assert proc.returncode == 7 and "SFTLAUNCH_RECIPE" not in proc.stderr
    proc = subprocess.run(["bash", str(ENTRY), "nvidia-smi-not-installed-here", "-L"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: usage: entrypoint.sh")


def test_gcp_lambda_and_kubernetes_replace_the_entrypoint_themselves():
    pytest.importorskip("sky")
    import sky
    from sky.provision import docker_utils

    # GCP and Lambda: SkyPilot starts the container on the VM with its own entrypoint.
    cmd = docker_utils.docker_start_cmds("ghcr.io/sftlaunch/sftlaunch:0.1.0", "sky_container", [], "docker")
    assert "--entrypoint=/bin/bash" in cmd
    # Kubernetes: the pod spec's `command:` overrides the image's ENTRYPOINT.
    template = (Path(sky.__file__).parent / "templates" / "kubernetes-ray.yml.j2").read_text()
    assert 'command: ["/bin/bash", "-c", "--"]' in template


def test_the_steps_still_run_as_steps():
    proc = entry("train", SFTLAUNCH_RECIPE="/nonexistent/recipe.yaml")
    assert proc.returncode == 2 and "SFTLAUNCH_RECIPE=/nonexistent/recipe.yaml: no such file" in proc.stderr
