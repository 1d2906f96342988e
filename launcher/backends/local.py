"""`sftlaunch up --local`: the same run on this machine, tracked like a cloud run.

Why a detached process group: `up --local` must behave like a cloud launch — Ctrl-C while
following the log leaves the run going, `status`/`logs`/`teardown` find it later from the
registry. So the run is started in its own session (its own process group) by a tiny shell
wrapper that writes the exit code next to `run.log` when it ends; teardown kills the group.

Inside, the run is `docker/entrypoint.sh all` over SFTLAUNCH_STEPS — in the image under Docker
when a daemon is reachable, else directly with this Python (the installed `train`/`eval`
extras) — exactly what a cloud task runs, so a budget stop (DIR/STOPPED, exit 0) skips eval and
publish here too. Only an install without the entrypoint (a wheel, e.g. the Colab notebook's
`pip install git+...`) runs the steps through `python -m jobs` itself, with the same skip.

Secrets reach the process through its environment only (Docker gets `-e NAME`, never a value on
the command line) and nothing here writes them to disk. The entrypoint masks its steps' output,
but not its own lines or its background bucket copier's warnings, and the no-entrypoint path
masks nothing; so run.log is written through one more masking filter.
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

from launcher.run_state import RunState
from sftcore import contract
from sftcore.contract import STOPPED_MARKER, Env
from sftcore.masking import JOB_SECRETS

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
CONTAINER_RECIPE = contract.CONTAINER_RECIPE
LABEL = contract.RUN_LABEL
_children: dict[str, subprocess.Popen] = {}  # run dir -> the wrapper we started there


def docker_available() -> bool:
    """A reachable Docker daemon (SFTLAUNCH_LOCAL_DOCKER=0/1 overrides the probe)."""
    forced = os.environ.get(Env.LOCAL_DOCKER)
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


def image_present(image: str) -> bool:
    """Whether the local Docker engine already has `image` (no pull, no network)."""
    try:
        probe = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and bool(probe.stdout.strip())


def choose_runner(recipe) -> tuple[bool, str | None, str]:
    """(use Docker?, image, why): Docker only with a reachable daemon and the image already in
    the local engine; SFTLAUNCH_LOCAL_DOCKER=1 forces Docker (docker run pulls what is missing),
    =0 forces a direct run."""
    from launcher.images import resolve_image

    forced = os.environ.get(Env.LOCAL_DOCKER)
    image = resolve_image(recipe.image)
    if forced == "0":
        return False, None, f"{Env.LOCAL_DOCKER}=0"
    if forced == "1":
        return True, image, f"{Env.LOCAL_DOCKER}=1"
    if not docker_available():
        return False, None, "no Docker daemon reachable"
    if not image_present(image):
        return False, None, (f"Docker is reachable but has no image {image}; "
                             "`sftlaunch image build` (or docker pull) makes runs use it")
    return True, image, f"image {image} is in the local Docker engine"


def paths(run_dir: Path) -> dict[str, Path]:
    return {
        "log": run_dir / "run.log",
        "exit_code": run_dir / "exit_code",
        "script": run_dir / "run.sh",
        "recipe": contract.RunLayout(run_dir).recipe,
        "control": run_dir / contract.CONTROL_DIR,
    }


def _direct_command(recipe_path: Path, steps: tuple[str, ...]) -> str:
    """`entrypoint.sh all` (it reads SFTLAUNCH_STEPS); without one, the steps through `python -m jobs`."""
    if ENTRYPOINT.exists():
        return f"bash {shlex.quote(str(ENTRYPOINT))} all"
    return _jobs_command(recipe_path, steps)


def _jobs_command(recipe_path: Path, steps: tuple[str, ...]) -> str:
    """The entrypoint's steps with the flags it passes, for installs that do not ship it."""
    py, recipe, out = shlex.quote(sys.executable), shlex.quote(str(recipe_path)), f'"${Env.OUT}"'
    run_id = f'--run-id "${Env.RUN_ID}"'
    commands = {
        # SFTLAUNCH_MAX_STEPS caps training (quick looks, tests); unset, the recipe decides.
        "train": f'{py} -m jobs train --recipe {recipe} --out {out} {run_id}'
                 f' ${{{Env.MAX_STEPS}:+--max-steps "${Env.MAX_STEPS}"}}',
        "eval": f"{py} -m jobs eval --model {out}/final --recipe {recipe} --out {out}/eval {run_id}",
        "publish": f"{py} -m jobs publish --recipe {recipe} --run-dir {out} {run_id}",
    }
    # As in the entrypoint: once training has stopped early, eval and publish are skipped.
    return " && ".join(commands[s] if s == "train" else f"{{ [ -f {out}/{STOPPED_MARKER} ] || {commands[s]}; }}"
                       for s in steps)


