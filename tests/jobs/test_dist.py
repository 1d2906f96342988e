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
    from launcher.errors import UserError

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
