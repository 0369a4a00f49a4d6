"""The promotion lock: every registry write of Tether runs under it (compare-and-set of ``@champion``).

MLflow has no transactions, so "read the champion, compare, move the alias" must not interleave
between two promoters. For a local store (``sqlite:///...`` or a file store) the lock is an
exclusive file lock (:func:`tether.locks.exclusive`) on ``<store>.tether-registry.lock`` beside
it: exact across threads and processes, released by the kernel if a process dies. For a remote
tracking server it is a lease held as a registered model named ``<name>.promotion-lock``:
creating a registered model is atomic create-if-absent in every MLflow backend (a unique key),
so exactly one promoter holds it; the lease records its owner, and a lease older than
``registry.lock_timeout_s`` (a crashed holder's) is broken.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from tether.config import TetherConfig
from tether.locks import exclusive
from tether.registry.store import ALREADY_EXISTS, NOT_FOUND, RegistryError, error_code
from tether.tracking import is_local_store

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def lock_path(uri: str) -> Path:
    """``<db>.tether-registry.lock`` beside a sqlite file, or inside a file store's directory.

    Args:
        uri: a local tracking URI (``sqlite:///...``, ``file:...`` or a path).

    Returns:
        The lock file.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else unquote(parsed.path)
        return Path(str(Path(db).resolve()) + ".tether-registry.lock")
    store = Path(unquote(parsed.path) if parsed.scheme == "file" else uri).resolve()
    return store / ".tether-registry.lock"


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """The exclusive registry lock file of a local store, for the ``with`` body.

    Args:
        path: the lock file (:func:`lock_path`).
        timeout_s: how long to wait for another holder (``registry.lock_timeout_s``).

    Raises:
        TimeoutError: another holder kept it longer than ``timeout_s``.
    """

    def stuck(waited: float) -> TimeoutError:
        return TimeoutError(
            f"{path}: another promotion held the registry lock for over {timeout_s:.0f} s "
            "(registry.lock_timeout_s); is a tether process stuck?"
        )

    with exclusive(path, timeout_s=timeout_s, on_timeout=stuck, waiting="another promotion of the registry"):
        yield


@contextlib.contextmanager
def registry_lease(client: MlflowClient, name: str, timeout_s: float) -> Iterator[None]:
    """A lease held as a registered model: creation is atomic create-if-absent in every backend.

    Args:
        client: the client of the store.
        name: the registered model the lease guards (the lease is ``<name>.promotion-lock``).
        timeout_s: how long to wait for another holder; a lease older than this is broken.

    Raises:
        TimeoutError: another holder kept a fresh lease longer than ``timeout_s``.
    """
    from mlflow.exceptions import MlflowException

    lock_name = f"{name}.promotion-lock"
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(
                lock_name,
                tags={"tether.lease_owner": token},
                description=f"Promotion lease for {name} (tether.registry); deleted when the promotion ends.",
            )
            break
        except MlflowException as exc:
            # "already exists": someone holds the lease. "not found": a sqlite store can report
            # this when the holder deletes the lease while our create is writing its tags. Both
            # mean "contended": wait and try again; anything else is a real error.
            if error_code(exc) not in ALREADY_EXISTS and error_code(exc) not in NOT_FOUND:
                raise
        with contextlib.suppress(MlflowException):
            # The server's creation time, not a tag: tags may land after the model row exists.
            held = client.get_registered_model(lock_name)
            if held.creation_timestamp / 1000 + timeout_s < time.time():
                log.warning("breaking the expired promotion lease %s (owner %s)", lock_name, held.tags.get("tether.lease_owner"))
                client.delete_registered_model(lock_name)
                continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"registered model {lock_name!r}: another promotion held the lease for over {timeout_s:.0f} s")
        time.sleep(0.05 + random.random() * 0.2)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            if client.get_registered_model(lock_name).tags.get("tether.lease_owner") == token:
                client.delete_registered_model(lock_name)


@contextlib.contextmanager
def promotion_lock(cfg: TetherConfig, client: MlflowClient, uri: str) -> Iterator[None]:
    """The lock every registry write of Tether runs under (see the module docstring).

    Args:
        cfg: the config (``registry.lock``: auto, file or registry; ``registry.lock_timeout_s``).
        client: the client of the store (used by the lease).
        uri: the tracking URI (auto: a file lock for a local store, the lease for a server).

    Raises:
        RegistryError: ``registry.lock=file`` with a remote store.
        TimeoutError: another promotion held the lock for over ``registry.lock_timeout_s``.
    """
    kind = cfg.registry.lock
    if kind == "auto":
        kind = "file" if is_local_store(uri) else "registry"
    if kind == "file":
        if not is_local_store(uri):
            raise RegistryError("registry.lock=file needs a local store, but the tracking URI is remote; use auto or registry")
        with file_lock(lock_path(uri), cfg.registry.lock_timeout_s):
            yield
    else:
        with registry_lease(client, cfg.registry.name, cfg.registry.lock_timeout_s):
            yield