def _docker_command(run_id: str, image: str, recipe_path: Path, mounts: dict[str, str], out_dir: Path) -> str:
    args = ["docker", "run", "--rm", "--name", run_id, "--label", f"{LABEL}={run_id}", "--shm-size=2g"]
    if shutil.which("nvidia-smi"):
        args += ["--gpus", "all"]
    args += ["-e", f"{Env.RUN_ID}={run_id}", "-e", f"{Env.RECIPE}={CONTAINER_RECIPE}",
             "-e", f"{Env.OUT}={contract.container_out(run_id)}", "-e", Env.STEPS]
    for name in JOB_SECRETS:
        args += ["-e", name]  # by name: docker copies the value from this process's environment
    args += ["-v", f"{recipe_path}:{CONTAINER_RECIPE}:ro", "-v", f"{out_dir}:{contract.container_out(run_id)}"]
    for remote, local in mounts.items():
        args += ["-v", f"{local}:{remote}:ro"]
    args += [image, "all"]
    return " ".join(shlex.quote(a) for a in args)


def start(recipe, run_id: str, run_dir: Path, steps=("train", "eval", "publish"), use_docker: bool | None = None,
          extra_env: dict[str, str] | None = None) -> dict:
    """Start the run detached; returns the registry fields (pid and its start time, local_dir,
    image, log_uri). The caller records the run *before* calling this (no orphan window)."""
    from launcher import render

    run_dir.mkdir(parents=True, exist_ok=True)
    steps = render.job_steps(recipe, tuple(steps))  # eval: null drops eval, as on a cloud
    p = paths(run_dir)
    for stale in (p["exit_code"],):
        stale.unlink(missing_ok=True)
    image = None
    if use_docker is None:
        use_docker, image, _why = choose_runner(recipe)
    if use_docker:
        from launcher.images import resolve_image

        image = image or resolve_image(recipe.image)
        # The job's bucket is its recipe's output.bucket. A local Docker run gets neither a mount
        # for a path nor cloud credentials for gs:// or s3://, so its copy names no bucket: its
        # outputs stay in the run dir. A direct run keeps the recipe's (and `up --bucket`'s) bucket.
        p["recipe"].write_text(render.container_recipe_yaml(recipe, bucket=False))
        _, mounts = render.container_recipe(recipe)
        command = _docker_command(run_id, image, p["recipe"], mounts, run_dir)
    else:
        p["recipe"].write_text(recipe.to_yaml())
        command = _direct_command(p["recipe"], steps)
    masker = f"{shlex.quote(sys.executable)} -m jobs.sync mask"
    script = (
        "#!/usr/bin/env bash\n"
        "# Written by `sftlaunch up --local`; the exit code lands in ./exit_code when the run ends.\n"
        "# Output goes through the masking filter, so run.log never holds a secret value.\n"
        f"cd {shlex.quote(str(REPO))}\n"
        f"( {command} ) 2>&1 | {masker}\n"
        "rc=${PIPESTATUS[0]}\n"
        f"echo $rc > {shlex.quote(str(p['exit_code']))}.tmp && mv {shlex.quote(str(p['exit_code']))}.tmp "
        f"{shlex.quote(str(p['exit_code']))}\n"
        "exit $rc\n"
    )
    p["script"].write_text(script)
    env = dict(os.environ)  # the job reads its bucket from the recipe, never from this environment
    env.update({
        Env.RUN_ID: run_id,
        Env.RECIPE: str(p["recipe"]),
        Env.OUT: str(run_dir),
        Env.STEPS: ",".join(steps),
        Env.CONTROL: str(p["control"]),
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    })
    env.update(extra_env or {})
    with open(p["log"], "ab") as log:
        proc = subprocess.Popen(
            ["bash", str(p["script"])], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True, close_fds=True,
        )
    _children[str(run_dir)] = proc  # keep the handle: the run outlives this call, not this process's bookkeeping
    identity = process_identity(proc.pid)
    return {"pid": proc.pid, "pid_start": identity[0] if identity else None, "local_dir": str(run_dir),
            "image": image, "backend": "local", "log_uri": str(p["log"])}


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


