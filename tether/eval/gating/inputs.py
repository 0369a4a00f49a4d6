"""What a gate's check reads: the evaluation, the thresholds, the champion, and the numbers drawn from them.

:class:`GateInputs` is the one argument every check of :data:`~tether.eval.gating.definitions.GATES`
gets besides its own row; the helpers below read a paired interval or a champion's value out of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tether.eval import metrics

if TYPE_CHECKING:
    from tether.config import GateConfig
    from tether.eval.evaluate import Evaluation


@dataclass(frozen=True)
class GateInputs:
    """Everything the gates of one evaluation are judged on.

    Attributes:
        evaluation: the evaluation judged.
        cfg: the ``gates`` config section (the thresholds, ``primary_metric``, ``decide_on``).
        champion: the current champion's metrics (see :func:`~tether.eval.gating.build_gates`), or None.
        protocol: the candidate's :func:`~tether.eval.gating.protocol_settings`, or None (no check).
        drift_limits: drift-panel source -> its own limit; a source not named gets ``cfg.max_ppl_drift``.
    """

    evaluation: Evaluation
    cfg: GateConfig
    champion: Mapping[str, Any] | None = None
    protocol: Mapping[str, Any] | None = None
    drift_limits: Mapping[str, float] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        """``gates.primary_metric``: the metric the ``beats_*`` gates compare."""
        return self.cfg.primary_metric


def paired_interval(evaluation: Evaluation, reference: str, metric: str) -> tuple[float, float] | None:
    """candidate - reference CI: the stored one for the primary metric, else bootstrapped from per-user values.

    Args:
        evaluation: the evaluation (its ``comparisons`` and ``per_user`` values).
        reference: an evaluated reference system (``popularity``, ``base``).
        metric: the metric compared.

    Returns:
        ``(low, high)``, or None without per-user values of both systems for the same users.
    """
    stored = evaluation.comparisons.get(f"candidate_vs_{reference}")
    if stored is not None and stored.get("metric") == metric:
        return stored.get("interval")
    a = evaluation.per_user.get("candidate", {}).get(metric)
    b = evaluation.per_user.get(reference, {}).get(metric)
    if a is None or b is None or len(a) != len(b) or not len(a):
        return None
    return metrics.paired_bootstrap_ci(
        a, b, n_boot=evaluation.bootstrap_samples, alpha=1.0 - evaluation.ci_level, seed=evaluation.seed
    )


def champion_interval(evaluation: Evaluation, champion: Mapping[str, Any], metric: str) -> tuple[float, float] | None:
    """Paired CI vs the champion, only when it was evaluated on exactly the same users.

    Args:
        evaluation: the candidate's evaluation.
        champion: the champion's metrics, with ``per_user`` (metric -> values) and ``user_ids``.
        metric: the metric compared.
    """
    per_user = champion.get("per_user") or {}
    b = per_user.get(metric)
    a = evaluation.per_user.get("candidate", {}).get(metric)
    same_users = list(champion.get("user_ids") or []) == list(evaluation.user_ids)
    if a is None or b is None or len(a) != len(b) or not same_users or not len(a):
        return None
    return metrics.paired_bootstrap_ci(
        a, b, n_boot=evaluation.bootstrap_samples, alpha=1.0 - evaluation.ci_level, seed=evaluation.seed
    )


def champion_value(champion: Mapping[str, Any], metric: str) -> float:
    """The champion's value of ``metric``: a flat key, or the ``candidate.<metric>`` name logged to MLflow; else NaN."""
    for key in (metric, f"candidate.{metric}"):
        if key in champion and champion[key] is not None:
            return float(champion[key])
    return math.nan
