"""launcher.signals: SIGTERM/SIGHUP as words, a block no signal splits, handlers always restored."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from launcher.signals import Terminated, deferred_interrupts, signals_as_interrupts


def _mark(signum, frame):
    """A recognisable previous handler."""


@pytest.fixture
def marked():
    old = {s: signal.signal(s, _mark) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    yield
    for s, h in old.items():
        signal.signal(s, h)


def test_sigterm_in_the_block_is_terminated_with_its_exit_code_and_the_handler_comes_back(marked):
    with pytest.raises(Terminated) as caught, signals_as_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.exit_code == 143 and caught.value.name == "SIGTERM"
    assert isinstance(caught.value, KeyboardInterrupt)  # every Ctrl-C path handles it
    assert signal.getsignal(signal.SIGTERM) is _mark and signal.getsignal(signal.SIGHUP) is _mark


def test_a_signal_during_a_deferred_block_is_raised_only_after_it(marked):
    done = []
    with pytest.raises(Terminated) as caught, deferred_interrupts():
        os.kill(os.getpid(), signal.SIGHUP)
        done.append("recorded")  # the block finishes: start and record are not split
    assert done == ["recorded"] and caught.value.exit_code == 129
    assert all(signal.getsignal(s) is _mark for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT))


def test_ctrl_c_during_a_deferred_block_is_a_keyboard_interrupt_after_it(marked):
    with pytest.raises(KeyboardInterrupt) as caught, deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
    assert not isinstance(caught.value, Terminated)


def test_outside_the_main_thread_the_blocks_run_as_they_are(marked):
    ran = []

    def work():
        with signals_as_interrupts(), deferred_interrupts():
            ran.append(True)

    t = threading.Thread(target=work)
    t.start()
    t.join(10)
    assert ran == [True] and signal.getsignal(signal.SIGTERM) is _mark


def test_a_failed_install_half_way_restores_what_it_had_set(marked):
    """SIGKILL cannot be caught: installing stops there (OSError), and SIGTERM's handler is put back."""
    with pytest.raises(OSError), signals_as_interrupts((signal.SIGTERM, signal.SIGKILL)):
        pass
    assert signal.getsignal(signal.SIGTERM) is _mark