def process_identity(pid: int) -> tuple[str, int] | None:
    """(start time, process group) of `pid`, None when it is gone or unreadable. The start time
    (clock ticks since boot from /proc/<pid>/stat, else `ps -o lstart`) tells a reused pid from
    the process we started; it never changes while the process lives."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self/stat").exists():
        try:
            text = stat.read_text()
        except OSError:
            return None
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if fields[0] in ("Z", "X"):
            return None  # a zombie has finished; nothing is left to stop
        return f"linux:{fields[19]}", int(fields[2])
    try:
        out = subprocess.run(["ps", "-o", "pgid=,lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split(None, 1)
    if out.returncode != 0 or len(parts) != 2:
        return None
    return f"ps:{' '.join(parts[1].split())}", int(parts[0])


def group_members(record) -> list[int]:
    """Processes still running in the run's process group after its leader (the wrapper) is gone,
    each proven ours: in the session and group numbered by the recorded pid, started no earlier
    than the wrapper (recorded start time), and carrying the run's SFTLAUNCH_RUN_ID in the
    environment the wrapper gave it. Why: a killed wrapper leaves training running in its group;
    a group id cannot be reused while any member lives, and a stranger who later got the number
    has neither the start time nor the environment. Linux only (/proc); elsewhere, none proven."""
    pid, started = record.pid, record.pid_start
    if not pid or not str(started or "").startswith("linux:") or not Path("/proc/self/stat").exists():
        return []
    pid, since = int(pid), int(str(started).split(":", 1)[1])
    marker = f"{Env.RUN_ID}={record.run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
            fields = text[text.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
            if fields[0] in ("Z", "X") or int(fields[2]) != pid or int(fields[3]) != pid or int(fields[19]) < since:
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return found


def process_refusal(record) -> str | None:
    """None when the run's recorded process is alive and is the one we started: the same pid
    with the start time we recorded, leading the process group (session) we created for it —
    or, its leader gone, when members of that group are still proven ours (`group_members`).
    Else why it is not ours to signal. Never a command-line match: `tail -f <run dir>/run.sh`
    has the run's path in its command line too."""
    pid = record.pid
    if not pid:
        return "no process was recorded for this run"
    identity = process_identity(int(pid)) if alive(int(pid)) else None
    if identity is None:
        return None if group_members(record) else f"process {pid} has ended"
    started, group = identity
    if group != int(pid):
        return f"process {pid} does not lead the process group sftlaunch created for the run"
    if not record.pid_start:
        # Recorded by an sftlaunch before start times were kept: the wrapper's exact argv
        # (`bash <run dir>/run.sh`, whole arguments, not a substring) leading its own group.
        script = str(paths(Path(record.local_dir))["script"]) if record.local_dir else None
        if script is None or _argv(int(pid)) != ["bash", script]:
            return f"process {pid} is not the run's wrapper `bash {script}` (and the record has no start time)"
        return None
    if started != record.pid_start:
        return f"process {pid} is not the run's (it started at another time: the pid was reused)"
    return None


