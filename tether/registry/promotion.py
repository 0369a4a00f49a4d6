"""Promotion: the promotion lock and the MLflow writes around the policy (:func:`tether.registry.policy.decide`).

:func:`promote` reads the candidate and the champion inside the lock, asks the policy, and writes
what it decided: ``@challenger`` always points at the newest promoted-or-blocked candidate (never
moved back to an older version); ``@champion`` moves only on a ``champion`` decision; a blocked
version is tagged ``blocked=true`` with ``blocked_reason``. Tags are written first and aliases
last, so an alias never points at a version whose record is not complete; after the move the
champion is read back, and a mismatch (someone moved it bypassing the lock, e.g. in the UI)
raises :class:`~tether.registry.store.RegistryConflictError` instead of reporting a promotion
that did not hold. :func:`manual_promote` overrides the policy and records who and why.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tether.config import TetherConfig
from tether.eval.metrics import as_float
from tether.registry.locks import promotion_lock
from tether.registry.policy import GateSummary, PolicyDecision, VersionFacts, decide
from tether.registry.store import (
    TAG_PRIMARY_VALUE, RegistryError, alias_version, client as store_client, now, reports_unreachable, set_tags,
    version_str,
)
from tether.registry.verify import require_complete, verify_champion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionDecision:
    """What a promotion did.

    Attributes:
        name: the registered model.
        version: the candidate version.
        decision: ``champion`` (moved to it), ``already_champion``, or ``blocked``.
        champion_before: the champion version before (None = there was none).
        champion_after: the champion version after.
        candidate_metric: the candidate's primary metric.
        champion_metric: the previous champion's primary metric (None without a champion).
        reasons: why (gate failures, the comparison with the champion, a manual reason).
        manual: a manual override (:func:`manual_promote`).
    """

    name: str
    version: str
    decision: Literal["champion", "already_champion", "blocked"]
    champion_before: str | None
    champion_after: str | None
    candidate_metric: float
    champion_metric: float | None
    reasons: tuple[str, ...] = ()
    manual: bool = False

    @property
    def promoted(self) -> bool:
        """Whether the candidate is the champion after the call."""
        return self.decision in ("champion", "already_champion")


def promotion_tags(policy: PolicyDecision, champion_before: str | None, at: str) -> dict[str, str]:
    """The tags a promotion writes on the candidate.

    Args:
        policy: the decision.
        champion_before: the champion version before (None = none).
        at: the time (ISO 8601).

    Returns:
        ``promotion.decision``, ``promotion.at``, ``promotion.champion_before``, ``blocked`` and,
        when blocked, ``blocked_reason`` (the reasons joined by ``; ``).
    """
    tags = {
        "promotion.decision": policy.outcome,
        "promotion.at": at,
        "promotion.champion_before": champion_before or "none",
        "blocked": "true" if policy.blocked else "false",
    }
    if policy.blocked:
        tags["blocked_reason"] = "; ".join(policy.reasons)
    return tags


@reports_unreachable(
    "promote the candidate",
    "@champion is moved last, so it moved completely or not at all: check `tether status` and re-run the flow "
    "once the server is back (registration and promotion are idempotent for a flow run).",
)
def promote(
    cfg: TetherConfig,
    version: Any,
    *,
    all_gates_passed: bool,
    candidate_metric: float,
    reasons: Sequence[str] = (),
    root: Path | None = None,
) -> PromotionDecision:
    """Set ``@challenger`` to the version; move ``@champion`` only if it passed every gate and beats the champion.

    The champion is compared only when both versions were measured under the same evaluation
    protocol (equal ``eval_protocol_hash`` tags; see :mod:`tether.registry.policy`); otherwise
    the candidate is blocked with the settings that differ.

    Args:
        cfg: the config (``registry``, ``gates.primary_metric``, ``gates.min_margin_vs_champion``).
        version: a version number or the ``ModelVersion`` from :func:`register_candidate`.
        all_gates_passed: every blocking gate passed (:func:`tether.eval.gates.summarize`).
        candidate_metric: the candidate's primary metric (must equal its ``primary_metric_value`` tag).
        reasons: why gates failed (the blocking failures' reasons), recorded in ``blocked_reason``.
        root: the project root of a local store (None = the repository).

    Returns:
        The decision.

    Raises:
        RegistryError: the version is an incomplete registration, or its recorded metric differs.
        RegistryConflictError: the champion moved under the promotion (bypassing the lock).
    """
    client, uri = store_client(cfg, root)
    name, rc = cfg.registry.name, cfg.registry
    v = version_str(version)
    primary = cfg.gates.primary_metric
    candidate_metric = as_float(candidate_metric)
    with promotion_lock(cfg, client, uri):
        mv = require_complete(client, name, v)
        recorded = as_float(mv.tags.get(TAG_PRIMARY_VALUE))
        if math.isfinite(recorded) and not math.isclose(recorded, candidate_metric, rel_tol=1e-9, abs_tol=1e-12):
            raise RegistryError(
                f"{name} version {v} was registered with {primary}={recorded!r} but promote() got {candidate_metric!r}"
            )
        champion_mv = alias_version(client, name, rc.champion_alias)
        champion = VersionFacts.from_tags(champion_mv.version, champion_mv.tags) if champion_mv is not None else None
        before = champion.version if champion is not None else None
        policy = decide(
            VersionFacts.from_tags(v, mv.tags, metric=candidate_metric),
            champion,
            GateSummary(bool(all_gates_passed), tuple(str(r) for r in reasons)),
            cfg,
        )
        set_tags(client, name, v, promotion_tags(policy, before, now()))
        if not policy.blocked:
            with contextlib.suppress(Exception):
                client.delete_model_version_tag(name, v, "blocked_reason")
        if policy.outcome == "champion" and before is not None:
            set_tags(client, name, before, {"superseded_by": v, "superseded_at": now()})
        # Aliases last: every tag above exists before an alias points here.
        challenger = alias_version(client, name, rc.challenger_alias)
        if challenger is None or int(challenger.version) <= int(v):
            client.set_registered_model_alias(name, rc.challenger_alias, v)
        if policy.outcome == "champion":
            client.set_registered_model_alias(name, rc.champion_alias, v)
        after = v if not policy.blocked else before
        verify_champion(client, name, rc.champion_alias, after)
    result = PromotionDecision(
        name, v, policy.outcome, before, after, candidate_metric,
        champion.metric if champion is not None else None, policy.reasons,
    )
    log.info("%s version %s: %s (%s)", name, v, policy.outcome, "; ".join(policy.reasons))
    return result


@reports_unreachable("promote by hand", "Check `tether status` once the server is back, then run the command again.")
def manual_promote(cfg: TetherConfig, version: Any, reason: str, user: str, *, root: Path | None = None) -> PromotionDecision:
    """Move ``@champion`` to a version by hand, overriding the gates; the override is recorded in tags.

    Args:
        cfg: the config.
        version: a version number or ``ModelVersion``.
        reason: why (required; kept in ``manual_reason``).
        user: who (required; kept in ``promoted_manually_by``).
        root: the project root of a local store (None = the repository).

    Returns:
        The decision (``manual=True``).
    """
    if not str(reason).strip() or not str(user).strip():
        raise ValueError("manual_promote needs a reason and a user: the override is an audit record")
    client, uri = store_client(cfg, root)
    name, alias = cfg.registry.name, cfg.registry.champion_alias
    v = version_str(version)
    with promotion_lock(cfg, client, uri):
        mv = require_complete(client, name, v)
        champion = alias_version(client, name, alias)
        before = str(champion.version) if champion is not None else None
        at = now()
        set_tags(
            client, name, v,
            {
                "promoted_manually_by": user,
                "manual_reason": reason,
                "manual_promoted_at": at,
                "promotion.decision": "champion (manual)",
                "promotion.at": at,
                "promotion.champion_before": before or "none",
            },
        )
        if before is not None and before != v:
            set_tags(client, name, before, {"superseded_by": v, "superseded_at": at})
        client.set_registered_model_alias(name, alias, v)
        verify_champion(client, name, alias, v)
    log.warning("%s version %s made @%s by hand by %s: %s", name, v, alias, user, reason)
    return PromotionDecision(
        name, v, "champion" if before != v else "already_champion", before, v,
        as_float(mv.tags.get(TAG_PRIMARY_VALUE)),
        as_float(champion.tags.get(TAG_PRIMARY_VALUE)) if champion is not None else None,
        (f"manual: {reason} ({user})",), manual=True,
    )
