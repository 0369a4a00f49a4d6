"""Gate verdicts at their boundaries, and non-finite inputs (tether.eval.gates)."""

from __future__ import annotations

import json
import math

import pytest

from tether.eval import gates as G

NAN, INF = math.nan, math.inf


# ---------------------------------------------------------------------------- perplexity drift


def test_ppl_drift_exactly_at_threshold_passes() -> None:
    # 110 / 100 - 1 is 0.10000000000000009 in floats; it is still "exactly" 10 %.
    r = G.perplexity_drift_gate(110.0, 100.0, 0.10)
    assert r.passed
    assert "+10.00%" in r.reason and "10.00%" in r.reason


def test_ppl_drift_over_threshold_blocks() -> None:
    r = G.perplexity_drift_gate(110.2, 100.0, 0.10, interval=(0.08, 0.13))
    assert not r.passed and r.blocking
    assert r.interval == (0.08, 0.13)
    assert "+10.20%" in r.reason and "FAIL" in r.reason


def test_ppl_improvement_passes_a_zero_drift_limit() -> None:
    assert G.perplexity_drift_gate(95.0, 100.0, 0.0).passed


@pytest.mark.parametrize(
    "cand, base, max_drift",
    [(NAN, 100.0, 0.1), (100.0, NAN, 0.1), (INF, 100.0, 0.1), (100.0, 100.0, NAN), (100.0, 0.0, 0.1), (None, 1.0, 0.1)],
)
def test_ppl_drift_non_finite_or_broken_inputs_never_pass(cand, base, max_drift) -> None:
    r = G.perplexity_drift_gate(cand, base, max_drift)
    assert not r.passed
    assert r.reason


def test_ppl_nan_reason_names_the_input() -> None:
    r = G.perplexity_drift_gate(NAN, 100.0, 0.1)
    assert "candidate is nan" in r.reason


# ---------------------------------------------------------------------------- generation health


BASE = {"distinct_1": 0.50, "distinct_2": 0.80, "repeated_4gram_rate": 0.02, "empty_rate": 0.0}
TOL = {"distinct_1": 0.05, "distinct_2": 0.05, "repeated_4gram_rate": 0.03, "empty_rate": 0.02, "length_ratio": (0.5, 2.0)}


def _health(**cand_overrides):
    cand = {"distinct_1": 0.50, "distinct_2": 0.80, "repeated_4gram_rate": 0.02, "empty_rate": 0.0, "length_ratio": 1.0}
    cand.update(cand_overrides)
    return {r.metric: r for r in G.generation_health_gate(cand, BASE, TOL)}


def test_generation_health_one_result_per_checked_metric_all_pass() -> None:
    results = _health()
    assert list(results) == list(TOL)
    assert all(r.passed and r.gate == "generation_health" for r in results.values())


@pytest.mark.parametrize(
    "metric, at_boundary, past_boundary",
    [
        ("distinct_1", 0.45, 0.449),
        ("distinct_2", 0.75, 0.749),
        ("repeated_4gram_rate", 0.05, 0.051),
        ("empty_rate", 0.02, 0.021),
        ("length_ratio", 2.0, 2.01),
        ("length_ratio", 0.5, 0.49),
    ],
)
def test_generation_health_boundaries(metric, at_boundary, past_boundary) -> None:
    assert _health(**{metric: at_boundary})[metric].passed
    failed = _health(**{metric: past_boundary})
    assert not failed[metric].passed
    assert all(r.passed for m, r in failed.items() if m != metric)


def test_generation_health_nan_and_missing_fail() -> None:
    assert not _health(distinct_2=NAN)["distinct_2"].passed
    assert not _health(length_ratio=NAN)["length_ratio"].passed
    out = {r.metric: r for r in G.generation_health_gate({"distinct_1": 0.5}, {}, {"distinct_1": 0.1})}
    assert not out["distinct_1"].passed and "missing for base" in out["distinct_1"].reason


def test_generation_health_config_errors_raise() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        G.generation_health_gate({}, {}, {"distinct_3": 0.1})
    with pytest.raises(ValueError, match=r"\(lo, hi\)"):
        G.generation_health_gate({"length_ratio": 1.0}, {}, {"length_ratio": 0.5})


# ---------------------------------------------------------------------------- beats reference / floor


def test_beats_reference_at_margin_passes_below_fails() -> None:
    at = G.beats_reference_gate("ndcg_at_10", 0.25, 0.20, "popularity", min_margin=0.05)
    assert at.passed and at.gate == "beats_popularity"
    below = G.beats_reference_gate("ndcg_at_10", 0.2499, 0.20, "popularity", min_margin=0.05, interval=(-0.01, 0.1))
    assert not below.passed and "FAIL" in below.reason and below.interval == (-0.01, 0.1)


def test_beats_reference_tie_passes_with_zero_margin_and_worse_fails() -> None:
    assert G.beats_reference_gate("ndcg_at_10", 0.2, 0.2, "champion").passed
    assert not G.beats_reference_gate("ndcg_at_10", 0.19, 0.2, "champion").passed


@pytest.mark.parametrize("cand, ref", [(NAN, 0.1), (0.3, NAN), (INF, 0.1)])
def test_beats_reference_non_finite_fails(cand, ref) -> None:
    r = G.beats_reference_gate("ndcg_at_10", cand, ref, "base")
    assert not r.passed and "non-finite" in r.reason


def test_floor_gate_boundary_and_nan() -> None:
    assert G.floor_gate("valid_item_rate", 0.9, 0.9).passed
    assert not G.floor_gate("valid_item_rate", 0.8999, 0.9).passed
    assert not G.floor_gate("valid_item_rate", NAN, 0.9).passed
    assert G.floor_gate("valid_item_rate", 0.95, 0.9).reference is None


# ---------------------------------------------------------------------------- summary and records


def test_summarize_blocking_and_advisory_failures() -> None:
    ok = G.floor_gate("valid_item_rate", 1.0, 0.5)
    advisory = G.floor_gate("coverage", 0.0, 0.5, blocking=False)
    blocking = G.perplexity_drift_gate(200.0, 100.0, 0.1)
    assert G.summarize([ok, advisory]) == (True, [])
    assert G.summarize([ok, advisory, blocking]) == (False, [blocking])


def test_summarize_nothing_checked_is_not_a_pass() -> None:
    assert G.summarize([]) == (False, [])


def test_to_dict_is_strict_json() -> None:
    r = G.perplexity_drift_gate(NAN, 100.0, 0.1, interval=(NAN, 0.2))
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["candidate"] is None and d["interval"] == [None, 0.2] and d["passed"] is False
    h = G.generation_health_gate({"length_ratio": 1.0}, {}, {"length_ratio": (0.5, 2.0)})[0].to_dict()
    assert h["threshold"] == [0.5, 2.0]
    assert set(d) == {"gate", "metric", "candidate", "reference", "threshold", "interval", "passed", "reason", "blocking"}


def test_gate_result_is_frozen() -> None:
    r = G.floor_gate("valid_item_rate", 1.0, 0.5)
    with pytest.raises(AttributeError):
        r.passed = False  # type: ignore[misc]
