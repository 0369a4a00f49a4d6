"""One vocabulary for gate verdicts in MLflow tags (tether.eval.verdicts), and a version's verdict tags (unit tier)."""

from __future__ import annotations

from tether.eval.gates import GateResult
from tether.eval.verdicts import check_tag, gate_tag
from tether.registry import verdict_tags


def _g(gate: str, metric: str, passed: bool, blocking: bool = True) -> GateResult:
    return GateResult(gate, metric, 1.0, 1.0, 0.0, None, passed, f"{gate} {metric}", blocking)


def test_a_check_is_passed_failed_or_failed_advisory() -> None:
    assert check_tag(_g("golden_kl", "kl", True)) == "passed"
    assert check_tag(_g("golden_kl", "kl", True, blocking=False)) == "passed"
    assert check_tag(_g("golden_kl", "kl", False)) == "failed"
    assert check_tag(_g("golden_kl", "kl", False, blocking=False)) == "failed (advisory)"


def test_a_gate_fails_only_on_a_blocking_check() -> None:
    assert gate_tag([_g("d", "a", True), _g("d", "b", True)]) == "passed"
    assert gate_tag([_g("d", "a", True), _g("d", "b", False, blocking=False)]) == "passed (advisory failure)"
    assert gate_tag([_g("d", "a", False), _g("d", "b", False, blocking=False)]) == "failed"


def test_a_versions_verdict_tags() -> None:
    gates = [
        _g("perplexity_drift", "heldout_prose", True),
        _g("perplexity_drift", "self_samples", False),
        _g("generation_health", "distinct_2", False, blocking=False),
        _g("beats_popularity", "ndcg_at_10", True),
    ]
    assert verdict_tags(gates) == {
        "gate.perplexity_drift.heldout_prose": "passed",
        "gate.perplexity_drift.self_samples": "failed",
        "gate.generation_health.distinct_2": "failed (advisory)",
        "gate.beats_popularity.ndcg_at_10": "passed",
        "gate.perplexity_drift": "failed",
        "gate.generation_health": "passed (advisory failure)",
        "gate.beats_popularity": "passed",
        "verdict": "BLOCKED",
        "gates.blocking_failures": "perplexity_drift:self_samples",
    }
    assert verdict_tags(gates[:1] + gates[2:])["verdict"] == "PROMOTE"
    assert verdict_tags(gates[:1])["gates.blocking_failures"] == "none"
