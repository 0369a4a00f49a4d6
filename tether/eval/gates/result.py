"""The verdict of one check (:class:`GateResult`) and the overall verdict of many (:func:`summarize`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateResult:
    """One verdict.

    Attributes:
        gate: gate name (``perplexity_drift``, ``golden_kl``, ``generation_health``,
            ``beats_<reference>``, ``floor``).
        metric: the metric judged (a drift-panel source such as ``heldout_prose``, ``distinct_2``,
            ``ndcg_at_10``, ...).
        candidate: the candidate's value.
        reference: the reference value (base model, baseline, champion); None for a floor.
        threshold: the limit: max drift, tolerance, min margin, floor, or ``(lo, hi)``.
        interval: confidence interval of the quantity compared with the threshold (the drift
            for ``perplexity_drift``, candidate - reference for comparisons, the value itself for
            a floor), or None.
        passed: the verdict.
        reason: one sentence a reviewer can read without the code.
        blocking: whether a failure blocks promotion (advisory gates set False).
    """

    gate: str
    metric: str
    candidate: float | None
    reference: float | None
    threshold: float | tuple[float, float]
    interval: tuple[float, float] | None
    passed: bool
    reason: str
    blocking: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-safe dict: non-finite numbers become None (the reason keeps the raw value)."""
        threshold: Any = (
            [_json_num(t) for t in self.threshold] if isinstance(self.threshold, tuple) else _json_num(self.threshold)
        )
        return {
            "gate": self.gate,
            "metric": self.metric,
            "candidate": _json_num(self.candidate),
            "reference": _json_num(self.reference),
            "threshold": threshold,
            "interval": None if self.interval is None else [_json_num(x) for x in self.interval],
            "passed": bool(self.passed),
            "reason": self.reason,
            "blocking": bool(self.blocking),
        }


def summarize(results: Iterable[GateResult]) -> tuple[bool, list[GateResult]]:
    """Overall verdict.

    Returns:
        ``(all_passed, blocking_failures)``: ``all_passed`` is True iff there was at least one
        result and no blocking gate failed (advisory failures do not block). An empty list of
        results is not a pass: nothing was checked, so nothing is promoted.
    """
    results = list(results)
    failures = [r for r in results if r.blocking and not r.passed]
    if not results:
        logger.warning("summarize: no gate results; refusing to call that a pass")
    return (bool(results) and not failures, failures)


def _json_num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
