"""The one inter-process lock Tether uses: an exclusive file lock (``filelock``) with a deadline.

The model cache (converting the embedded model) and the registry (promotions) both take it. It is
an advisory ``flock`` underneath, so the operating system releases it when the holder exits or is
killed: a crashed process never leaves a lock that blocks the next one. Each acquisition makes its
own :class:`filelock.FileLock`, so two threads of one process exclude each other too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive(
    path: Path,
    *,
    timeout_s: float,
    on_timeout: Callable[[float], Exception],
    waiting: str | None = None,
    note_every_s: float = 30.0,
    poll_s: float = 0.05,
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder if missing) for the ``with`` body.

    Args:
        path: the lock file.
        timeout_s: how long to wait for another holder before giving up.
        on_timeout: builds the error to raise from the seconds waited (it should say what to do).
        waiting: logged every ``note_every_s`` while waiting, e.g. "another process converting X".
        note_every_s: how often the waiting line is logged.
        poll_s: how often the lock is tried.

    Raises:
        The exception ``on_timeout`` returns, once ``timeout_s`` has passed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, thread_local=False)
    started = time.monotonic()
    while True:
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise on_timeout(waited)
        try:
            lock.acquire(timeout=min(note_every_s, max(timeout_s - waited, 0.0)), poll_interval=poll_s)
            break
        except Timeout:
            if waiting and time.monotonic() - started <= timeout_s:
                logger.info("waiting for %s (lock %s)", waiting, path)
    try:
        yield
    finally:
        lock.release()
