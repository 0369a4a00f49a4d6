"""tether.interrupted.interrupts_deferred: a signal inside the block takes effect when it ends."""

from __future__ import annotations

import os
import signal

import pytest

from tether.interrupted import interrupts_deferred


class _Interrupted(BaseException):
    pass


@pytest.fixture
def raising_sigterm():
    def handler(signum, _frame):
        raise _Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_signal_inside_the_block_is_raised_after_it(raising_sigterm) -> None:
    done: list[str] = []
    with pytest.raises(_Interrupted):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the write finished")  # not cut short by the signal
    assert done == ["the write finished"]
    assert signal.getsignal(signal.SIGTERM).__name__ == "handler"  # the handler in place before is back


def test_without_a_signal_nothing_happens(raising_sigterm) -> None:
    with interrupts_deferred():
        pass
    with pytest.raises(_Interrupted):  # and signals are delivered straight away again
        os.kill(os.getpid(), signal.SIGTERM)
