"""How one node joins a (multi-node) training run: the launcher command from SkyPilot's env.

Why a pure function: the rank/IP/GPU arithmetic is where multi-node runs go wrong, and it must
be testable without GPUs or a cluster. `launch_args(env, job_args)` maps SkyPilot's variables
(SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS newline-separated head first, SKYPILOT_NUM_NODES,
SKYPILOT_NUM_GPUS_PER_NODE) to:
  - one plain process for 1 node with at most 1 GPU (and one CPU process);
  - `accelerate launch` on GPUs (DeepSpeed config passed when the recipe uses ZeRO);
  - `torchrun` with gloo on CPU (accelerate's CPU multi-process path wants mpi4py).
SFTLAUNCH_CPU_PROCS (processes per CPU node, default 1) and SFTLAUNCH_MASTER_PORT (default 29500)
exist for tests and odd networks. A worker that cannot reach the head within
SFTLAUNCH_RENDEZVOUS_TIMEOUT seconds (default 600) fails with a message naming the address.

`python -m jobs.dist info` logs versions, GPUs and the resolved recipe (secrets masked);
`python -m jobs.dist train [train args]` runs training on this node; a node launched with GPUs
(SKYPILOT_NUM_GPUS_PER_NODE > 0) on which torch sees fewer exits 1 at once (jobs.gpu_env).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from sftcore.contract import Env, JobEnv
from sftcore.errors import JobFailed, job_exit

DEFAULT_PORT = 29500
REPO = Path(__file__).resolve().parent.parent


class RendezvousTimeout(JobFailed):
    pass


def _int(env: dict, name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        from sftcore.errors import UserError

        raise UserError(f"{name}={raw!r}: not an integer") from None


def topology(env: dict) -> dict:
    job = JobEnv.from_env(env)
    ips = [ip.strip() for ip in (env.get("SKYPILOT_NODE_IPS") or "").splitlines() if ip.strip()]
    nodes = _int(env, "SKYPILOT_NUM_NODES", len(ips) or 1)
    rank = _int(env, "SKYPILOT_NODE_RANK", 0)
    gpus = _int(env, "SKYPILOT_NUM_GPUS_PER_NODE", 0)
    head = ips[0] if ips else "127.0.0.1"
    if nodes > 1 and len(ips) < nodes:
        from sftcore.errors import UserError

        raise UserError(f"SKYPILOT_NUM_NODES={nodes} but SKYPILOT_NODE_IPS lists {len(ips)} address(es)")
    if not 0 <= rank < nodes:
        from sftcore.errors import UserError

        raise UserError(f"SKYPILOT_NODE_RANK={rank} is outside 0..{nodes - 1}")
    return {"nodes": nodes, "rank": rank, "gpus": gpus, "head": head,
            "port": job.master_port or DEFAULT_PORT, "cpu_procs": job.cpu_procs or 1}


def launch_args(env: dict, job_args: list[str] | tuple[str, ...] = (), deepspeed_config: str | None = None,
                python: str = sys.executable) -> list[str]:
    """The argv that runs `jobs train` on this node."""
    t = topology(env)
    job = ["-m", "jobs", "train", *job_args]
    if t["gpus"] > 0 and (t["nodes"] > 1 or t["gpus"] > 1):
        args = [python, "-m", "accelerate.commands.launch", "--num_machines", str(t["nodes"]),
                "--machine_rank", str(t["rank"]), "--main_process_ip", t["head"],
                "--main_process_port", str(t["port"]), "--num_processes", str(t["nodes"] * t["gpus"])]
        if t["nodes"] > 1:
            args += ["--rdzv_backend", "static"]
        if deepspeed_config:
            args += ["--use_deepspeed", "--deepspeed_config_file", deepspeed_config]
            if t["nodes"] > 1:
                # accelerate's default multi-node DeepSpeed launcher is pdsh (a hostfile and ssh
                # between nodes, neither of which a SkyPilot node has): `standard` is torchrun on
                # every node, the same rendezvous the non-DeepSpeed path uses.
                args += ["--deepspeed_multinode_launcher", "standard"]
        else:
            args += ["--multi_gpu"]
        return [*args, *job]
    procs = t["gpus"] if t["gpus"] > 0 else t["cpu_procs"]
    if t["nodes"] == 1 and procs <= 1:
        return [python, *job]
    return [python, "-m", "torch.distributed.run", "--nnodes", str(t["nodes"]), "--node_rank", str(t["rank"]),
            "--master_addr", t["head"], "--master_port", str(t["port"]), "--nproc_per_node", str(procs), *job]


def wait_for_head(head: str, port: int, timeout_s: float, poll_s: float = 1.0) -> None:
    """Workers wait until the head's rendezvous port accepts connections, at most timeout_s."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            with socket.create_connection((head, port), timeout=min(5.0, max(timeout_s, 0.1))):
                return
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise RendezvousTimeout(
                f"head node {head}:{port} not reachable after {timeout_s:.0f}s ({last}); check that the head "
                f"is up and the port is open between nodes ({Env.RENDEZVOUS_TIMEOUT} raises the wait)")
        time.sleep(poll_s)


