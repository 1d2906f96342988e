"""What a registry file that cannot be used says: read-only, locked, full, failing or damaged,
each one line naming the file and the fix, exit 2.

Why apart from launcher.runs: the wording decides whether a user keeps or loses the tracking of
every run (a full disk must never read as "move it aside"), so it is kept in one place, away from
the queries.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sftcore.contract import Env
from sftcore.errors import UserError, one_line

BUSY_TIMEOUT_S = 30.0


class RegistryError(UserError):
    """The registry file cannot be used as it is; the message names it and the fix."""


def _move_aside(path: Path) -> str:
    return (f"move it aside (`mv {path} {path}.broken`): the next sftlaunch command starts a new "
            "registry and the old file stays for inspection")


def broken(path: Path, what: str) -> RegistryError:
    return RegistryError(f"{path}: {what}; {_move_aside(path)}")


def sqlite_error(path: Path, home: Path, exc: sqlite3.DatabaseError) -> RegistryError:
    """One line for an sqlite error on the registry at `path`: read-only, locked, full, failing or damaged."""
    text = one_line(exc)
    if "readonly" in text or "read-only" in text:
        return read_only_error(path, home)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return RegistryError(f"{path}: {text} (another sftlaunch is writing for over "
                             f"{BUSY_TIMEOUT_S:.0f} s); try again")
    if "disk is full" in text or ("disk i/o error" in text.lower() and low_on_space(home)):
        # Not a broken registry: moving it aside would lose the tracking of every run.
        return RegistryError(f"{path}: not written: the disk is full ({text}); the registry is "
                             f"intact: free space on that disk (`df -h {home}`) and retry")
    if "disk i/o error" in text.lower():
        return RegistryError(f"{path}: the disk reported an I/O error ({text}); check the disk "
                             f"holding {home}, then retry (the file need not be damaged)")
    return broken(path, f"is not a readable sftlaunch registry ({text})")


def read_only_error(path: Path, home: Path) -> RegistryError:
    return RegistryError(f"{path}: read-only; this command records run state: make {home} writable "
                         f"(or point {Env.HOME} at a writable copy); `status --no-refresh` and `logs` "
                         "work read-only")


def low_on_space(home: Path) -> bool:
    """Under 1 MiB free where the registry lives: sqlite reports a full disk under WAL as an I/O error."""
    import shutil

    try:
        return shutil.disk_usage(home).free < 2**20
    except OSError:
        return False


def writable(home: Path, path: Path) -> bool:
    """Whether this process may create or change the registry (a read-only home is not an error
    until something is written)."""
    if path.exists():
        return os.access(path, os.W_OK) and os.access(home, os.W_OK)
    probe = home
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK)
