"""Errors that map to the CLI's exit codes (docs/architecture.md: 0 ok, 1 job failed, 2 bad input, 130 interrupted).

Commands raise these instead of printing and exiting themselves, so the one handler in
`launcher.cli` decides what the user sees (one line, no traceback unless --debug).
"""

from __future__ import annotations

import errno
import re
import sys


class SftlaunchError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UserError(SftlaunchError):
    """Bad input: a recipe, a flag, a missing credential. Exit 2, one clear message."""

    exit_code = 2


class RecipeError(UserError):
    """One or more recipe problems, each already formatted as `file:line: field: message`."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class JobFailed(SftlaunchError):
    """The remote or local job ran and failed. Exit 1."""

    exit_code = 1


def job_exit(exc: SftlaunchError) -> int:
    """The one mapping from a job's error to what it prints and exits with (`python -m jobs ...`,
    docker/entrypoint.sh's steps): bad input `error: ...` exit 2, a failed job `failed: ...` exit 1."""
    print(f"{'error' if exc.exit_code == UserError.exit_code else 'failed'}: {exc}", file=sys.stderr, flush=True)
    return exc.exit_code


# C0 and C1 controls, DEL, and the Unicode bidi controls (Trojan Source, CVE-2021-42574): echoed
# raw they retitle or recolour the terminal, or show text in another order than it is.
UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` safe to print: every control or bidi character as a visible escape (\\x1b, \\u202e).
    The one helper for echoing what a user wrote (a recipe value or key, a flag, a run reference)."""
    if not isinstance(text, str):
        return text

    def esc(m: re.Match) -> str:
        ch = m.group()
        if keep_newlines and ch in "\n\t":
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return UNSAFE_CHARS.sub(esc, text)


_SKY_PAYLOAD = re.compile(r"<sky-payload>.*?</sky-payload>", re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(exc: BaseException, with_type: bool = False, limit: int | None = None) -> str:
    """An exception as one printable line, secrets masked.

    Why: errors from SkyPilot, fsspec or the Hub quote whatever they were given (a URL with a
    token, an env value) and often span many lines with colour codes and SkyPilot's rich-status
    payloads; what we print or store must be one clean, masked line.
    """
    from sftcore.masking import mask

    text = _ANSI.sub("", _SKY_PAYLOAD.sub("", str(exc)))
    line = mask(next((ln.strip() for ln in text.splitlines() if ln.strip()), "")) or type(exc).__name__
    if with_type and line != type(exc).__name__:
        line = f"{type(exc).__name__}: {line}"
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


_FULL = ("no space left on device", "os error 28", "database or disk is full", "disk quota exceeded")


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or an error it came from) says the disk is full. Why by text too: safetensors,
    torch and sqlite report ENOSPC in their own exception types, with the OS message inside."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(exc).lower() for words in _FULL):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_message(exc: BaseException, where: str | None = None, then: str = "run the command again") -> str:
    """One line for a full disk: what failed, where, and the fix; never "move the registry aside"."""
    place = f" writing under {where}" if where else ""
    return f"the disk is full{place} ({one_line(exc, limit=160)}); free space on it (`df -h {where or '.'}`) and {then}"
