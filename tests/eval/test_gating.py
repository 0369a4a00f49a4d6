"""The gate stage: verdicts from an Evaluation, the report files, and MLflow logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_evaluate import eval_config, make_adapter, make_processed
from tiny import build_tiny_model_dir, reset_mlflow_globals

from tether.config import load_config
from tether.eval.evaluate import Evaluation, evaluate_run
from tether.eval.gating import build_gates, build_report, log_to_mlflow, mlflow_metrics, run_gates
from tether.eval.report import from_json


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


def drift_entry(cand_ppl: float, base_ppl: float, interval=(0.01, 0.07), kind: str = "text") -> dict:
    """One source of a hand-made evaluation's ``drift_panel`` comparison."""
    return {"kind": kind, "drift": cand_ppl / base_ppl - 1, "interval": interval, "nll_diff": math.log(cand_ppl / base_ppl),
            "ppl_candidate": cand_ppl, "ppl_base": base_ppl, "n_tokens": 400, "n_docs": 4, "max_drift": 0.05}


def _evaluation(
    cand_ppl: float = 10.4, base_ppl: float = 10.0, cand_ndcg: float = 0.40, pop_ndcg: float = 0.30,
    base_ndcg: float = 0.25, valid: float = 0.8, cand_distinct_2: float = 0.6, self_kl: float = 0.01,
    golden_kl: float = 0.02,
) -> Evaluation:
    """A hand-made Evaluation: 4 users, per-user NDCG@10 consistent with the means; a drift panel of
    ``heldout_prose`` (perplexity ``cand_ppl`` vs ``base_ppl``) and ``self_samples`` (KL ``self_kl``)."""
    def per_user(mean: float) -> list[float]:
        return [mean - 0.1, mean + 0.1, mean - 0.05, mean + 0.05]

    health = {"distinct_1": 0.5, "distinct_2": 0.6, "repeated_4gram_rate": 0.02, "empty_rate": 0.0, "mean_length": 20.0}
    cand_health = {**health, "distinct_2": cand_distinct_2, "length_ratio": 1.1}
    return Evaluation(
        systems={
            "candidate": {"count": 4, "ndcg_at_10": cand_ndcg, "mrr": 0.5, "valid_item_rate": valid,
                          "perplexity.heldout_prose": cand_ppl, "perplexity.self_samples": 5.0 * math.exp(self_kl),
                          **cand_health},
            "base": {"count": 4, "ndcg_at_10": base_ndcg, "mrr": 0.3, "valid_item_rate": 0.1,
                     "perplexity.heldout_prose": base_ppl, "perplexity.self_samples": 5.0, **health},
            "popularity": {"count": 4, "ndcg_at_10": pop_ndcg, "mrr": 0.4},
        },
        intervals={"candidate": {"ndcg_at_10": (cand_ndcg - 0.1, cand_ndcg + 0.1), "valid_item_rate": (0.6, 0.95)}},
        comparisons={
            "drift_panel": {
                "heldout_prose": drift_entry(cand_ppl, base_ppl),
                "self_samples": drift_entry(5.0 * math.exp(self_kl), 5.0, (0.0, 0.03), kind="self_samples"),
            },
            "golden_kl": {"metric": "golden_kl", "kl": golden_kl, "interval": (golden_kl - 0.01, golden_kl + 0.01),
                          "n_tokens": 100, "n_prompts": 4},
        },
        slices={"candidate": {"head_item": {"count": 2, "ndcg_at_10": 0.5}, "tail_item": {"count": 2, "ndcg_at_10": 0.3}}},
        per_user={"candidate": {"ndcg_at_10": per_user(cand_ndcg)}, "base": {"ndcg_at_10": per_user(base_ndcg)},
                  "popularity": {"ndcg_at_10": per_user(pop_ndcg)}},
        user_ids=["a", "b", "c", "d"],
        health={"candidate": cand_health, "base": health},
        generations=[{"id": "gp01", "category": "explain", "prompt": "Why?", "base": "Because.", "candidate": "Since."}],
        timings={"candidate": {"scoring": 1.5, "perplexity": 2.0}, "base": {"cached": True}, "total": 4.0},
        base_cache={"hit": True, "key": "k"},
        info={"adapter_dir": "/a", "base_model": "tiny", "base_model_hash": "h"},
        bootstrap_samples=200,
    )


