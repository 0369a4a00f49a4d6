"""Reading the registry: its status for people (``tether status``), the champion for the gates, the served champion.

Only complete registrations are listed (a half-made version is never shown or promoted); each
version is summarized from its tags: metric, verdicts, decision, blocked reason, manual override,
lineage and the evaluation protocol it was measured under.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.config import TetherConfig
from tether.eval.metrics import as_float
from tether.registry.store import (
    COMPLETE, TAG_COMPLETE, TAG_PRIMARY, TAG_PRIMARY_VALUE, TAG_PROTOCOL, TAG_PROTOCOL_HASH, alias_version,
    client as store_client, protocol_of, reports_unreachable,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


def _summary(mv: ModelVersion) -> dict[str, Any]:
    t = mv.tags
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
        "aliases": list(getattr(mv, "aliases", []) or []),
        "primary_metric": t.get(TAG_PRIMARY),
        "primary_metric_value": as_float(t.get(TAG_PRIMARY_VALUE)),
        "verdict": t.get("verdict"),
        "gates": {k.removeprefix("gate."): val for k, val in sorted(t.items()) if k.startswith("gate.") and k.count(".") == 1},
        "decision": t.get("promotion.decision"),
        "blocked": t.get("blocked") == "true",
        "blocked_reason": t.get("blocked_reason"),
        "promoted_manually_by": t.get("promoted_manually_by"),
        "manual_reason": t.get("manual_reason"),
        "lineage": {k: t.get(k) for k in ("git_commit", "data_hash", "config_hash", "base_model_hash")},
        TAG_PROTOCOL_HASH: t.get(TAG_PROTOCOL_HASH),
        TAG_PROTOCOL: protocol_of(t),
    }


@reports_unreachable("read the registry", "Nothing was changed; run the command (or the flow) again once the server is back.")
def registry_status(cfg: TetherConfig, *, root: Path | None = None, recent: int = 5) -> dict[str, Any]:
    """Champion, challenger and the latest versions, with their metric, verdicts and blocked reasons.

    Args:
        cfg: the config.
        root: the project root of a local store (None = the repository).
        recent: how many of the newest complete versions to list.

    Returns:
        ``{"name", "primary_metric", "champion": {...} | None, "challenger": {...} | None,
        "recent": [{...}, ...]}``, each version as version, run, creation time, aliases,
        primary metric and value, verdict, per-gate verdicts, decision, blocked reason, manual
        override, lineage and evaluation protocol (``eval_protocol_hash``, ``eval_protocol``;
        None for a version registered without one).
    """
    client, _ = store_client(cfg, root)
    name, rc = cfg.registry.name, cfg.registry
    out: dict[str, Any] = {"name": name, "primary_metric": cfg.gates.primary_metric}
    for role, alias in (("champion", rc.champion_alias), ("challenger", rc.challenger_alias)):
        mv = alias_version(client, name, alias)
        out[role] = _summary(mv) if mv is not None else None
    try:
        versions = client.search_model_versions(f"name = '{name}'", max_results=max(recent * 4, 20), order_by=["version_number DESC"])
    except Exception:  # no such registered model yet
        versions = []
    complete = [mv for mv in versions if mv.tags.get(TAG_COMPLETE) == COMPLETE]
    out["recent"] = [_summary(mv) for mv in complete[:recent]]
    # search_model_versions leaves ModelVersion.aliases empty: take them from the registered model.
    if out["recent"]:
        held: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(name).aliases.items():
            held.setdefault(str(version), []).append(alias)
        for summary in out["recent"]:
            summary["aliases"] = sorted(held.get(summary["version"], []))
    return out


@reports_unreachable("read the champion", "Nothing was changed; run the flow again once the server is back.")
def champion_for_gates(cfg: TetherConfig, *, root: Path | None = None) -> dict[str, Any] | None:
    """The current ``@champion`` as :func:`tether.eval.gating.build_gates` takes it.

    Args:
        cfg: the config (``gates.primary_metric``, ``registry``).
        root: the project root of a local store (None = the repository).

    Returns:
        None without a champion, else ``{<primary metric>: value, "name": "v<N>", "version": "<N>",
        "eval_protocol_hash": ..., "eval_protocol": {...}}`` (the protocol entries None for a
        version registered without one: its numbers are then never compared).
    """
    client, _ = store_client(cfg, root)
    mv = alias_version(client, cfg.registry.name, cfg.registry.champion_alias)
    if mv is None:
        return None
    summary = _summary(mv)
    return {
        cfg.gates.primary_metric: summary["primary_metric_value"],
        "name": f"v{summary['version']}",
        "version": summary["version"],
        TAG_PROTOCOL_HASH: summary[TAG_PROTOCOL_HASH],
        TAG_PROTOCOL: summary[TAG_PROTOCOL],
    }


def load_champion(cfg: TetherConfig, *, root: Path | None = None, model_config: Mapping[str, Any] | None = None):
    """``mlflow.pyfunc.load_model("models:/<name>@champion")`` on the configured store.

    Args:
        cfg: the config.
        root: the project root of a local store (None = the repository).
        model_config: load-time overrides (``base_model``, ``cache_dir``, ``device``, ``dtype``; see tether.serving).

    Returns:
        The loaded ``PyFuncModel``.
    """
    import mlflow

    _, uri = store_client(cfg, root)
    before_tracking, before_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return mlflow.pyfunc.load_model(
            f"models:/{cfg.registry.name}@{cfg.registry.champion_alias}",
            model_config=dict(model_config) if model_config else None,
        )
    finally:
        mlflow.set_tracking_uri(before_tracking)
        mlflow.set_registry_uri(before_registry)
