"""Gates: pure functions that turn evaluation numbers into promotion verdicts.

Every gate returns a :class:`GateResult` that records what was compared, against what, under
which threshold, with which confidence interval, and why it passed or failed. Thresholds come
in as arguments; nothing here reads config, so the same numbers always give the same verdict.

Rules shared by every gate:
    * a NaN or infinite input (value, reference or threshold) fails, and the reason says which;
      a broken evaluation must never promote an adapter;
    * a value exactly at its threshold passes; "exactly" forgives float rounding
      (relative 1e-9), so ``110 / 100 - 1`` passes a ``0.1`` drift limit;
    * verdicts use the point estimates; the interval is recorded for the reviewer, in the
      units of the quantity compared with the threshold (see :class:`GateResult`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tether.eval.metrics import as_float

logger = logging.getLogger(__name__)

_REL_TOL = 1e-9
_ABS_TOL = 1e-12

# generation_health_gate: the metrics it knows and which direction is a regression.
HIGHER_IS_BETTER = ("distinct_1", "distinct_2")
LOWER_IS_BETTER = ("repeated_4gram_rate", "empty_rate")
RANGE_METRICS = ("length_ratio",)
HEALTH_METRICS = HIGHER_IS_BETTER + LOWER_IS_BETTER + RANGE_METRICS


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


def perplexity_drift_gate(
    ppl_candidate: float,
    ppl_base: float,
    max_drift: float,
    interval: tuple[float, float] | None = None,
    *,
    blocking: bool = True,
    metric: str = "perplexity",
    note: str = "",
) -> GateResult:
    """Block an adapter whose perplexity on general text drifted too far above the base model's.

    Pinned: the gate "blocks promotion when ``ppl_candidate / ppl_base - 1 > max_ppl_drift``";
    so it passes iff ``ppl_candidate / ppl_base - 1 <= max_drift``.

    Args:
        ppl_candidate: candidate perplexity on the reference corpus.
        ppl_base: base model perplexity, same corpus and tokenization.
        max_drift: allowed relative increase (0.05 = +5 %).
        interval: CI of the drift (e.g. from ``metrics.ppl_drift_ci``).
        blocking: whether a failure blocks promotion.
        metric: what was measured: the drift-panel source's name (``heldout_prose``).
        note: appended to the reason (e.g. the KL estimate of a self-sample source).
    """
    c, b, t = as_float(ppl_candidate), as_float(ppl_base), as_float(max_drift)
    iv = _interval(interval)
    where = "" if metric == "perplexity" else f" on {metric}"

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult("perplexity_drift", metric, c, b, t, iv, passed, reason, blocking)

    bad = _non_finite({"candidate": c, "base": b, "max_drift": t})
    if bad:
        return result(False, f"perplexity drift not computable: {bad}; a non-finite input never passes")
    if c <= 0 or b <= 0:
        return result(False, f"perplexities must be > 0 (candidate {c:g}, base {b:g}): the evaluation is broken")
    drift = c / b - 1.0
    passed = _le(drift, t)
    return result(
        passed,
        f"perplexity drift{where} {drift:+.2%} (candidate {c:.4g} vs base {b:.4g}){_fmt_iv(iv, pct=True)}{note} "
        f"{'<=' if passed else '>'} max {t:.2%}: {'pass' if passed else 'FAIL'}",
    )


def kl_gate(
    kl: float,
    max_kl: float,
    interval: tuple[float, float] | None = None,
    *,
    metric: str = "golden_prompts",
    blocking: bool = True,
) -> GateResult:
    """Block an adapter that moved too far from the base on the base's own answers.

    ``kl`` is the candidate's mean per-token NLL on text the base generated minus the base's own
    (nats per token, an estimate of KL(base || candidate)); passes iff ``kl <= max_kl``. It
    catches answers that stay fluent but lose their meaning, which distinct-n and length cannot.

    Args:
        kl: the estimate.
        max_kl: the limit in nats per token.
        interval: its CI (bootstrap over prompts).
        metric: what it was measured on.
        blocking: whether a failure blocks promotion.
    """
    k, t = as_float(kl), as_float(max_kl)
    iv = _interval(interval)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult("golden_kl", metric, k, 0.0, t, iv, passed, reason, blocking)

    bad = _non_finite({"kl": k, "max_kl": t})
    if bad:
        return result(False, f"KL to the base on {metric} not computable: {bad}; a non-finite input never passes")
    passed = _le(k, t)
    return result(
        passed,
        f"candidate NLL on the base's answers to {metric} is {k:+.4f} nats/token above the base's "
        f"(perplexity {math.expm1(k):+.2%}){_fmt_iv(iv)} {'<=' if passed else '>'} max {t:g}: "
        f"{'pass' if passed else 'FAIL'}",
    )


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
        iv = _interval(intervals.get(metric))
        if metric in RANGE_METRICS:
            results.append(_length_ratio_check(metric, cand.get(metric), tol, iv, blocking))
        else:
            results.append(_relative_check(metric, cand.get(metric), base.get(metric), tol, iv, blocking))
    return results


def beats_reference_gate(
    metric: str,
    candidate: float,
    reference: float,
    reference_name: str,
    min_margin: float = 0.0,
    interval: tuple[float, float] | None = None,
    *,
    blocking: bool = True,
    decide_on: Literal["point", "ci_lower"] = "point",
) -> GateResult:
    """The candidate must be at least ``min_margin`` better than a reference (higher is better).

    For NDCG@10 vs the popularity baseline, vs the zero-shot base model and vs the current
    champion. Passes iff ``candidate - reference >= min_margin``; with the default margin 0 a
    tie passes (pass a small positive margin to demand a strict improvement). When there is no
    champion yet, do not call this gate for it.

    Args:
        metric: metric name (``ndcg_at_10``).
        candidate: candidate value.
        reference: reference value.
        reference_name: ``popularity``, ``base``, ``champion``...; the gate is ``beats_<name>``.
        min_margin: required absolute improvement.
        interval: CI of candidate - reference (``metrics.paired_bootstrap_ci``).
        blocking: whether a failure blocks promotion.
        decide_on: ``point`` (the difference of the point estimates) or ``ci_lower`` (the
            lower bound of ``interval``: the lead must be established, not just observed). With
            ``ci_lower`` and no interval (e.g. a champion evaluated on other users) the point
            estimate decides, and the reason says so.
    """
    if decide_on not in ("point", "ci_lower"):
        raise ValueError(f"decide_on must be 'point' or 'ci_lower', got {decide_on!r}")
    c, r, t = as_float(candidate), as_float(reference), as_float(min_margin)
    iv = _interval(interval)
    gate = f"beats_{reference_name}"

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(gate, metric, c, r, t, iv, passed, reason, blocking)

    bad = _non_finite({"candidate": c, reference_name: r, "min_margin": t})
    if bad:
        return result(False, f"{metric} vs {reference_name} not computable: {bad}; a non-finite input never passes")
    diff = c - r
    if decide_on == "ci_lower" and iv is not None:
        passed = _le(t, iv[0])
        return result(
            passed,
            f"{metric} {c:.4g} vs {reference_name} {r:.4g}: diff {diff:+.4g}, CI lower bound {iv[0]:+.4g} "
            f"{'>=' if passed else '<'} margin {t:g} (gates.decide_on: ci_lower): {'pass' if passed else 'FAIL'}",
        )
    passed = _le(t, diff)
    fallback = " (no paired interval: the point estimate decides)" if decide_on == "ci_lower" else ""
    return result(
        passed,
        f"{metric} {c:.4g} vs {reference_name} {r:.4g}: diff {diff:+.4g}{_fmt_iv(iv)} "
        f"{'>=' if passed else '<'} margin {t:g}{fallback}: {'pass' if passed else 'FAIL'}",
    )


def floor_gate(
    metric: str,
    value: float,
    floor: float,
    interval: tuple[float, float] | None = None,
    *,
    blocking: bool = True,
) -> GateResult:
    """The value must be at least ``floor`` (e.g. valid-item rate of free generations)."""
    v, f = as_float(value), as_float(floor)
    iv = _interval(interval)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult("floor", metric, v, None, f, iv, passed, reason, blocking)

    bad = _non_finite({"value": v, "floor": f})
    if bad:
        return result(False, f"{metric} not computable: {bad}; a non-finite input never passes")
    passed = _le(f, v)
    return result(
        passed,
        f"{metric} {v:.4g}{_fmt_iv(iv)} {'>=' if passed else '<'} floor {f:g}: {'pass' if passed else 'FAIL'}",
    )


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


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _relative_check(
    metric: str, cand_value: Any, base_value: Any, tol: Any, iv: tuple[float, float] | None, blocking: bool
) -> GateResult:
    c, b, t = as_float(cand_value), as_float(base_value), as_float(tol)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult("generation_health", metric, c, b, t, iv, passed, reason, blocking)

    missing = [who for who, x in (("candidate", cand_value), ("base", base_value)) if x is None]
    if missing:
        return result(False, f"{metric} missing for {' and '.join(missing)}: cannot check, FAIL")
    bad = _non_finite({"candidate": c, "base": b, "tolerance": t})
    if bad:
        return result(False, f"{metric} not computable: {bad}; a non-finite input never passes")
    if metric in HIGHER_IS_BETTER:
        passed = _le(b - t, c)
        rule = f"must be >= base - {t:g} = {b - t:.4g}"
    else:
        passed = _le(c, b + t)
        rule = f"must be <= base + {t:g} = {b + t:.4g}"
    return result(
        passed,
        f"{metric} {c:.4g} vs base {b:.4g} (diff {c - b:+.4g}){_fmt_iv(iv)}; {rule}: {'pass' if passed else 'FAIL'}",
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
    bad = _non_finite({metric: v, "lo": lo, "hi": hi})
    if bad:
        return result(False, f"{metric} not computable: {bad}; a non-finite input never passes")
    if lo > hi:
        raise ValueError(f"generation_health_gate: {metric} range has lo {lo} > hi {hi}")
    passed = _le(lo, v) and _le(v, hi)
    return result(
        passed,
        f"{metric} {v:.4g} (candidate/base tokens){_fmt_iv(iv)} "
        f"{'within' if passed else 'outside'} [{lo:g}, {hi:g}]: {'pass' if passed else 'FAIL'}",
    )



def _non_finite(values: Mapping[str, float]) -> str:
    """Names and values of the non-finite entries, or "" when all are finite."""
    return ", ".join(f"{name} is {v}" for name, v in values.items() if not math.isfinite(v))


def _le(a: float, b: float) -> bool:
    """``a <= b`` forgiving float rounding, so a value exactly at its threshold passes."""
    return a <= b or math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)


def _interval(iv: Sequence[float] | None) -> tuple[float, float] | None:
    if iv is None:
        return None
    if len(iv) != 2:
        raise ValueError(f"interval must be (low, high), got {iv!r}")
    return (as_float(iv[0]), as_float(iv[1]))


def _fmt_iv(iv: tuple[float, float] | None, pct: bool = False) -> str:
    if iv is None:
        return ""
    if pct:
        return f", CI [{iv[0]:+.2%}, {iv[1]:+.2%}]"
    return f", CI [{iv[0]:+.4g}, {iv[1]:+.4g}]"


def _json_num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