def _gates_cfg(**kw):
    return load_config(overrides={"gates": {"primary_metric": "ndcg_at_10", **kw}}).gates


def _by_gate(results):
    return {(g.gate, g.metric): g for g in results}


def test_every_gate_passes_on_a_good_candidate() -> None:
    results = build_gates(_evaluation(), _gates_cfg())
    gates = [g.gate for g in results]
    assert gates[:3] == ["perplexity_drift", "perplexity_drift", "golden_kl"]
    assert [g.metric for g in results[:2]] == ["heldout_prose", "self_samples"]
    assert gates.count("generation_health") == 5
    assert gates[-3:] == ["beats_popularity", "beats_base", "floor"]
    assert all(g.passed and g.blocking for g in results), [g.reason for g in results if not g.passed]
    pop = _by_gate(results)[("beats_popularity", "ndcg_at_10")]
    assert pop.candidate == 0.40 and pop.reference == 0.30
    # The paired interval is bootstrapped from the per-user values (the difference is 0.1 for every user).
    assert pop.interval == pytest.approx((0.1, 0.1))
    assert _by_gate(results)[("perplexity_drift", "heldout_prose")].interval == (0.01, 0.07)


def test_drift_over_the_limit_blocks_and_says_so() -> None:
    results = build_gates(_evaluation(cand_ppl=11.0), _gates_cfg(max_ppl_drift=0.05))
    drift = results[0]
    assert drift.gate == "perplexity_drift" and not drift.passed and drift.blocking
    assert "perplexity drift on heldout_prose +10.00%" in drift.reason and "FAIL" in drift.reason
    assert drift.candidate == 11.0 and drift.reference == 10.0 and drift.threshold == 0.05
    assert results[1].metric == "self_samples" and results[1].passed  # attribution: only the source that drifted


def test_any_one_source_over_its_limit_blocks() -> None:
    """The self-samples alone drift (KL 0.06 nats/token = +6.2% perplexity): the candidate is blocked."""
    results = _by_gate(build_gates(_evaluation(self_kl=0.06), _gates_cfg(max_ppl_drift=0.05)))
    assert results[("perplexity_drift", "heldout_prose")].passed
    bad = results[("perplexity_drift", "self_samples")]
    assert not bad.passed and "+6.18%" in bad.reason and "KL(base || candidate) +0.0600 nats/token" in bad.reason
    # A source's own limit wins over gates.max_ppl_drift (read at gate time from the config).
    relaxed = _by_gate(build_gates(_evaluation(self_kl=0.06), _gates_cfg(max_ppl_drift=0.05),
                                   drift_limits={"self_samples": 0.07}))
    assert relaxed[("perplexity_drift", "self_samples")].passed
    assert relaxed[("perplexity_drift", "self_samples")].threshold == 0.07


def test_golden_kl_over_its_limit_blocks() -> None:
    results = _by_gate(build_gates(_evaluation(golden_kl=0.2), _gates_cfg(max_golden_kl=0.05)))
    gate = results[("golden_kl", "golden_prompts")]
    assert not gate.passed and gate.blocking and gate.candidate == 0.2 and gate.threshold == 0.05
    assert "+0.2000 nats/token" in gate.reason and "FAIL" in gate.reason
    assert _by_gate(build_gates(_evaluation(golden_kl=0.049), _gates_cfg(max_golden_kl=0.05)))[("golden_kl", "golden_prompts")].passed


def test_reference_margins_floor_and_health_fail_independently() -> None:
    results = _by_gate(build_gates(
        _evaluation(cand_ndcg=0.32, valid=0.3, cand_distinct_2=0.4),
        _gates_cfg(min_margin_vs_popularity=0.05, valid_item_rate_floor=0.5),
    ))
    assert not results[("beats_popularity", "ndcg_at_10")].passed  # +0.02 < margin 0.05
    assert results[("beats_base", "ndcg_at_10")].passed  # +0.07 >= 0
    assert not results[("floor", "valid_item_rate")].passed
    assert results[("floor", "valid_item_rate")].interval == (0.6, 0.95)
    assert not results[("generation_health", "distinct_2")].passed  # 0.4 < 0.6 - 0.1
    assert results[("generation_health", "distinct_1")].passed


