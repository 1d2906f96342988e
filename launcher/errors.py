"""Errors that map to the CLI's exit codes (DESIGN: 0 ok, 1 job failed, 2 bad input, 130 interrupted).

Commands raise these instead of printing and exiting themselves, so the one handler in
`launcher.cli` decides what the user sees (one line, no traceback unless --debug).
"""

from __future__ import annotations


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
