"""jobs.dist: SkyPilot env → launcher argv (pure), and a worker giving up on an unreachable head."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from jobs.dist import RendezvousTimeout, launch_args, topology, wait_for_head

PY = "/py"


def _env(nodes=1, rank=0, gpus=0, ips=("10.0.0.1",), **extra):
    return {"SKYPILOT_NUM_NODES": str(nodes), "SKYPILOT_NODE_RANK": str(rank),
            "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus), "SKYPILOT_NODE_IPS": "\n".join(ips), **extra}


def test_single_gpu_or_cpu_is_one_plain_process():
    assert launch_args(_env(gpus=1), ["--out", "o"], python=PY) == [PY, "-m", "jobs", "train", "--out", "o"]
    assert launch_args({}, [], python=PY) == [PY, "-m", "jobs", "train"]


def test_multi_node_gpus_use_accelerate_with_global_process_count_and_head_ip():
    argv = launch_args(_env(nodes=2, rank=1, gpus=8, ips=("10.0.0.1", "10.0.0.2")), ["--out", "o"], python=PY)
    joined = " ".join(argv)
    assert argv[:3] == [PY, "-m", "accelerate.commands.launch"]
    assert "--num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.1 --main_process_port 29500" in joined
    assert "--num_processes 16" in joined and joined.endswith("-m jobs train --out o")
    assert "--use_deepspeed" not in joined


def test_deepspeed_config_is_passed_to_accelerate():
    argv = launch_args(_env(gpus=4), [], deepspeed_config="/x/zero3.json", python=PY)
    joined = " ".join(argv)
    assert "--num_machines 1 --machine_rank 0" in joined and "--num_processes 4" in joined
    assert "--use_deepspeed --deepspeed_config_file /x/zero3.json" in joined


def test_cpu_nodes_use_torchrun_with_one_process_each_by_default():
    argv = launch_args(_env(nodes=2, rank=0, ips=("h", "w"), SFTLAUNCH_MASTER_PORT="1234"), [], python=PY)
    assert argv[:3] == [PY, "-m", "torch.distributed.run"]
    assert " ".join(argv[3:]).startswith("--nnodes 2 --node_rank 0 --master_addr h --master_port 1234 --nproc_per_node 1")
    two = launch_args({"SFTLAUNCH_CPU_PROCS": "2"}, [], python=PY)
    assert "--nproc_per_node 2" in " ".join(two) and "--nnodes 1" in " ".join(two)


def test_head_is_the_first_ip_with_surrounding_whitespace_ignored():
    t = topology({"SKYPILOT_NODE_IPS": "\n 10.1.1.1 \n10.1.1.2\n", "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1"})
    assert t["head"] == "10.1.1.1" and t["nodes"] == 2 and t["rank"] == 1


@pytest.mark.parametrize("env,field", [
    (_env(nodes=3, ips=("a", "b")), "SKYPILOT_NODE_IPS"),
    (_env(nodes=2, rank=2, ips=("a", "b")), "SKYPILOT_NODE_RANK"),
    ({"SKYPILOT_NUM_GPUS_PER_NODE": "eight"}, "SKYPILOT_NUM_GPUS_PER_NODE"),
])
def test_inconsistent_env_is_a_user_error(env, field):
    from sftcore.errors import UserError

    with pytest.raises(UserError, match=field):
        launch_args(env)


def test_unreachable_head_fails_within_the_timeout():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RendezvousTimeout, match=f"127.0.0.1:{port} not reachable after 2s"):
        wait_for_head("127.0.0.1", port, timeout_s=2, poll_s=0.2)
    assert time.monotonic() - t0 < 8


def test_worker_exits_1_with_one_line_when_the_head_never_answers(tmp_path):
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**_env(nodes=2, rank=1, ips=("127.0.0.1", "127.0.0.2")), "SFTLAUNCH_MASTER_PORT": str(port),
           "SFTLAUNCH_RENDEZVOUS_TIMEOUT": "2", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "jobs.dist", "train", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=str(__import__("jobs").__path__[0] + "/.."))
    assert proc.returncode == 1
    assert f"head node 127.0.0.1:{port} not reachable after 2s" in proc.stderr


def _accelerate_view(argv: list[str]):
    """What accelerate itself makes of our argv: its own parser, its own validation, and its own
    DeepSpeed command preparation (accelerate/commands/launch.py, accelerate/utils/launch.py)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(argv[3:])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before deepspeed_launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config) if defaults else ""
    return args


