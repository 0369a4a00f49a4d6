"""The scalar gates: perplexity drift, golden-prompt KL, beats a reference, a floor.

Each takes the numbers and its threshold as arguments and returns one
:class:`~tether.eval.gates.result.GateResult`; nothing here reads config, so the same numbers
always give the same verdict. The shared rules (non-finite fails, at-threshold passes) are
:mod:`tether.eval.gates.rules`.
"""

from __future__ import annotations

import math
from typing import Literal

from tether.eval.gates.result import GateResult
from tether.eval.gates.rules import as_interval, fmt_interval, le, not_computable, verdict_word
from tether.eval.metrics import as_float


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
    iv = as_interval(interval)
    where = "" if metric == "perplexity" else f" on {metric}"

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult("perplexity_drift", metric, c, b, t, iv, passed, reason, blocking)

    bad = not_computable("perplexity drift", {"candidate": c, "base": b, "max_drift": t})
    if bad:
        return result(False, bad)
    if c <= 0 or b <= 0:
        return result(False, f"perplexities must be > 0 (candidate {c:g}, base {b:g}): the evaluation is broken")
    drift = c / b - 1.0
    passed = le(drift, t)
    return result(
        passed,
        f"perplexity drift{where} {drift:+.2%} (candidate {c:.4g} vs base {b:.4g}){fmt_interval(iv, pct=True)}{note} "
        f"{'<=' if passed else '>'} max {t:.2%}: {verdict_word(passed)}",
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
    iv = as_interval(interval)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult("golden_kl", metric, k, 0.0, t, iv, passed, reason, blocking)

    bad = not_computable(f"KL to the base on {metric}", {"kl": k, "max_kl": t})
    if bad:
        return result(False, bad)
    passed = le(k, t)
    return result(
        passed,
        f"candidate NLL on the base's answers to {metric} is {k:+.4f} nats/token above the base's "
        f"(perplexity {math.expm1(k):+.2%}){fmt_interval(iv)} {'<=' if passed else '>'} max {t:g}: "
        f"{verdict_word(passed)}",
    )


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
    iv = as_interval(interval)
    gate = f"beats_{reference_name}"

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(gate, metric, c, r, t, iv, passed, reason, blocking)

    bad = not_computable(f"{metric} vs {reference_name}", {"candidate": c, reference_name: r, "min_margin": t})
    if bad:
        return result(False, bad)
    diff = c - r
    if decide_on == "ci_lower" and iv is not None:
        passed = le(t, iv[0])
        return result(
            passed,
            f"{metric} {c:.4g} vs {reference_name} {r:.4g}: diff {diff:+.4g}, CI lower bound {iv[0]:+.4g} "
            f"{'>=' if passed else '<'} margin {t:g} (gates.decide_on: ci_lower): {verdict_word(passed)}",
        )
    passed = le(t, diff)
    fallback = " (no paired interval: the point estimate decides)" if decide_on == "ci_lower" else ""
    return result(
        passed,
        f"{metric} {c:.4g} vs {reference_name} {r:.4g}: diff {diff:+.4g}{fmt_interval(iv)} "
        f"{'>=' if passed else '<'} margin {t:g}{fallback}: {verdict_word(passed)}",
    )


def floor_gate(
    metric: str,
    value: float,
    floor: float,
    interval: tuple[float, float] | None = None,
    *,
    blocking: bool = True,
) -> GateResult:
    """The value must be at least ``floor`` (e.g. valid-item rate of free generations).

    Args:
        metric: the metric judged (``valid_item_rate``).
        value: the candidate's value.
        floor: the least value that passes.
        interval: CI of the value.
        blocking: whether a failure blocks promotion.
    """
    v, f = as_float(value), as_float(floor)
    iv = as_interval(interval)

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult("floor", metric, v, None, f, iv, passed, reason, blocking)

    bad = not_computable(metric, {"value": v, "floor": f})
    if bad:
        return result(False, bad)
    passed = le(f, v)
    return result(
        passed,
        f"{metric} {v:.4g}{fmt_interval(iv)} {'>=' if passed else '<'} floor {f:g}: {verdict_word(passed)}",
    )
