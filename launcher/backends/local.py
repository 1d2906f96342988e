"""`sftlaunch up --local`: the same run on this machine, tracked like a cloud run.

Why a detached process group: `up --local` must behave like a cloud launch — Ctrl-C while
following the log leaves the run going, `status`/`logs`/`teardown` find it later from the
registry. So the run is started in its own session (its own process group) by a tiny shell
wrapper that writes the exit code next to `run.log` when it ends; teardown kills the group.

Inside, the run is `docker/entrypoint.sh all` — in the image under Docker when a daemon is
reachable, else directly with this Python (the installed `train`/`eval` extras). Secrets reach
the process through its environment only (Docker gets `-e NAME`, never a value on the command
line) and nothing here writes them to disk.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.secrets import JOB_SECRETS

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
CONTAINER_OUT = "/data/sftlaunch"
CONTAINER_RECIPE = "/sftlaunch/recipe.yaml"
LABEL = "sftlaunch-run"
_children: list[subprocess.Popen] = []
BUDGET_EXIT = 3  # jobs.train: the in-job budget guard saved a checkpoint and stopped


def docker_available() -> bool:
    """A reachable Docker daemon (SFTLAUNCH_LOCAL_DOCKER=0/1 overrides the probe)."""
    forced = os.environ.get("SFTLAUNCH_LOCAL_DOCKER")
    if forced in ("0", "1"):
        return forced == "1"
    if shutil.which("docker") is None:
        return False
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        probe = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and bool(probe.stdout.strip())


def paths(run_dir: Path) -> dict[str, Path]:
    return {
        "log": run_dir / "run.log",
        "exit_code": run_dir / "exit_code",
        "script": run_dir / "run.sh",
        "recipe": run_dir / "recipe.yaml",
        "control": run_dir / "control",
    }


def _direct_command(recipe_path: Path, steps: tuple[str, ...]) -> str:
    if ENTRYPOINT.exists():
        step = "all" if tuple(steps) == ("train", "eval", "publish") else None
        if step:
            return f"bash {shlex.quote(str(ENTRYPOINT))} all"
        return " && ".join(f"bash {shlex.quote(str(ENTRYPOINT))} {s}" for s in steps)
    # No entrypoint in this checkout: the same steps through `python -m jobs` (see CONTRACTS).
    py = shlex.quote(sys.executable)
    out = '"$SFTLAUNCH_OUT"'
    cmds = []
    for step in steps:
        if step == "train":
            # SFTLAUNCH_MAX_STEPS caps training (quick looks, tests); unset, the recipe decides.
            cmds.append(f'{py} -m jobs train --recipe {shlex.quote(str(recipe_path))} --out {out} --run-id "$SFTLAUNCH_RUN_ID"'
                        ' ${SFTLAUNCH_MAX_STEPS:+--max-steps "$SFTLAUNCH_MAX_STEPS"}')
        elif step == "eval":
            cmds.append(f'{py} -m jobs eval --model {out}/final --out {out}/eval')
        elif step == "publish":
            cmds.append(f'{py} -m jobs publish --recipe {shlex.quote(str(recipe_path))} --run-dir {out}')
    return " && ".join(cmds)


def _docker_command(run_id: str, image: str, recipe_path: Path, mounts: dict[str, str], out_dir: Path) -> str:
    args = ["docker", "run", "--rm", "--name", run_id, "--label", f"{LABEL}={run_id}", "--shm-size=2g"]
    if shutil.which("nvidia-smi"):
        args += ["--gpus", "all"]
    args += ["-e", f"SFTLAUNCH_RUN_ID={run_id}", "-e", f"SFTLAUNCH_RECIPE={CONTAINER_RECIPE}",
             "-e", f"SFTLAUNCH_OUT={CONTAINER_OUT}/{run_id}", "-e", "SFTLAUNCH_STEPS"]
    for name in JOB_SECRETS:
        args += ["-e", name]  # by name: docker copies the value from this process's environment
    args += ["-v", f"{recipe_path}:{CONTAINER_RECIPE}:ro", "-v", f"{out_dir}:{CONTAINER_OUT}/{run_id}"]
    for remote, local in mounts.items():
        args += ["-v", f"{local}:{remote}:ro"]
    args += [image, "all"]
    return " ".join(shlex.quote(a) for a in args)


def start(recipe, run_id: str, run_dir: Path, steps=("train", "eval", "publish"), use_docker: bool | None = None,
          extra_env: dict[str, str] | None = None) -> dict:
    """Start the run detached; returns the registry fields (pid, local_dir, image, backend)."""
    from launcher import render

    run_dir.mkdir(parents=True, exist_ok=True)
    p = paths(run_dir)
    for stale in (p["exit_code"],):
        stale.unlink(missing_ok=True)
    use_docker = docker_available() if use_docker is None else use_docker
    image = None
    if use_docker:
        from launcher.images import resolve_image

        image = resolve_image(recipe.image)
        p["recipe"].write_text(render.container_recipe_yaml(recipe))
        _, mounts = render.container_recipe(recipe)
        command = _docker_command(run_id, image, p["recipe"], mounts, run_dir)
    else:
        p["recipe"].write_text(recipe.to_yaml())
        command = _direct_command(p["recipe"], tuple(steps))
    script = (
        "#!/usr/bin/env bash\n"
        "# Written by `sftlaunch up --local`; the exit code lands in ./exit_code when the run ends.\n"
        f"cd {shlex.quote(str(REPO))}\n"
        f"( {command} )\n"
        "rc=$?\n"
        f"echo $rc > {shlex.quote(str(p['exit_code']))}.tmp && mv {shlex.quote(str(p['exit_code']))}.tmp "
        f"{shlex.quote(str(p['exit_code']))}\n"
        "exit $rc\n"
    )
    p["script"].write_text(script)
    env = dict(os.environ)
    env.update({
        "SFTLAUNCH_RUN_ID": run_id,
        "SFTLAUNCH_RECIPE": str(p["recipe"]),
        "SFTLAUNCH_OUT": str(run_dir),
        "SFTLAUNCH_STEPS": ",".join(steps),
        "SFTLAUNCH_CONTROL": str(p["control"]),
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    })
    env.update(extra_env or {})
    with open(p["log"], "ab") as log:
        proc = subprocess.Popen(
            ["bash", str(p["script"])], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True, close_fds=True,
        )
    _children.append(proc)  # keep the handle: the run outlives this call, not this process's bookkeeping
    return {"pid": proc.pid, "local_dir": str(run_dir), "image": image, "backend": "local", "log_uri": str(p["log"])}


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        # A finished child of *this* process is a zombie until reaped; reap it so it reads as gone.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_code(run_dir: Path) -> int | None:
    try:
        return int(paths(run_dir)["exit_code"].read_text().strip())
    except (OSError, ValueError):
        return None


def poll(record: dict) -> tuple[str, str | None]:
    """(state, detail) of a local run from its process and exit-code file."""
    run_dir = Path(record["local_dir"])
    code = exit_code(run_dir)
    if code is not None:
        if code == BUDGET_EXIT:
            return "stopped", "budget guard: stopped after saving a checkpoint (exit 3)"
        return ("succeeded", None) if code == 0 else ("failed", f"exit code {code}")
    if alive(record.get("pid")):
        return "running", None
    return "failed", "the local process is gone and left no exit code"


def stop(record: dict, grace_s: float = 10.0) -> bool:
    """Kill the run's process group (and its container); True if something was running."""
    pid = record.get("pid")
    was_alive = alive(pid)
    if was_alive:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.time() + (grace_s if sig == signal.SIGTERM else 5)
            while time.time() < deadline and alive(pid):
                time.sleep(0.1)
            if not alive(pid):
                break
    if record.get("image") and shutil.which("docker"):
        subprocess.run(["docker", "rm", "-f", record["run_id"]], capture_output=True, timeout=60)
    return was_alive


def follow_log(record: dict, on_line, follow: bool = True, poll_s: float = 0.2) -> int | None:
    """Print run.log (and keep printing while the run lives); returns its exit code when it ends."""
    run_dir = Path(record["local_dir"])
    log = paths(run_dir)["log"]
    pos, buf = 0, ""
    while True:
        if log.exists():
            with open(log, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos += len(chunk)
            buf += chunk.decode("utf-8", errors="replace")
            *lines, buf = buf.split("\n")
            for line in lines:
                on_line(line)
        code = exit_code(run_dir)
        if not follow or code is not None or not alive(record.get("pid")):
            if follow and code is None:
                time.sleep(poll_s)  # the wrapper may be writing the exit code right now
                code = exit_code(run_dir)
            if log.exists():
                with open(log, "rb") as fh:
                    fh.seek(pos)
                    buf += fh.read().decode("utf-8", errors="replace")
            for line in buf.split("\n"):
                if line:
                    on_line(line)
            return code
        time.sleep(poll_s)
