"""Preflight's checks and how they run: each in a daemon thread with its own deadline, so an
endpoint that accepts and never answers yields "could not check", never a hung command.

Why apart from launcher.preflight: the Hub checks (launcher.preflight_hub) and the recipe's checks
(launcher.preflight) both build `Check`s and read these statuses; neither imports the other for them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sftcore.errors import one_line
from sftcore.masking import mask

PASS, WARN, FAIL, UNKNOWN = "pass", "warn", "fail", "unknown"
LABELS = {PASS: "pass", WARN: "warn", FAIL: "FAIL", UNKNOWN: "could not check"}
CHECK_TIMEOUT_S = 20.0  # one Hub or bucket check; the Hub and the stores answer in well under 1 s
INSTALL_TRAIN = 'pip install "sftlaunch[train]"'
INSTALL_CLOUD = 'pip install "sftlaunch[cloud]"'


@dataclass
class Line:
    """One row of the preflight table."""

    check: str  # model, hub_repo, data[0], bucket, cloud
    target: str  # what was checked: a model id, a URI, a cloud
    status: str  # PASS | WARN | FAIL | UNKNOWN
    detail: str
    fix: str = ""

    def masked(self) -> Line:
        return Line(self.check, mask(self.target), self.status, mask(self.detail), mask(self.fix))


@dataclass
class Check:
    """A check to run: `fn` returns (status, detail, fix), or Lines when it answers for several
    things at once, and may take up to `timeout` seconds."""

    check: str
    target: str
    fn: Callable[[], tuple[str, str, str] | list[Line]]
    timeout: float = CHECK_TIMEOUT_S
    fix_unknown: str = "rerun `sftlaunch preflight` when the service answers"
    remote: bool = True  # asks a service (Hub, bucket, cloud); False: looks at this machine only


def run_checks(checks: list[Check]) -> list[Line]:
    """Run every check at once, each in a daemon thread with its own deadline."""
    results: list[list[Line] | None] = [None] * len(checks)

    def work(i: int, c: Check) -> None:
        try:
            answer = c.fn()
        except Exception as exc:  # noqa: BLE001 - an unforeseen answer is "could not check", said why
            answer = (UNKNOWN, one_line(exc, with_type=True, limit=300), c.fix_unknown)
        results[i] = answer if isinstance(answer, list) else [Line(c.check, c.target, *answer)]

    start = time.monotonic()
    threads = []
    for i, c in enumerate(checks):
        t = threading.Thread(target=work, args=(i, c), name=f"preflight-{c.check}", daemon=True)
        t.start()
        threads.append(t)
    for t, c in zip(threads, checks, strict=True):
        t.join(max(0.0, start + c.timeout - time.monotonic()))
    lines = []
    for i, c in enumerate(checks):
        answer = results[i] or [Line(c.check, c.target, UNKNOWN, f"no answer within {c.timeout:g} s", c.fix_unknown)]
        lines.extend(line.masked() for line in answer)
    return lines
