"""The promotion lock without MLflow (unit tier): where the lock file lies, mutual exclusion, its timeout error.

The racing promotions on real stores are in tests/registry/test_registry.py and tests/pipeline/test_faults.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tether.config import TetherConfig
from tether.registry import RegistryError, promotion_lock
from tether.registry.locks import lock_path


def _cfg(lock: str = "auto", timeout_s: float = 120.0) -> TetherConfig:
    cfg = TetherConfig()
    return cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"lock": lock, "lock_timeout_s": timeout_s})})


def test_the_lock_file_lies_beside_a_sqlite_file_or_inside_a_file_store(tmp_path: Path) -> None:
    assert lock_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db.tether-registry.lock"
    assert lock_path(f"file://{tmp_path}/store") == tmp_path / "store" / ".tether-registry.lock"
    assert lock_path(str(tmp_path / "store")) == tmp_path / "store" / ".tether-registry.lock"


def test_the_file_lock_excludes_and_a_stuck_holder_times_out_saying_what_to_check(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with promotion_lock(_cfg(), None, uri):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with pytest.raises(TimeoutError) as err:
            with promotion_lock(_cfg(timeout_s=0.3), None, uri):
                pytest.fail("entered a lock another promotion holds")
        assert str(err.value) == (
            f"{tmp_path}/mlflow.db.tether-registry.lock: another promotion held the registry lock for over 0 s "
            "(registry.lock_timeout_s); is a tether process stuck?"
        )
    finally:
        release.set()
        thread.join(10)
    with promotion_lock(_cfg(timeout_s=1), None, uri):  # released: free again
        pass


def test_a_file_lock_is_refused_for_a_remote_store() -> None:
    with pytest.raises(RegistryError, match="registry.lock=file needs a local store"):
        with promotion_lock(_cfg("file"), None, "http://127.0.0.1:5000"):
            pass