def _recipe_deepspeed(job_args: list[str], env: dict) -> str | None:
    recipe = None
    if "--recipe" in job_args:
        recipe = job_args[job_args.index("--recipe") + 1]
    recipe = recipe or JobEnv.from_env(env).recipe
    if not recipe:
        return None
    from sftcore.recipe import load_recipe

    name = load_recipe(recipe).train.deepspeed
    return str(REPO / "docker" / "deepspeed" / f"{name}.json") if name else None


def _detected_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


class NoGpu(JobFailed):
    pass


def check_gpus(expected: int) -> None:
    """Refuse to train on the CPU of a node rented with GPUs (jobs.gpu_env says why it has none)."""
    if expected <= 0:
        return
    from jobs import gpu_env

    why = gpu_env.missing_gpus(expected, gpu_env.gather())
    if why:
        raise NoGpu(why)


def run_train(job_args: list[str], env: dict | None = None) -> int:
    env = dict(os.environ if env is None else env)
    if not env.get("SKYPILOT_NUM_GPUS_PER_NODE"):
        env["SKYPILOT_NUM_GPUS_PER_NODE"] = str(_detected_gpus())
    t = topology(env)
    try:
        check_gpus(t["gpus"])
    except NoGpu as exc:
        return job_exit(exc)
    if t["nodes"] > 1:
        timeout = JobEnv.from_env(env).rendezvous_timeout_s or 600
        env.setdefault("TORCHELASTIC_RENDEZVOUS_TIMEOUT", str(int(timeout)))
        if t["rank"] > 0:
            print(f"node {t['rank']}/{t['nodes']}: waiting up to {timeout:.0f}s for head {t['head']}:{t['port']}",
                  flush=True)
            try:
                wait_for_head(t["head"], t["port"], timeout)
            except RendezvousTimeout as exc:
                return job_exit(exc)
    argv = launch_args(env, job_args, _recipe_deepspeed(job_args, env))
    if t["gpus"] == 0 and len(argv) > 3:
        env.setdefault("DS_ACCELERATOR", "cpu")
    print("launch: " + " ".join(argv), flush=True)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.call(argv, env=env)


def info(recipe_path: str | None) -> None:
    """Versions, GPUs and the resolved recipe with secrets masked: the first lines of every run log."""
    import platform

    from sftcore.masking import mask

    lines = [f"python {platform.python_version()}"]
    try:
        import torch
        import transformers

        lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), transformers {transformers.__version__}")
        n = torch.cuda.device_count()
        gpus = [torch.cuda.get_device_name(i) for i in range(n)]
        lines.append(f"GPUs seen: {n}" + (f" ({', '.join(gpus)})" if gpus else " (CPU only)"))
    except ImportError as exc:
        lines.append(f"torch/transformers missing: {exc}")
    if recipe_path:
        from sftcore.recipe import load_recipe

        lines.append(f"recipe {recipe_path} (resolved):")
        lines.append(load_recipe(recipe_path).to_yaml().rstrip())
    print(mask("\n".join(lines)), flush=True)


def main(argv: list[str] | None = None) -> int:
    from sftcore.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["info"]:
            info(argv[1] if len(argv) > 1 else JobEnv.from_env().recipe)
            return 0
        if argv[:1] == ["train"]:
            return run_train(argv[1:])
        if argv[:1] == ["args"]:
            print(" ".join(launch_args(os.environ, argv[1:])))
            return 0
    except UserError as exc:
        return job_exit(exc)
    print("usage: python -m jobs.dist {info [RECIPE] | train [TRAIN ARGS] | args [TRAIN ARGS]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
