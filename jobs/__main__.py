"""`python -m jobs <train|eval|publish|generate> ...`: the one entry the container and the local
backend call.

Why lazy dispatch: `eval`/`publish`/`generate` live in their own modules with their own heavy
imports; loading training code (peft, deepspeed) to run an eval would only cost start-up time.

Exit codes: 0 ok (also when training stopped early after a checkpoint: DIR/STOPPED says why,
so a managed job is not restarted for it), 1 the job failed, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import importlib
import sys

from sftcore.contract import JobEnv

COMMANDS = {
    "train": "jobs.train",
    "eval": "jobs.evaluate",
    "publish": "jobs.publish",
    "generate": "jobs.generate",
    "sync": "jobs.sync",
}

USAGE = "usage: python -m jobs {" + ",".join(COMMANDS) + "} [args...]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown job {name!r}; {USAGE}", file=sys.stderr)
        return 2
    from sftcore.errors import JobFailed, SftlaunchError, disk_full, disk_full_message, job_exit

    try:
        return int(importlib.import_module(COMMANDS[name]).main(rest) or 0)
    except SftlaunchError as exc:
        return job_exit(exc)
    except Exception as exc:
        if not disk_full(exc):
            raise  # a bug: its traceback is what the run log needs
        # A full disk is no bug: one line, and what survives (checkpoints are complete or ignored).
        where = JobEnv.from_env().out or getattr(exc, "filename", None)
        return job_exit(JobFailed(f"{name}: " + disk_full_message(
            exc, where, then="relaunch: the newest complete checkpoint is kept and the run resumes from it")))


if __name__ == "__main__":
    sys.exit(main())
