"""The generation-health gate: the candidate's free generations against the base's, metric by metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tether.eval.gates.result import GateResult
from tether.eval.gates.rules import as_interval, fmt_interval, le, not_computable, verdict_word
from tether.eval.metrics import as_float

# The metrics generation_health_gate knows and which direction is a regression.
HIGHER_IS_BETTER = ("distinct_1", "distinct_2")
LOWER_IS_BETTER = ("repeated_4gram_rate", "empty_rate")
RANGE_METRICS = ("length_ratio",)
HEALTH_METRICS = HIGHER_IS_BETTER + LOWER_IS_BETTER + RANGE_METRICS


def generation_health_gate(
    cand: Mapping[str, float],
    base: Mapping[str, float],
    tolerances: Mapping[str, float | tuple[float, float] | Sequence[float]],
    intervals: Mapping[str, tuple[float, float]] | None = None,
    *,
    blocking: bool = True,
) -> list[GateResult]:
    """Compare the candidate's free generations with the base model's on the golden prompts.

    Checked metrics are the keys of ``tolerances`` (one :class:`GateResult` each, in the
    order given); a known metric without a tolerance is not checked. Tolerances are absolute
    differences in the metric's units:

    * ``distinct_1``, ``distinct_2``: pass iff ``cand >= base - tol``;
    * ``repeated_4gram_rate``, ``empty_rate``: pass iff ``cand <= base + tol``;
    * ``length_ratio``: tolerance is ``(lo, hi)``; pass iff ``lo <= cand["length_ratio"] <= hi``
      (the ratio is already candidate over base; its reference is recorded as 1.0).

    A metric missing from ``cand`` or ``base`` fails with a reason.

    Args:
        cand: candidate metrics.
        base: base-model metrics (same prompts, same decoding).
        tolerances: metric -> tolerance (or ``(lo, hi)`` for ``length_ratio``).
        intervals: optional metric -> CI of candidate - base (of the ratio for length_ratio).
        blocking: whether a failure blocks promotion.

    Raises:
        ValueError: on an unknown metric name or a malformed length-ratio range (config bugs).
    """
    unknown = [m for m in tolerances if m not in HEALTH_METRICS]
    if unknown:
        raise ValueError(f"generation_health_gate: unknown metric(s) {unknown}; known: {list(HEALTH_METRICS)}")
    intervals = intervals or {}
    results = []
    for metric, tol in tolerances.items():
        iv = as_interval(intervals.get(metric))
        if metric in RANGE_METRICS:
            results.append(_length_ratio_check(metric, cand.get(metric), tol, iv, blocking))
        else:
            results.append(_relative_check(metric, cand.get(metric), base.get(metric), tol, iv, blocking))
    return results


def _relative_check(
    metric: str, cand_value: Any, base_value: Any, tol: Any, iv: tuple[float, float] | None, blocking: bool
) -> GateResult:
    c, b, t = as_float(cand_value), as_float(base_value), as_float(tol)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult("generation_health", metric, c, b, t, iv, passed, reason, blocking)

    missing = [who for who, x in (("candidate", cand_value), ("base", base_value)) if x is None]
    if missing:
        return result(False, f"{metric} missing for {' and '.join(missing)}: cannot check, FAIL")
    bad = not_computable(metric, {"candidate": c, "base": b, "tolerance": t})
    if bad:
        return result(False, bad)
    if metric in HIGHER_IS_BETTER:
        passed = le(b - t, c)
        rule = f"must be >= base - {t:g} = {b - t:.4g}"
    else:
        passed = le(c, b + t)
        rule = f"must be <= base + {t:g} = {b + t:.4g}"
    return result(
        passed,
        f"{metric} {c:.4g} vs base {b:.4g} (diff {c - b:+.4g}){fmt_interval(iv)}; {rule}: {verdict_word(passed)}",
    )


def _length_ratio_check(
    metric: str, value: Any, tol: Any, iv: tuple[float, float] | None, blocking: bool
) -> GateResult:
    try:
        lo, hi = (as_float(x) for x in tol)
    except (TypeError, ValueError):
        raise ValueError(f"generation_health_gate: {metric} tolerance must be (lo, hi), got {tol!r}") from None
    v = as_float(value)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult("generation_health", metric, v, 1.0, (lo, hi), iv, passed, reason, blocking)

    if value is None:
        return result(False, f"{metric} missing for candidate: cannot check, FAIL")
    bad = not_computable(metric, {metric: v, "lo": lo, "hi": hi})
    if bad:
        return result(False, bad)
    if lo > hi:
        raise ValueError(f"generation_health_gate: {metric} range has lo {lo} > hi {hi}")
    passed = le(lo, v) and le(v, hi)
    return result(
        passed,
        f"{metric} {v:.4g} (candidate/base tokens){fmt_interval(iv)} "
        f"{'within' if passed else 'outside'} [{lo:g}, {hi:g}]: {verdict_word(passed)}",
    )