def test_champion_gate_only_with_a_champion() -> None:
    evaluation = _evaluation()
    assert not any(g.gate == "beats_champion" for g in build_gates(evaluation, _gates_cfg()))
    results = build_gates(evaluation, _gates_cfg(), champion={"ndcg_at_10": 0.45})
    champ = results[-1]
    assert champ.gate == "beats_champion" and not champ.passed and champ.reference == 0.45 and champ.interval is None
    same_users = {"ndcg_at_10": 0.35, "per_user": {"ndcg_at_10": [0.25, 0.45, 0.30, 0.40]}, "user_ids": ["a", "b", "c", "d"]}
    champ = build_gates(evaluation, _gates_cfg(), champion=same_users)[-1]
    assert champ.passed and champ.interval == pytest.approx((0.05, 0.05))
    # The champion's MLflow run metrics work as they are logged.
    champ = build_gates(evaluation, _gates_cfg(), champion={"candidate.ndcg_at_10": 0.38, "candidate.mrr": 0.4})[-1]
    assert champ.passed and champ.reference == 0.38


def test_an_unknown_primary_metric_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="ndcg_at_20"):
        build_gates(_evaluation(), _gates_cfg(primary_metric="ndcg_at_20"))


def test_a_missing_measurement_fails_instead_of_passing() -> None:
    evaluation = _evaluation()
    evaluation.systems["candidate"]["perplexity.heldout_prose"] = math.nan
    drift = build_gates(evaluation, _gates_cfg())[0]
    assert not drift.passed and "not computable" in drift.reason
    # No drift-panel source at all is no evidence of no forgetting: a failed gate, not a pass.
    evaluation.comparisons.pop("drift_panel")
    empty = build_gates(evaluation, _gates_cfg())[0]
    assert empty.gate == "perplexity_drift" and not empty.passed and "no drift-panel source" in empty.reason


def test_report_carries_metrics_intervals_generations_and_lineage() -> None:
    evaluation = _evaluation(cand_ppl=12.0)
    gates = build_gates(evaluation, _gates_cfg())
    report = build_report(evaluation, gates, {"git_commit": "abc"}, champion={"ndcg_at_10": 0.2},
                          primary_metric="ndcg_at_10")
    assert report.verdict == "BLOCKED" and [g.gate for g in report.blocking_failures] == ["perplexity_drift"]
    assert report.metrics["candidate"]["ndcg_at_10"] == 0.40 and report.metrics["champion"] == {"ndcg_at_10": 0.2}
    assert report.metrics["candidate"]["head_item.ndcg_at_10"] == 0.5
    assert report.intervals["candidate"]["ndcg_at_10"] == pytest.approx((0.3, 0.5))
    assert report.generations[0]["candidate"] == "Since."
    assert report.lineage["git_commit"] == "abc" and report.lineage["base_model_hash"] == "h"
    assert report.lineage["base_cache_hit"] is True and report.lineage["eval_seconds"]["candidate.scoring"] == 1.5
    names = mlflow_metrics(report, evaluation)
    assert names["candidate.ndcg_at_10"] == 0.40 and names["gate.perplexity_drift.heldout_prose.passed"] == 0.0
    assert names["drift.heldout_prose"] == pytest.approx(0.2) and names["golden_kl"] == 0.02
    assert names["promote"] == 0.0 and names["eval_seconds.total"] == 4.0
    assert all("@" not in n for n in names)


# ------------------------------------------------------------------ from a real (tiny) evaluation to files and MLflow


@pytest.fixture(scope="module")
def tiny_evaluation(tmp_path_factory) -> Evaluation:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = tmp_path_factory.mktemp("gating")
        root = make_processed(base / "proj")
        model_dir = build_tiny_model_dir(base / "model")
        adapter = make_adapter(model_dir, base / "adapter")
        return evaluate_run(eval_config(root), root, adapter, model_dir=model_dir, progress=False)
    finally:
        torch.set_num_threads(before)


