"""The job's side of "come back later": masked step logs, and their copy in the bucket.

Why this exists: a detached cloud run is watched from the laptop through the bucket alone —
`sftlaunch status` reads `<bucket>/<run id>/metrics.jsonl` for progress and `exit.json` for the
outcome once SkyPilot has forgotten the job (its jobs controller stops 10 idle minutes after the
last job), and `sftlaunch logs` reads `<bucket>/<run id>/logs/` once the cluster is gone. The
entrypoint calls this module; the bucket is the recipe's output.bucket (sftcore.store opens it:
gs://, s3://, a path); a recipe without one makes `push` a no-op.

    python -m jobs sync mask [--tee FILE]       stdin → stdout (and FILE), secret values masked
    python -m jobs sync push --out DIR --recipe R --run-id ID [--every S --parent PID]
    python -m jobs sync end --out DIR --exit-code N [--stopped]

`mask` is how no token ever reaches a log file: the values of the secret variables in this
process's environment (sftcore.masking) are replaced line by line, before the line is written.
`push --every` copies what changed every S seconds until it is terminated or PID (the
entrypoint) is gone; a failed copy is a warning, never the job's failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from sftcore import contract, store
from sftcore.contract import END_RECORD, METRICS, STOPPED_MARKER, JobEnv, RunLayout

# The job's files the launcher reads (named in sftcore/contract.py), copied to <bucket>/<run id>/:
SYNCED_FILES = (METRICS, STOPPED_MARKER, END_RECORD)
SYNCED_DIRS = (contract.LOGS_DIR,)


def warn(message: str) -> None:
    print(f"sync: warning: {message}", file=sys.stderr, flush=True)


# -- masking ---------------------------------------------------------------------------------------
def line_masker(env: dict | None = None):
    """`mask` for many lines: the secret values are read from the environment once, here, not
    per line (they do not change while a step runs); token shapes are still matched per line."""
    from sftcore.masking import MASK, mask, secret_values

    values = secret_values(env)

    def apply(text: str) -> str:
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return mask(text, env={})  # env={}: no values left to look up, only the token patterns

    return apply


def mask_stream(src, dst, tee_path: str | None = None) -> None:
    """Copy `src` to `dst` (binary streams) line by line with secrets masked; also append to
    `tee_path`. Flushes every line, so a follower sees progress as it happens."""
    mask = line_masker()
    tee = open(tee_path, "ab") if tee_path else None  # noqa: SIM115 - closed below
    try:
        for raw in iter(src.readline, b""):
            line = mask(raw.decode("utf-8", errors="replace")).encode("utf-8")
            for out in (dst, tee):
                if out is not None:
                    out.write(line)
                    out.flush()
    finally:
        if tee is not None:
            tee.close()


# -- bucket copy -----------------------------------------------------------------------------------
def local_files(out: Path) -> list[Path]:
    """What the bucket copy holds, relative to the run's output dir, in a stable order."""
    files = [out / name for name in SYNCED_FILES if (out / name).is_file()]
    for d in SYNCED_DIRS:
        if (out / d).is_dir():
            files += sorted(p for p in (out / d).rglob("*") if p.is_file())
    return files


def destination(bucket: str, run_id: str) -> str:
    return str(RunLayout.in_bucket(bucket, run_id).root)


def push(out: Path, bucket: str, run_id: str, seen: dict | None = None) -> tuple[list[str], list[str]]:
    """Copy the files that changed since `seen` (all of them without it) to `<bucket>/<run id>/`.
    Returns (copied, failed) as paths relative to `out`."""
    fs, base = store.filesystem(destination(bucket, run_id))
    copied, failed = [], []
    for path in local_files(out):
        rel = path.relative_to(out).as_posix()
        try:
            st = path.stat()
        except OSError:
            continue  # removed while we looked
        stamp = (st.st_size, st.st_mtime_ns)
        if seen is not None and seen.get(rel) == stamp:
            continue
        remote = store.join(base, rel)
        try:
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), remote)
        except Exception as exc:  # noqa: BLE001 - a flaky bucket must not end the job
            failed.append(rel)
            warn(f"could not copy {rel} to {destination(bucket, run_id)}/ ({type(exc).__name__}: {exc})")
            continue
        if seen is not None:
            seen[rel] = stamp
        copied.append(rel)
    return copied, failed


