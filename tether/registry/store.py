"""Access to the registry's store: the client, the tag names of a version, errors, small reads and writes.

Everything the other registry modules share: which tags a version carries (their names), how a
value is cut to fit MLflow's columns, how an alias is read (None when it is not set), how a
version argument becomes a number, and how an unreachable tracking server is reported.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.config import REPO_ROOT, TetherConfig
from tether.secrets import redact
from tether.tracking import tracking_errors, tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

TAG_COMPLETE = "tether.registration"
COMPLETE = "complete"
TAG_KEY = "idempotency_key"
TAG_PRIMARY = "primary_metric"
TAG_PRIMARY_VALUE = "primary_metric_value"
# The evaluation protocol a version was measured under: the names of tether.eval.gating's
# PROTOCOL_HASH_KEY / PROTOCOL_KEY (not imported here: that module loads the evaluation stack).
TAG_PROTOCOL_HASH = "eval_protocol_hash"
TAG_PROTOCOL = "eval_protocol"
# The model_versions.description and tag value columns are VARCHAR(5000) in MLflow's SQL schema.
MAX_TEXT = 5000
ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed; the message says what to do."""


class RegistryConflictError(RegistryError):
    """The champion alias moved under a promotion (someone bypassed the promotion lock)."""


def reports_unreachable(action: str, advice: str):
    """Decorate a registry function taking ``cfg`` and ``root``: an unreachable tracking server
    becomes one :class:`~tether.tracking.TrackingUnavailableError` saying what state is left.

    Args:
        action: what the function does (``"promote the candidate"``), named in the error.
        advice: the state the registry is left in and what to do.

    Returns:
        The decorator.
    """

    def decorate(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any):
            bound = sig.bind_partial(*args, **kwargs)
            cfg, root = bound.arguments["cfg"], bound.arguments.get("root")
            uri = tracking_uri(cfg, Path(root) if root is not None else REPO_ROOT)
            with tracking_errors(uri, action, advice):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def client(cfg: TetherConfig, root: Path | None) -> tuple[MlflowClient, str]:
    """An MLflow client on the configured store (tracking and registry) and its URI.

    Args:
        cfg: the config (``tracking.uri``).
        root: the project root of a local store (None = the repository).

    Returns:
        ``(client, uri)``.
    """
    from mlflow import MlflowClient

    uri = tracking_uri(cfg, Path(root) if root is not None else REPO_ROOT)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def error_code(exc: Exception) -> str:
    """MLflow's error code of an exception (``RESOURCE_ALREADY_EXISTS``, ...), '' when it has none."""
    return str(getattr(exc, "error_code", ""))


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``name@alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if error_code(exc) in NOT_FOUND or "alias" in str(exc).lower() and "not" in str(exc).lower():
            return None
        raise


def now() -> str:
    """The current UTC time, ISO 8601 to the second (the ``*_at`` tags)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """``str(value)`` cut to ``limit`` characters, with a mark where it was cut."""
    s = str(value)
    return s if len(s) <= limit else s[: limit - 15] + " [... cut]"


def version_str(version: Any) -> str:
    """A version number as a string, from a number, a string or a ``ModelVersion``.

    Raises:
        ValueError: not a version number.
    """
    v = getattr(version, "version", version)
    s = str(v).strip()
    if not s.isdigit():
        raise ValueError(f"model version {version!r}: expected a version number or a ModelVersion")
    return s


def set_tags(client: MlflowClient, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Set tags on a version, each value redacted and cut to fit."""
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, text(redact(str(v))))


def protocol_of(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``eval_protocol`` settings recorded in a version's tags (None when absent or unreadable)."""
    raw = tags.get(TAG_PROTOCOL)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