def _argv(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode("utf-8", errors="replace") for a in raw.split(b"\0")[:-1]]


def is_ours(record) -> bool:
    return process_refusal(record) is None


def exit_code(run_dir: Path) -> int | None:
    try:
        return int(paths(run_dir)["exit_code"].read_text().strip())
    except (OSError, ValueError):
        return None


def stopped_marker(run_dir: Path) -> str | None:
    """What the job wrote to `<run dir>/STOPPED` when training stopped early, or None."""
    try:
        return (run_dir / STOPPED_MARKER).read_text().strip() or "stopped"
    except OSError:
        return None


def poll(record) -> tuple[RunState, str | None]:
    """(state, detail) of a local run from its exit-code file, STOPPED marker and process."""
    run_dir = Path(record.local_dir)
    code = exit_code(run_dir)
    if code is not None:
        marker = stopped_marker(run_dir)
        if code == 0 and marker:
            return RunState.STOPPED, f"training stopped after saving a checkpoint ({marker})"
        return (RunState.SUCCEEDED, None) if code == 0 else (RunState.FAILED, f"exit code {code}")
    if is_ours(record):
        orphans = [] if alive(int(record.pid)) else group_members(record)
        if orphans:
            return RunState.RUNNING, (f"its wrapper (pid {record.pid}) is gone but {len(orphans)} of its processes "
                               f"still run in its group; `sftlaunch teardown {record.run_id}` stops them")
        return RunState.RUNNING, None
    return RunState.FAILED, "the local process is gone and left no exit code"


def stop(record, grace_s: float = 10.0) -> bool:
    """Kill the run's process group (and its container); True if something was running.
    Nothing is signalled unless the process is proven ours (`process_refusal`); the ownership is
    proven again before the SIGKILL, since the group may have ended (and its pid been reused)
    during the grace period."""
    run_dir = Path(record.local_dir) if record.local_dir else None
    finished = run_dir is not None and exit_code(run_dir) is not None
    was_alive = not finished and is_ours(record)
    if was_alive:
        kill_group(record, grace_s)
    remove_containers(record.run_id)
    return was_alive


def kill_group(record, grace_s: float = 10.0) -> None:
    """SIGTERM the whole group, then SIGKILL what is left after the grace, proving it ours before
    each signal; waits for the members too, not only the leader (which may be gone already)."""
    pid = int(record.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_ours(record):
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.time() + (grace_s if sig == signal.SIGTERM else 5)
        while time.time() < deadline and _group_alive(record):
            time.sleep(0.1)
        if not _group_alive(record):
            return


def _group_alive(record) -> bool:
    return alive(int(record.pid)) or bool(group_members(record))


def kill_started(run_dir: Path) -> bool:
    """Kill the process group this process started in `run_dir` (ours by the Popen handle we
    hold: an unreaped child's pid cannot have been reused) — for a start cut short before its
    pid was recorded. True if one was running."""
    proc = _children.pop(str(run_dir), None)
    if proc is None or proc.poll() is not None:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=5)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    return True


def remove_containers(run_id: str) -> list[str]:
    """`docker rm -f` the containers labelled `sftlaunch-run=<run_id>` (ours: we set that label on
    `docker run`); a container that merely has the run id as its name is left alone."""
    if not shutil.which("docker"):
        return []
    try:
        found = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}={run_id}"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    ids = found.stdout.split() if found.returncode == 0 else []
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)
    return ids


def follow_log(record, on_line, follow: bool = True, poll_s: float = 0.2) -> int | None:
    """Print run.log (and keep printing while the run lives); returns its exit code when it ends."""
    run_dir = Path(record.local_dir)
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
        if not follow or code is not None or not is_ours(record):
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