@pytest.mark.integration
def test_run_gates_writes_the_report_and_logs_it_to_mlflow(tiny_evaluation, tmp_path, monkeypatch) -> None:
    import mlflow

    from tether.tracking import setup_tracking

    cfg = load_config(profile="test", overrides={"gates": {"primary_metric": "ndcg_at_5"}})
    report, paths = run_gates(cfg, tiny_evaluation, {"git_commit": "abc", "config_hash": cfg.config_hash()},
                              tmp_path / "report")
    assert {p.name for p in paths.values()} == {"gate_report.json", "gate_report.md", "gate_report.png",
                                               "evaluation.json"}
    assert all(p.stat().st_size > 0 for p in paths.values())
    again = from_json(paths["json"].read_text())
    # 2 drift-panel sources + golden KL + 5 health checks + 2 references + the valid-item floor.
    assert again.verdict == report.verdict and len(again.gates) == len(report.gates) == 11
    assert "## Drift by source" in paths["markdown"].read_text()
    assert {"candidate", "base", "popularity"} <= set(again.metrics)
    assert "Generations: base vs candidate" in paths["markdown"].read_text()
    assert Evaluation.load(paths["evaluation"]).user_ids == tiny_evaluation.user_ids

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = setup_tracking(cfg, tmp_path / "store")
    run_id = log_to_mlflow(report, paths, tiny_evaluation)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.metrics["candidate.ndcg_at_5"] == pytest.approx(tiny_evaluation.systems["candidate"]["ndcg_at_5"])
    assert run.data.metrics["popularity.ndcg_at_5"] == pytest.approx(tiny_evaluation.systems["popularity"]["ndcg_at_5"])
    assert "perplexity_drift" in run.data.metrics and "eval_seconds.candidate.scoring" in run.data.metrics
    assert run.data.tags["gate_verdict"] == report.verdict
    for source in ("corpus", "self_samples"):
        check = next(g for g in report.gates if (g.gate, g.metric) == ("perplexity_drift", source))
        assert run.data.tags[f"gate.perplexity_drift.{source}"] == ("passed" if check.passed else "failed")
        assert f"drift.{source}" in run.data.metrics and f"candidate.perplexity.{source}" in run.data.metrics
    assert "golden_kl" in run.data.metrics
    files = {a.path for a in client.list_artifacts(run_id, "gate_report")}
    assert {"gate_report/gate_report.json", "gate_report/gate_report.md", "gate_report/gate_report.png",
            "gate_report/evaluation.json", "gate_report/generations.json"} <= files
    table = json.loads(Path(client.download_artifacts(run_id, "gate_report/generations.json", str(tmp_path))).read_text())
    assert table["columns"] == ["id", "category", "prompt", "base", "candidate"] and len(table["data"]) == 3

    # Logging into an existing run (e.g. the training run) adds to it.
    with mlflow.start_run(run_name="train") as train_run:
        pass
    assert log_to_mlflow(report, paths, tiny_evaluation, run_id=train_run.info.run_id) == train_run.info.run_id
    assert "candidate.mrr" in client.get_run(train_run.info.run_id).data.metrics


def test_decide_on_ci_lower_demands_an_established_lead() -> None:
    """A lead seen on average but not across users passes on points and fails on the CI's lower bound."""
    ev = _evaluation(cand_ndcg=0.45, pop_ndcg=0.30, base_ndcg=0.25)
    ev.per_user["candidate"]["ndcg_at_10"] = [0.9, 0.0, 0.9, 0.0]  # mean 0.45, half the users lost
    ev.per_user["popularity"]["ndcg_at_10"] = [0.3, 0.3, 0.3, 0.3]
    ev.per_user["base"]["ndcg_at_10"] = [0.25, 0.25, 0.25, 0.25]
    on_points = _by_gate(build_gates(ev, _gates_cfg()))
    on_ci = _by_gate(build_gates(ev, _gates_cfg(decide_on="ci_lower")))
    for ref in ("beats_popularity", "beats_base"):
        point, ci = on_points[(ref, "ndcg_at_10")], on_ci[(ref, "ndcg_at_10")]
        assert point.passed and point.interval == ci.interval and ci.interval[0] < 0 < ci.interval[1]
        assert not ci.passed and "CI lower bound" in ci.reason and "ci_lower" in ci.reason
    # Every user ahead: the lower bound clears the margin and the gate passes on the CI as well.
    steady = _evaluation(cand_ndcg=0.40, pop_ndcg=0.30, base_ndcg=0.25)
    assert all(g.passed for g in build_gates(steady, _gates_cfg(decide_on="ci_lower")))
    # A champion without per-user values has no paired interval: the point estimate decides, said so.
    champ = _by_gate(build_gates(steady, _gates_cfg(decide_on="ci_lower"), champion={"ndcg_at_10": 0.39}))
    assert champ[("beats_champion", "ndcg_at_10")].passed
    assert "no paired interval" in champ[("beats_champion", "ndcg_at_10")].reason
    with pytest.raises(Exception, match="decide_on"):
        _gates_cfg(decide_on="median")