def test_two_node_deepspeed_takes_accelerates_torchrun_path_never_pdsh(tmp_path, monkeypatch):
    import torch.distributed.run as distrib_run
    from accelerate.commands.launch import _filter_args
    from accelerate.utils.constants import DEEPSPEED_MULTINODE_LAUNCHERS
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    monkeypatch.setenv("HOME", str(tmp_path))  # no accelerate default_config.yaml is read
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    argv = launch_args(_env(nodes=2, rank=1, gpus=8, ips=("10.0.0.1", "10.0.0.2")), ["--out", "o"],
                       deepspeed_config="/x/zero3.json", python=PY)
    args = _accelerate_view(argv)
    assert args.use_deepspeed and args.num_machines == 2
    assert args.deepspeed_multinode_launcher == DEEPSPEED_MULTINODE_LAUNCHERS[1] == "standard"
    cmd, _env_out = prepare_deepspeed_cmd_env(args)
    assert cmd is None  # a `deepspeed --hostfile ... --launcher pdsh` command would be here otherwise
    targs = _filter_args(args, distrib_run.get_args_parser(),
                         ["--training_script", args.training_script, "--training_script_args", args.training_script_args])
    config, cmd, cmd_args = distrib_run.config_from_args(targs)
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (2, 2, 8)
    assert config.rdzv_backend == "static" and config.rdzv_endpoint == "10.0.0.1:29500"
    assert config.rdzv_configs["rank"] == 1
    assert cmd_args[-4:] == ["jobs", "train", "--out", "o"]


def test_the_old_two_node_argv_would_have_taken_pdsh(tmp_path, monkeypatch):
    """The check above can fail: without the launcher flag accelerate builds a pdsh command."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    monkeypatch.setenv("HOME", str(tmp_path))
    argv = launch_args(_env(nodes=2, rank=1, gpus=8, ips=("10.0.0.1", "10.0.0.2")), [],
                       deepspeed_config="/x/zero3.json", python=PY)
    i = argv.index("--deepspeed_multinode_launcher")
    args = _accelerate_view(argv[:i] + argv[i + 2:])
    cmd, _ = prepare_deepspeed_cmd_env(args)
    assert cmd[0] == "deepspeed" and "pdsh" in cmd


def test_single_node_multi_gpu_goes_through_accelerates_multi_gpu_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = _accelerate_view(launch_args(_env(gpus=4), [], python=PY))
    assert args.multi_gpu and not args.use_deepspeed and args.num_processes == 4 and args.num_machines == 1


def test_a_gpu_node_whose_torch_sees_no_gpu_exits_1_in_seconds_naming_driver_and_cuda(tmp_path):
    import subprocess

    env = {**_env(gpus=1), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jobs.dist", "train", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=str(__import__("jobs").__path__[0] + "/.."))
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - t0 < 60
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("failed: torch sees 0 of the 1 GPU(s) this node was launched with")
    assert "driver " in line and "torch " in line and "Not training on the CPU" in line
    assert "launch:" not in proc.stdout  # nothing was started


def test_gpu_facts_driver_from_proc_and_minimum_driver_per_cuda_major(tmp_path):
    from jobs import gpu_env

    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.124.06  Release Build  (dvs-builder@U16)\n"
                    "GCC version:  gcc version 12.3.0\n")
    assert gpu_env.driver_version(proc) == "570.124.06"
    old = gpu_env.GpuFacts(torch_version="2.13.0", torch_cuda="13.0", driver="570.124.06",
                           cuda_error="The NVIDIA driver on your system is too old (found version 12080)")
    assert old.min_driver() == "580.65.06" and old.driver_too_old()
    why = gpu_env.missing_gpus(8, old)
    assert "torch sees 0 of the 8 GPU(s)" in why and "570.124.06 is older than CUDA 13.0 needs (>= 580.65.06)" in why
    assert "found version 12080" in why
    ok = gpu_env.GpuFacts(torch_version="2.13.0", torch_cuda="12.8", driver="570.124.06", visible=8)
    assert not ok.driver_too_old() and gpu_env.missing_gpus(8, ok) is None
    half = gpu_env.GpuFacts(torch_version="2.13.0", torch_cuda="12.8", driver="570.124.06", visible=4)
    assert "the devices were not passed into the container" in gpu_env.missing_gpus(8, half)
    cpu = gpu_env.GpuFacts(torch_version="2.13.0+cpu", torch_cuda=None)
    assert "CPU-only torch" in gpu_env.missing_gpus(1, cpu)
    assert gpu_env.missing_gpus(0, cpu) is None


def test_gcp_default_gpu_image_has_the_driver_the_image_cuda_needs():
    """docs/clouds.md's driver table, checked against SkyPilot's own GCP class: the default GPU
    image (Turing and newer) carries NVIDIA 580 + CUDA 13, what torch 2.13's PyPI build needs."""
    from sky.clouds import gcp

    assert gcp._DEFAULT_GPU_IMAGE_ID.endswith("-cuda13")
    assert gcp.GCP._get_gpu_image_id("H100") == gcp._DEFAULT_GPU_IMAGE_ID
    assert gcp.GCP._get_gpu_image_id("V100") != gcp._DEFAULT_GPU_IMAGE_ID  # pre-Turing: 535 / CUDA 12


def test_runpod_provisioning_passes_no_cuda_filter():
    """Why RunPod needs care (docs/clouds.md): SkyPilot's RunPod provisioner never sets RunPod's
    allowedCudaVersions, so a pod can land on a host whose driver predates the image's CUDA."""
    import inspect

    from sky.provision.runpod import utils

    src = inspect.getsource(utils.launch)
    assert "create_pod" in src and "allowed_cuda_versions" not in src and "cuda_version" not in src
