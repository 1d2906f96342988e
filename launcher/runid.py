"""Run ids: `sftl-<name>-<4 hex>`.

Why this shape: the id is also the SkyPilot cluster / managed-job name, so it must be a valid
name on every cloud (lowercase, digits, dashes) and short enough for GCP's 35-character limit
(recipe names are capped at 20, so ids are at most 30). The random suffix keeps two launches of
the same recipe apart; uniqueness is checked against the run registry.
"""

from __future__ import annotations

import re
import secrets

from sftcore import contract

PREFIX = contract.RUN_ID_PREFIX
MAX_LEN = 35
RUN_ID_RE = re.compile(rf"^{re.escape(PREFIX)}[a-z0-9-]+-[0-9a-f]{{4}}$")


def new_run_id(name: str, taken=None) -> str:
    """A fresh id for recipe `name`; `taken(run_id) -> bool` (default: the registry) rejects reuse."""
    if taken is None:
        from launcher.runs import Registry

        registry = Registry()
        taken = lambda rid: registry.get(rid) is not None  # noqa: E731
    stem = f"{PREFIX}{name}"[: MAX_LEN - 5].rstrip("-")
    for _ in range(1000):
        run_id = f"{stem}-{secrets.token_hex(2)}"
        if not taken(run_id):
            return run_id
    raise RuntimeError(f"could not find a free run id for {name!r} after 1000 tries")


def looks_like_run_id(text: str) -> bool:
    return bool(RUN_ID_RE.fullmatch(text))  # fullmatch: `$` alone would let a trailing newline through


def run_id_problem(text: str) -> str | None:
    """Why `text` cannot be a run id, or None; the fix is in the message.

    The same rules as the ids `new_run_id` makes from a recipe's name (lowercase letters, digits
    and '-', the sftl- prefix, a 4-hex suffix, at most MAX_LEN characters), so a run id from the
    command line is safe as a directory name, a cluster name and a YAML value.
    """
    form = f"a run id looks like {PREFIX}NAME-1a2b (lowercase letters, digits and '-', at most {MAX_LEN} characters)"
    if not text:
        return f"empty; {form}"
    if len(text) > MAX_LEN:
        return f"{len(text)} characters, more than {MAX_LEN}; {form}"
    if not RUN_ID_RE.fullmatch(text):
        return f"not a run id; {form}"
    return None
