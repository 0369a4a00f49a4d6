"""tether.locks.exclusive: threads and processes exclude each other; a dead holder frees the lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tether.locks import exclusive


def _timeout(waited: float) -> Exception:
    return TimeoutError(f"waited {waited:.1f} s")


def test_two_threads_never_hold_the_lock_at_once(tmp_path: Path) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    def work() -> None:
        for _ in range(20):
            with exclusive(tmp_path / "x.lock", timeout_s=30, on_timeout=_timeout, poll_s=0.001):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                time.sleep(0.001)
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


def test_a_held_lock_times_out_with_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.lock"
    with exclusive(path, timeout_s=5, on_timeout=_timeout):
        with pytest.raises(TimeoutError, match="waited"):
            with exclusive(path, timeout_s=0.3, on_timeout=_timeout):
                pass
    with exclusive(path, timeout_s=0.3, on_timeout=_timeout):  # released: free again
        pass


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom tether.locks import exclusive\n"
        f"with exclusive(Path({str(path)!r}), timeout_s=5, on_timeout=TimeoutError):\n"
        "    print('held', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError):
            with exclusive(path, timeout_s=0.3, on_timeout=_timeout):
                pass
        holder.kill()
        holder.wait()
        with exclusive(path, timeout_s=5, on_timeout=_timeout):
            pass
    finally:
        holder.kill()