def _parent_gone(parent: int | None) -> bool:
    if not parent:
        return False
    if os.getppid() != parent:
        return True
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def loop(out: Path, bucket: str, run_id: str, every: float, parent: int | None = None) -> int:
    """`push` every `every` seconds until SIGTERM or the parent is gone."""
    stop = {"now": False}

    def on_term(_sig, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    seen: dict = {}
    while not stop["now"] and not _parent_gone(parent):
        push(out, bucket, run_id, seen)
        deadline = time.monotonic() + every
        while not stop["now"] and time.monotonic() < deadline and not _parent_gone(parent):
            time.sleep(min(1.0, every))
    return 0


# -- the end record --------------------------------------------------------------------------------
def write_end(out: Path, exit_code: int, stopped: bool) -> dict:
    """`<out>/exit.json`: how the job ended, for the launcher once SkyPilot no longer knows."""
    reason = None
    layout = RunLayout(out)
    if stopped:
        try:
            reason = json.loads(layout.stopped_marker.read_text())
        except (OSError, ValueError):
            reason = {"reason": "budget"}
    record = {"exit_code": exit_code, "stopped": reason, "at": time.time(),
              "run_id": JobEnv.from_env().run_id}
    tmp = out / f"{END_RECORD}.tmp"
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(layout.end_record)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs sync", description="Masked logs and their bucket copy.")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mask", help="stdin to stdout with secret values masked")
    m.add_argument("--tee", help="also append the masked lines to this file")
    ps = sub.add_parser("push", help="copy metrics.jsonl, logs/, STOPPED and exit.json to <bucket>/<run id>/")
    ps.add_argument("--out", required=True, type=Path)
    ps.add_argument("--recipe", required=True, type=Path, help="the run's recipe: its output.bucket is the bucket")
    ps.add_argument("--run-id", required=True)
    ps.add_argument("--every", type=float, help="keep copying what changed every this many seconds")
    ps.add_argument("--parent", type=int, help="with --every: stop when this process is gone")
    e = sub.add_parser("end", help=f"write <out>/{END_RECORD}")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--exit-code", required=True, type=int)
    e.add_argument("--stopped", action="store_true", help="training was stopped early (STOPPED marker)")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.cmd == "mask":
        if args.tee:
            Path(args.tee).parent.mkdir(parents=True, exist_ok=True)
        mask_stream(sys.stdin.buffer, sys.stdout.buffer, args.tee)
        return 0
    if args.cmd == "end":
        write_end(args.out, args.exit_code, args.stopped)
        return 0
    if args.every is not None and args.every <= 0:
        print("error: --every must be a positive number of seconds", file=sys.stderr)
        return 2
    bucket = recipe_bucket(args.recipe)
    if bucket is None:
        return 0  # no bucket: the run's files stay where they are
    if args.every is not None:
        return loop(args.out, bucket, args.run_id, args.every, args.parent)
    _copied, failed = push(args.out, bucket, args.run_id)
    return 1 if failed else 0


def recipe_bucket(path: Path) -> str | None:
    """The recipe's output.bucket, the one bucket a job writes to. Raises UserError (exit 2) when
    the recipe does not load: the train step reports the same recipe the same way."""
    from sftcore.errors import RecipeError, UserError
    from sftcore.recipe import load_recipe

    try:
        return load_recipe(path).output.bucket
    except RecipeError as exc:
        raise UserError(exc.problems[0] if exc.problems else str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
