"""The promotion policy, tether.registry.policy.decide, on hand-made inputs: no MLflow store (unit tier).

One test per rule of the policy, in its order; every expected decision and reason is written out
here, not taken from the function.
"""

from __future__ import annotations

import math

import pytest

from tether.config import TetherConfig
from tether.eval.gates import GateResult
from tether.registry import GateSummary, PolicyDecision, VersionFacts, decide
from tether.registry.promotion import promotion_tags

CFG = TetherConfig()  # gates.primary_metric ndcg_at_10, min_margin_vs_champion 0, registry.champion_alias champion
PASSED = GateSummary(True)
HASH_A, HASH_B = "a" * 64, "b" * 64
# The sentence tether.eval.gating.champion_protocol_mismatch ends with, for candidate version 3.
NOT_COMPARED = (
    "; its ndcg_at_10 is not comparable with the candidate's, so the numbers were not compared: "
    "evaluate both under one protocol (`tether evaluate --adapter DIR` on the champion's adapter) and, "
    'after a review, promote by hand with `tether promote 3 --reason "..."`'
)


def cand(metric: float = 0.40, **kw) -> VersionFacts:
    return VersionFacts("3", metric, "ndcg_at_10", **kw)


def champ(metric: float = 0.35, **kw) -> VersionFacts:
    kw.setdefault("metric_name", "ndcg_at_10")
    return VersionFacts("2", metric, **kw)


def with_margin(margin: float) -> TetherConfig:
    return CFG.model_copy(update={"gates": CFG.gates.model_copy(update={"min_margin_vs_champion": margin})})


# 1. already the champion


def test_the_champion_promoted_again_stays_champion() -> None:
    d = decide(cand(), VersionFacts("3", 0.40, "ndcg_at_10"), PASSED, CFG)
    assert d == PolicyDecision("already_champion", ("version 3 is already @champion",))
    assert not d.blocked


def test_the_champion_stays_champion_even_with_failed_gates_whose_reasons_are_kept() -> None:
    d = decide(cand(), VersionFacts("3", 0.40, "ndcg_at_10"), GateSummary(False, ("drift too high",)), CFG)
    assert d == PolicyDecision("already_champion", ("drift too high", "version 3 is already @champion"))


# 2. a blocking gate failed


def test_a_failed_gate_blocks_with_its_reasons() -> None:
    d = decide(cand(), champ(), GateSummary(False, ("drift too high", "  ", "golden KL too high")), CFG)
    assert d == PolicyDecision("blocked", ("drift too high", "golden KL too high"))
    assert d.blocked


def test_a_failed_gate_without_a_reason_still_says_why() -> None:
    assert decide(cand(), None, GateSummary(False), CFG) == PolicyDecision("blocked", ("a blocking gate failed",))


def test_gate_summary_of_results_ignores_advisory_failures() -> None:
    advisory = GateResult("generation_health", "distinct_2", 0.1, 0.2, 0.05, None, False, "distinct-2 fell", blocking=False)
    blocking = GateResult("perplexity_drift", "heldout_prose", 130.0, 100.0, 0.05, None, False, "drift +30%")
    fine = GateResult("floor", "valid_item_rate", 0.9, None, 0.5, None, True, "ok")
    assert GateSummary.of([advisory, fine]) == GateSummary(True, ())
    assert GateSummary.of([advisory, blocking, fine]) == GateSummary(False, ("drift +30%",))


# 3. no finite primary metric


@pytest.mark.parametrize("value, shown", [(math.nan, "nan"), (math.inf, "inf")])
def test_a_candidate_without_a_finite_metric_is_blocked(value: float, shown: str) -> None:
    d = decide(cand(value), None, PASSED, CFG)
    assert d == PolicyDecision(
        "blocked", (f"ndcg_at_10 is {shown}: a candidate without a finite primary metric is never champion",)
    )


# 4. no champion yet


def test_the_first_passing_candidate_becomes_champion() -> None:
    assert decide(cand(0.3125), None, PASSED, CFG) == PolicyDecision("champion", ("first champion (ndcg_at_10 0.3125)",))


# 5. the champion records another primary metric


def test_a_champion_measured_on_another_metric_is_not_compared() -> None:
    d = decide(cand(), champ(0.9, metric_name="hr_at_10"), PASSED, CFG)
    assert d == PolicyDecision(
        "blocked",
        ("champion version 2 records 'hr_at_10', not 'ndcg_at_10': not comparable; use manual_promote after a review",),
    )
    d = decide(cand(), champ(0.1, metric_name=None), PASSED, CFG)
    assert d.reasons == ("champion version 2 records None, not 'ndcg_at_10': not comparable; use manual_promote after a review",)


# 6. evaluation protocols


