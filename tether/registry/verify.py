"""Verification of what is registered: the stored adapter's bytes, a complete record, the champion after a move.

Nothing is trusted because a write returned: the adapter logged with a version is downloaded back
and compared with the source before the version exists; a version is promoted only when its
registration completed (``tether.registration=complete``, the last tag written); and the champion
alias is read back after a promotion moved it, so a move that did not hold is an error, not a
reported promotion.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tether.io import sha256_file, sha256_listing
from tether.registry.store import COMPLETE, TAG_COMPLETE, RegistryConflictError, RegistryError, alias_version

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


def dir_digest(directory: Path) -> str:
    """sha256 over the sorted ``<sha256>  <relative path>`` listing of every file under ``directory``.

    Args:
        directory: e.g. a saved adapter.

    Returns:
        The hex digest (the ``adapter_sha256`` tag of a version).
    """
    directory = Path(directory)
    return sha256_listing({p.relative_to(directory).as_posix(): sha256_file(p) for p in directory.rglob("*") if p.is_file()})


def verify_stored_adapter(model_uri: str, expected: str, dst: Path) -> None:
    """Download the stored adapter back and compare its bytes with the source.

    Args:
        model_uri: the logged model (``models:/m-...``).
        expected: :func:`dir_digest` of the source adapter.
        dst: an empty folder to download into.

    Raises:
        RegistryError: the logged model holds no single adapter, or its bytes differ.
    """
    import mlflow

    from tether.serving import ADAPTER_FILES

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    found = [p.parent for p in local.rglob(ADAPTER_FILES[1]) if (p.parent / ADAPTER_FILES[0]).is_file()]
    if len(found) != 1:
        raise RegistryError(f"{model_uri}: expected one adapter in the logged model, found {len(found)}")
    got = dir_digest(found[0])
    if got != expected:
        raise RegistryError(f"{model_uri}: the stored adapter differs from the source (sha256 {got[:12]} != {expected[:12]})")


def require_complete(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """The version, if its registration completed.

    Raises:
        RegistryError: it was left by a failed registration (never promoted).
    """
    mv = client.get_model_version(name, version)
    if mv.tags.get(TAG_COMPLETE) != COMPLETE:
        raise RegistryError(
            f"{name} version {version} is not a complete registration (tag {TAG_COMPLETE} missing): "
            "it was left by a failed register_candidate and is never promoted; register the candidate again"
        )
    return mv


def verify_champion(client: MlflowClient, name: str, alias: str, expected: str | None) -> None:
    """Read the alias back right after a promotion set it.

    Args:
        client: the store's client.
        name: the registered model.
        alias: the champion alias.
        expected: the version it must point at (None = no champion).

    Raises:
        RegistryConflictError: it points elsewhere (moved bypassing the promotion lock).
    """
    after = alias_version(client, name, alias)
    got = str(after.version) if after is not None else None
    if got != expected:
        raise RegistryConflictError(
            f"{name}@{alias} is version {got} right after this promotion set it to {expected}: something "
            "moved it without the promotion lock (the UI, another tool). Check registry_status() and fix it "
            "with tether.registry.manual_promote."
        )
