"""Signals while `up` runs: SIGTERM and SIGHUP said in words like Ctrl-C, and a block that must
not be split by any of them.

Why one module: both helpers install handlers and must put the previous ones back however the
block ends (and leave them alone outside the main thread, where Python refuses to set any); that
install/restore is written once here (`_handlers`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterable, Iterator

HANGUPS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP while `up` runs. A KeyboardInterrupt on purpose: every place that handles
    Ctrl-C (kill what was being started, or leave the run going and print how to reattach, check
    and tear it down) handles these the same way; only the exit code differs (128 + N)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


@contextlib.contextmanager
def _handlers(signums: Iterable[int], handler: Callable) -> Iterator[bool]:
    """`handler` for `signums` during the block, the previous handlers restored after it, even if
    installing failed half way. Yields False (nothing installed) outside the main thread."""
    previous: dict[int, object] = {}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    try:
        for sig in signums:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: signals stay as they were
        yield False
        return
    except BaseException:  # a signal that cannot be caught (SIGKILL): put back what was set
        restore()
        raise
    try:
        yield True
    finally:
        restore()


@contextlib.contextmanager
def signals_as_interrupts(signums: Iterable[int] = HANGUPS) -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Terminated` for the block (the main thread only); Python's
    default for them is to die at once, without a word about the run left going."""

    def fire(signum, _frame):
        raise Terminated(signum)

    with _handlers(signums, fire):
        yield


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT), SIGTERM or SIGHUP until the block ends, then raise it: starting a
    process and recording it must not be split, or a run would be left going that no command can
    see. Outside the main thread signals cannot be held and the block runs as it is."""
    received: list[int] = []
    with _handlers((signal.SIGINT, *HANGUPS), lambda signum, _frame: received.append(signum)):
        yield
    if received:
        raise KeyboardInterrupt if received[0] == signal.SIGINT else Terminated(received[0])