def test_a_champion_under_another_protocol_is_not_compared() -> None:
    d = decide(
        cand(0.9, protocol_hash=HASH_B, protocol={"n_negatives": 99, "seed": 7}),
        champ(0.1, protocol_hash=HASH_A, protocol={"n_negatives": 19, "seed": 7}),
        PASSED, CFG,
    )
    head = "champion v2 was evaluated under a different protocol (hash aaaaaaaaaaaa vs bbbbbbbbbbbb: n_negatives 19 -> 99)"
    assert d == PolicyDecision("blocked", (head + NOT_COMPARED,))


def test_a_champion_with_an_unknown_protocol_is_not_compared() -> None:
    d = decide(cand(0.9, protocol_hash=HASH_B), champ(0.1), PASSED, CFG)
    head = "champion v2 records no evaluation protocol (unknown protocol: registered before eval_protocol_hash was recorded)"
    assert d == PolicyDecision("blocked", (head + NOT_COMPARED,))


def test_a_candidate_with_an_unknown_protocol_is_not_compared() -> None:
    d = decide(cand(0.9), champ(0.1, protocol_hash=HASH_A), PASSED, CFG)
    head = "the candidate records no evaluation protocol (unknown protocol), champion v2 has aaaaaaaaaaaa"
    assert d == PolicyDecision("blocked", (head + NOT_COMPARED,))


@pytest.mark.parametrize("protocol_hash", [None, HASH_A], ids=["neither-records-one", "same-protocol"])
def test_same_or_no_protocol_on_both_sides_compares_the_numbers(protocol_hash: str | None) -> None:
    d = decide(cand(0.40, protocol_hash=protocol_hash), champ(0.35, protocol_hash=protocol_hash), PASSED, CFG)
    assert d == PolicyDecision("champion", ("champion version 2: ndcg_at_10 0.4 vs champion 0.35: diff +0.05 >= margin 0: pass",))


# 7. the comparison with the champion


def test_a_worse_candidate_is_blocked() -> None:
    d = decide(cand(0.30), champ(0.35), PASSED, CFG)
    assert d == PolicyDecision("blocked", ("champion version 2: ndcg_at_10 0.3 vs champion 0.35: diff -0.05 < margin 0: FAIL",))


def test_a_tie_passes_at_margin_zero() -> None:
    d = decide(cand(0.35), champ(0.35), PASSED, CFG)
    assert d == PolicyDecision("champion", ("champion version 2: ndcg_at_10 0.35 vs champion 0.35: diff +0 >= margin 0: pass",))


def test_a_better_candidate_below_the_margin_is_blocked() -> None:
    d = decide(cand(0.40), champ(0.35), PASSED, with_margin(0.1))
    assert d == PolicyDecision("blocked", ("champion version 2: ndcg_at_10 0.4 vs champion 0.35: diff +0.05 < margin 0.1: FAIL",))
    d = decide(cand(0.50), champ(0.35), PASSED, with_margin(0.1))
    assert d == PolicyDecision("champion", ("champion version 2: ndcg_at_10 0.5 vs champion 0.35: diff +0.15 >= margin 0.1: pass",))


def test_a_champion_without_a_finite_metric_is_never_beaten() -> None:
    d = decide(cand(0.40), champ(math.nan), PASSED, CFG)
    assert d == PolicyDecision(
        "blocked", ("champion version 2: ndcg_at_10 vs champion not computable: champion is nan; a non-finite input never passes",)
    )


# the facts read from tags, and the tags written from a decision


def test_version_facts_from_tags() -> None:
    tags = {
        "primary_metric": "ndcg_at_10", "primary_metric_value": "0.42",
        "eval_protocol_hash": HASH_A, "eval_protocol": '{"n_negatives": 19}',
    }
    assert VersionFacts.from_tags(5, tags) == VersionFacts("5", 0.42, "ndcg_at_10", HASH_A, {"n_negatives": 19})
    # The value being promoted replaces the tag's; an unreadable protocol is no protocol.
    facts = VersionFacts.from_tags("5", {**tags, "eval_protocol": "{cut"}, metric=0.5)
    assert facts.metric == 0.5 and facts.protocol is None and facts.protocol_hash == HASH_A
    empty = VersionFacts.from_tags("6", {})
    assert math.isnan(empty.metric) and empty.metric_name is None and empty.protocol_hash is None


def test_promotion_tags() -> None:
    assert promotion_tags(PolicyDecision("blocked", ("gate A failed", "gate B failed")), "2", "2026-01-01T00:00:00+00:00") == {
        "promotion.decision": "blocked",
        "promotion.at": "2026-01-01T00:00:00+00:00",
        "promotion.champion_before": "2",
        "blocked": "true",
        "blocked_reason": "gate A failed; gate B failed",
    }
    assert promotion_tags(PolicyDecision("champion", ("first champion (ndcg_at_10 0.3)",)), None, "t") == {
        "promotion.decision": "champion", "promotion.at": "t", "promotion.champion_before": "none", "blocked": "false",
    }
