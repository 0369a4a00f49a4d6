"""Comparing a candidate with @champion only under the same evaluation protocol.

An NDCG@10 over 20 candidates and one over 100 are different quantities: the champion's stored
number is compared with the candidate's only when both were measured under the same protocol
(ranking settings, test data, base model), recorded as ``eval_protocol_hash`` on every version.
Otherwise the champion gate fails closed, the version is tagged blocked with the settings that
differ, and @champion stays.

* unit: :func:`tether.eval.gating.protocol_fingerprint` and the champion gate;
* integration: the flow's gate -> register -> promote steps against a real sqlite MLflow store
  with the tiny base model and adapter of tests/conftest.py (hand-made evaluations, so the
  numbers are chosen), and the real ``training_pipeline`` flow twice with ``eval.n_negatives``
  changed in between.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from test_registry import _alias, _client
from test_gating import drift_entry
from tiny import reset_mlflow_globals

from tether.eval.evaluate import Evaluation
from tether.eval.gating import (
    PROTOCOL_VERSION,
    build_gates,
    champion_protocol_mismatch,
    protocol_differences,
    protocol_fingerprint,
    protocol_hash,
    protocol_settings,
    run_gates,
)

PROTOCOL = {
    "seed": 1234, "n_users": 80, "candidates": "sampled", "n_negatives": 19, "score": "mean", "ks": [5, 10],
    "batch_size": 32, "head_share": 0.2,
    "perplexity": {"window": 512, "stride": 256, "batch_size": 4},
    "generation": {"n_prompts": 8, "max_new_tokens": 48, "batch_size": 8, "valid_item_users": 30,
                   "valid_item_max_new_tokens": 24},
}
TEST_DATA = "cf5ef9d74cb5d06796fe99cf52b3b6f10ec98d1cd984e2dbeb8edcc7b9e692e9"
BASE_HASH = "7b387f36e4bf9057f976bb15969fee54f8394e46ccebb4c225b93ff22fd4b0f9"
LINEAGE = {"git_commit": "abc", "data_hash": "0d3c5e1f9a7b2c4d6e8f0a1b2c3d4e5f.dir", "config_hash": "c0",
           "base_model_hash": BASE_HASH}


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


def _evaluation(ndcg: float = 0.40, protocol: dict | None = None, test_data: str = TEST_DATA,
                base_hash: str = BASE_HASH) -> Evaluation:
    """A hand-made Evaluation (4 users) that passes every gate but the champion's, under ``protocol``."""
    health = {"distinct_1": 0.5, "distinct_2": 0.6, "repeated_4gram_rate": 0.02, "empty_rate": 0.0, "mean_length": 20.0}
    per_user = [ndcg - 0.1, ndcg + 0.1, ndcg - 0.05, ndcg + 0.05]
    return Evaluation(
        systems={
            "candidate": {"ndcg_at_10": ndcg, "valid_item_rate": 0.8, "perplexity.heldout_prose": 10.1, **health,
                          "length_ratio": 1.0},
            "base": {"ndcg_at_10": 0.05, "valid_item_rate": 0.5, "perplexity.heldout_prose": 10.0, **health},
            "popularity": {"ndcg_at_10": 0.05},
        },
        comparisons={"drift_panel": {"heldout_prose": drift_entry(10.1, 10.0, (0.0, 0.02))}},
        per_user={"candidate": {"ndcg_at_10": per_user}, "base": {"ndcg_at_10": [0.05] * 4},
                  "popularity": {"ndcg_at_10": [0.05] * 4}},
        user_ids=["a", "b", "c", "d"],
        health={"candidate": {**health, "length_ratio": 1.0}, "base": health},
        protocol=copy.deepcopy(PROTOCOL if protocol is None else protocol),
        info={"base_model": "tiny", "base_model_hash": base_hash,
              "hashes": {"test_data": test_data, "corpus": "c" * 64, "golden_prompts": "g" * 64}},
        bootstrap_samples=200,
    )


def _gates_cfg(**kw):
    from tether.config import load_config

    return load_config(overrides={"gates": {"primary_metric": "ndcg_at_10", **kw}}).gates


def _champion(value: float, evaluation: Evaluation | None, lineage: dict = LINEAGE, version: str = "3") -> dict:
    """The champion mapping the flow builds (tether.registry.champion_for_gates); no protocol = legacy."""
    settings = protocol_settings(evaluation, lineage) if evaluation is not None else None
    return {"ndcg_at_10": value, "name": f"v{version}", "version": version,
            "eval_protocol_hash": protocol_hash(settings) if settings else None, "eval_protocol": settings}


# --------------------------------------------------------------------------- the fingerprint (unit)


def test_fingerprint_is_stable_and_ignores_what_does_not_change_a_ranking_number() -> None:
    ev = _evaluation()
    first = protocol_fingerprint(ev, LINEAGE)
    assert len(first) == 64 and int(first, 16) >= 0
    assert protocol_fingerprint(ev, LINEAGE) == first
    # Same settings in another order (top level and nested), in a fresh object: the same hash.
    reordered = {k: PROTOCOL[k] for k in reversed(PROTOCOL)}
    reordered["perplexity"] = dict(reversed(list(PROTOCOL["perplexity"].items())))
    assert protocol_fingerprint(_evaluation(protocol=reordered), dict(reversed(list(LINEAGE.items())))) == first
    # A JSON round trip (Evaluation.save/load, the tags) changes nothing.
    assert protocol_fingerprint(Evaluation.from_dict(json.loads(json.dumps(ev.to_dict()))), LINEAGE) == first
    # Code, config and the non-ranking settings do not make numbers incomparable.
    assert protocol_fingerprint(ev, {**LINEAGE, "git_commit": "def", "config_hash": "c1"}) == first
    other = copy.deepcopy(PROTOCOL)
    other.update(batch_size=8, head_share=0.3)
    other["perplexity"]["window"] = 1024
    other["generation"]["n_prompts"] = 46
    assert protocol_fingerprint(_evaluation(protocol=other), LINEAGE) == first
    # The fingerprint is the hash of the recorded settings, with the protocol version inside.
    settings = protocol_settings(ev, LINEAGE)
    assert protocol_hash(settings) == first and settings["protocol_version"] == PROTOCOL_VERSION
    assert protocol_hash(dict(reversed(list(settings.items())))) == first


@pytest.mark.parametrize(
    "change",
    [
        {"protocol": {"n_negatives": 99}},
        {"protocol": {"score": "sum"}},
        {"protocol": {"seed": 7}},
        {"protocol": {"n_users": 200}},
        {"protocol": {"candidates": "full"}},
        {"test_data": "0" * 64},
        {"lineage": {"data_hash": "ffffffffffffffffffffffffffffffff.dir"}},
        {"base_hash": "1" * 64},
    ],
    ids=["n_negatives", "score", "seed", "n_users", "candidates", "test_data", "data_hash", "base_model_hash"],
)
def test_fingerprint_changes_with_every_setting_that_changes_a_ranking_number(change) -> None:
    before = protocol_fingerprint(_evaluation(), LINEAGE)
    kwargs = {k: v for k, v in change.items() if k in ("test_data", "base_hash")}
    ev = _evaluation(protocol={**PROTOCOL, **change.get("protocol", {})}, **kwargs)
    lineage = {**LINEAGE, **change.get("lineage", {})}
    if "base_hash" in change:  # the evaluation's own base model hash is the one that counts
        assert ev.info["base_model_hash"] != lineage["base_model_hash"]
    assert protocol_fingerprint(ev, lineage) != before


def test_n_negatives_plays_no_part_with_full_candidates() -> None:
    full = {**PROTOCOL, "candidates": "full"}
    assert protocol_fingerprint(_evaluation(protocol=full), LINEAGE) == protocol_fingerprint(
        _evaluation(protocol={**full, "n_negatives": 99}), LINEAGE
    )


def test_differences_name_the_settings_with_short_hashes() -> None:
    before = protocol_settings(_evaluation(), LINEAGE)
    after = protocol_settings(_evaluation(protocol={**PROTOCOL, "n_negatives": 99}, test_data="0" * 64), LINEAGE)
    assert protocol_differences(before, after) == ["n_negatives 19 -> 99", f"test_data_sha256 {TEST_DATA[:12]} -> {'0' * 12}"]
    assert protocol_differences(before, before) == []


def test_the_registry_tags_are_the_keys_the_gate_reads() -> None:
    from tether.eval.gating import PROTOCOL_HASH_KEY, PROTOCOL_KEY
    from tether.registry import TAG_PROTOCOL, TAG_PROTOCOL_HASH

    assert (TAG_PROTOCOL_HASH, TAG_PROTOCOL) == (PROTOCOL_HASH_KEY, PROTOCOL_KEY) == ("eval_protocol_hash", "eval_protocol")


# --------------------------------------------------------------------------- the champion gate (unit)


def test_same_protocol_compares_the_numbers_as_before() -> None:
    champion_ev = _evaluation(0.35)
    better = build_gates(_evaluation(0.40), _gates_cfg(), _champion(0.35, champion_ev),
                         protocol=protocol_settings(_evaluation(0.40), LINEAGE))[-1]
    assert better.gate == "beats_champion" and better.passed and better.reference == 0.35
    worse = build_gates(_evaluation(0.30), _gates_cfg(), _champion(0.35, champion_ev),
                        protocol=protocol_settings(_evaluation(0.30), LINEAGE))[-1]
    assert not worse.passed and worse.reference == 0.35 and "vs champion 0.35" in worse.reason


def test_another_protocol_fails_the_champion_gate_without_comparing_numbers() -> None:
    champion = _champion(0.10, _evaluation(0.10))  # measured with 19 negatives
    candidate = _evaluation(0.95, protocol={**PROTOCOL, "n_negatives": 99})  # far better, on 100 candidates
    gate = build_gates(candidate, _gates_cfg(), champion, protocol=protocol_settings(candidate, LINEAGE))[-1]
    assert gate.gate == "beats_champion" and gate.metric == "ndcg_at_10" and gate.blocking and not gate.passed
    assert gate.candidate == 0.95 and gate.reference is None  # the champion's number is not used
    assert "champion v3 was evaluated under a different protocol" in gate.reason
    assert "n_negatives 19 -> 99" in gate.reason and "not comparable" in gate.reason
    assert champion["eval_protocol_hash"][:12] in gate.reason and "tether promote" in gate.reason
    assert "test_data" not in gate.reason and "base_model_hash" not in gate.reason  # only what differs
    # Every other gate passed: the champion's protocol alone blocks.
    assert all(g.passed for g in build_gates(candidate, _gates_cfg(), champion, protocol=protocol_settings(candidate, LINEAGE))[:-1])


def test_a_champion_without_a_recorded_protocol_is_never_compared() -> None:
    candidate = _evaluation(0.95)
    # A registry version without the tag, and a bare metrics mapping: both have an unknown protocol.
    for legacy, name in ((_champion(0.10, None), "v3"), ({"ndcg_at_10": 0.10, "name": "v1"}, "v1")):
        gate = build_gates(candidate, _gates_cfg(), legacy, protocol=protocol_settings(candidate, LINEAGE))[-1]
        assert gate.gate == "beats_champion" and not gate.passed and gate.reference is None
        assert f"champion {name} records no evaluation protocol (unknown protocol" in gate.reason
    # The settings of the champion may be missing (a tag too long): the hashes still decide.
    champion = _champion(0.10, _evaluation(0.10, protocol={**PROTOCOL, "score": "sum"}))
    champion["eval_protocol"] = None
    reason = champion_protocol_mismatch(champion, protocol_settings(candidate, LINEAGE), "ndcg_at_10")
    assert reason and "settings were not recorded" in reason


def test_run_gates_records_the_fingerprint_and_leaves_an_incomparable_champion_out(tmp_path: Path) -> None:
    from tether.config import load_config

    cfg = load_config(overrides={"gates": {"primary_metric": "ndcg_at_10"}})
    candidate = _evaluation(0.40, protocol={**PROTOCOL, "n_negatives": 99})
    report, _ = run_gates(cfg, candidate, LINEAGE, tmp_path / "other", champion=_champion(0.35, _evaluation(0.35)))
    assert report.verdict == "BLOCKED" and [g.gate for g in report.blocking_failures] == ["beats_champion"]
    assert "champion" not in report.metrics  # its number would invite the comparison it cannot bear
    assert report.lineage["eval_protocol_hash"] == protocol_fingerprint(candidate, LINEAGE)
    same, _ = run_gates(cfg, _evaluation(0.40), LINEAGE, tmp_path / "same", champion=_champion(0.35, _evaluation(0.35)))
    assert same.verdict == "PROMOTE" and same.metrics["champion"]["ndcg_at_10"] == 0.35


# --------------------------------------------------------------------------- registry (integration, real sqlite MLflow)


@pytest.fixture
def protocol_project(registry_project):
    """conftest's registry_project with gates only the champion comparison can fail (margin 0 vs the champion)."""
    cfg, root = registry_project
    gates = cfg.gates.model_copy(update={
        "primary_metric": "ndcg_at_10", "max_ppl_drift": 100.0, "min_margin_vs_popularity": -1.0,
        "min_margin_vs_base": -1.0, "min_margin_vs_champion": 0.0, "valid_item_rate_floor": 0.0,
    })
    return cfg.model_copy(update={"gates": gates}), root


def _flow_steps(cfg, root: Path, tiny, evaluation: Evaluation | None, value: float, key: str, out: Path):
    """The flow's gate -> register -> promote steps (training_pipeline, register_task) without Prefect.

    ``evaluation`` None registers a version the way versions were registered before protocols
    were recorded (no ``eval_protocol``), with gates against no champion.
    """
    import mlflow

    from tether.registry import champion_for_gates, promote, register_candidate
    from tether.tracking import lineage_tags, setup_tracking

    lineage = lineage_tags(cfg, root, tiny["resolved"].content_hash)
    ev = evaluation if evaluation is not None else _evaluation(value)
    ev.info["base_model_hash"] = tiny["resolved"].content_hash
    champion = champion_for_gates(cfg, root=root) if evaluation is not None else None
    report, paths = run_gates(cfg, ev, lineage, out / key, champion=champion)
    setup_tracking(cfg, root)
    with mlflow.start_run() as run:
        pass
    mv = register_candidate(
        cfg, root, run_id=run.info.run_id, adapter_dir=tiny["adapter"], resolved_base=tiny["resolved"],
        gate_report_md=Path(paths["markdown"]).read_text(encoding="utf-8"), gate_results=report.gates,
        metrics=report.metrics, lineage=lineage, idempotency_key=key,
        eval_protocol=protocol_settings(ev, lineage) if evaluation is not None else None,
    )
    decision = promote(
        cfg, mv, all_gates_passed=not report.blocking_failures, candidate_metric=report.metrics["candidate"]["ndcg_at_10"],
        reasons=[g.reason for g in report.blocking_failures], root=root,
    )
    return report, str(mv.version), decision


@pytest.mark.integration
def test_registry_compares_only_under_the_same_protocol(protocol_project, tiny, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import tether.cli as cli
    from tether.cli import app
    from tether.registry import manual_promote, registry_status

    cfg, root = protocol_project
    name = cfg.registry.name
    client = _client(root)

    # The first champion: nothing to compare with.
    _, v1, d1 = _flow_steps(cfg, root, tiny, _evaluation(0.30), 0.30, "run-1", tmp_path)
    assert d1.decision == "champion"
    t1 = client.get_model_version(name, v1).tags
    lineage_hash = t1["eval_protocol_hash"]
    assert len(lineage_hash) == 64 and json.loads(t1["eval_protocol"])["n_negatives"] == 19
    assert protocol_hash(json.loads(t1["eval_protocol"])) == lineage_hash

    # (a) Same protocol: compared as before. Better replaces the champion, worse does not.
    report2, v2, d2 = _flow_steps(cfg, root, tiny, _evaluation(0.40), 0.40, "run-2", tmp_path)
    assert d2.decision == "champion" and report2.metrics["champion"]["ndcg_at_10"] == 0.30
    assert _alias(root, name, "champion") == v2
    assert client.get_model_version(name, v2).tags["eval_protocol_hash"] == lineage_hash
    report3, v3, d3 = _flow_steps(cfg, root, tiny, _evaluation(0.35), 0.35, "run-3", tmp_path)
    assert d3.decision == "blocked" and _alias(root, name, "champion") == v2
    reason3 = client.get_model_version(name, v3).tags["blocked_reason"]
    assert "ndcg_at_10 0.35 vs champion 0.4" in reason3 and "protocol" not in reason3

    # (b) Another protocol (99 negatives): a far better number does not make it champion.
    other = _evaluation(0.95, protocol={**PROTOCOL, "n_negatives": 99})
    report4, v4, d4 = _flow_steps(cfg, root, tiny, other, 0.95, "run-4", tmp_path)
    assert d4.decision == "blocked" and not d4.promoted
    assert _alias(root, name, "champion") == v2 and _alias(root, name, "challenger") == v4
    t4 = client.get_model_version(name, v4).tags
    assert t4["blocked"] == "true" and t4["verdict"] == "BLOCKED" and t4["gate.beats_champion"] == "failed"
    assert f"champion v{v2} was evaluated under a different protocol" in t4["blocked_reason"]
    assert "n_negatives 19 -> 99" in t4["blocked_reason"] and "not comparable" in t4["blocked_reason"]
    assert t4["eval_protocol_hash"] != lineage_hash and json.loads(t4["eval_protocol"])["n_negatives"] == 99
    assert "champion" not in report4.metrics

    # The status shows each version's protocol, and the manual override is the way past the gate.
    (root / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    monkeypatch.setattr(cli.console, "width", 400)  # room for every column: the hashes are not wrapped
    shown = CliRunner().invoke(app, ["status", "--params", str(root / "params.yaml")])
    assert shown.exit_code == 0, shown.output
    assert lineage_hash[:12] in shown.output and t4["eval_protocol_hash"][:12] in shown.output
    status = registry_status(cfg, root=root)
    assert {r["version"]: r["eval_protocol"]["n_negatives"] for r in status["recent"]} == {v4: 99, v3: 19, v2: 19, v1: 19}
    # Each version lists the aliases it holds (search results carry none: the registry's own map).
    held = {r["version"]: r["aliases"] for r in status["recent"]}
    champ = _alias(root, name, "champion")
    assert held[v4] == ["challenger"] and held[champ] == ["champion"]
    assert all(held[v] == [] for v in (v1, v2, v3) if v != champ)
    manual_promote(cfg, v4, reason="re-evaluated both on 100 candidates", user="alice", root=root)
    assert _alias(root, name, "champion") == v4
    # Under the new protocol, numbers compare again.
    _, v5, d5 = _flow_steps(cfg, root, tiny, _evaluation(0.96, protocol={**PROTOCOL, "n_negatives": 99}), 0.96,
                            "run-5", tmp_path)
    assert d5.decision == "champion" and _alias(root, name, "champion") == v5


@pytest.mark.integration
def test_a_legacy_champion_blocks_with_an_unknown_protocol(protocol_project, tiny, tmp_path) -> None:
    cfg, root = protocol_project
    name = cfg.registry.name
    client = _client(root)
    _, v1, d1 = _flow_steps(cfg, root, tiny, None, 0.10, "legacy", tmp_path)
    assert d1.decision == "champion" and "eval_protocol_hash" not in client.get_model_version(name, v1).tags

    _, v2, d2 = _flow_steps(cfg, root, tiny, _evaluation(0.95), 0.95, "new", tmp_path)
    assert d2.decision == "blocked" and _alias(root, name, "champion") == v1
    tags = client.get_model_version(name, v2).tags
    assert tags["blocked"] == "true" and tags["gate.beats_champion"] == "failed"
    assert f"champion v{v1} records no evaluation protocol (unknown protocol" in tags["blocked_reason"]


@pytest.mark.integration
def test_promote_checks_the_protocol_of_the_champion_it_finds_under_the_lock(protocol_project, tiny, tmp_path) -> None:
    """The gate read the champion before the lock; promote() re-reads it and must not compare across protocols."""
    import mlflow

    from tether.registry import promote, register_candidate
    from tether.tracking import lineage_tags, setup_tracking

    cfg, root = protocol_project
    name = cfg.registry.name
    _, v1, _ = _flow_steps(cfg, root, tiny, _evaluation(0.30, protocol={**PROTOCOL, "score": "sum"}), 0.30, "sum", tmp_path)
    # A candidate whose gates saw no champion (as if v1 had become champion after this gate ran).
    lineage = lineage_tags(cfg, root, tiny["resolved"].content_hash)
    ev = _evaluation(0.90, base_hash=tiny["resolved"].content_hash)
    report, paths = run_gates(cfg, ev, lineage, tmp_path / "late")
    setup_tracking(cfg, root)
    with mlflow.start_run() as run:
        pass
    mv = register_candidate(
        cfg, root, run_id=run.info.run_id, adapter_dir=tiny["adapter"], resolved_base=tiny["resolved"],
        gate_report_md=Path(paths["markdown"]).read_text(), gate_results=report.gates, metrics=report.metrics,
        lineage=lineage, idempotency_key="late", eval_protocol=protocol_settings(ev, lineage),
    )
    assert not report.blocking_failures
    d = promote(cfg, mv, all_gates_passed=True, candidate_metric=0.90, root=root)
    assert d.decision == "blocked" and d.champion_after == v1 and _alias(root, name, "champion") == v1
    reason = _client(root).get_model_version(name, str(mv.version)).tags["blocked_reason"]
    assert "score sum -> mean" in reason and f"tether promote {mv.version}" in reason


# --------------------------------------------------------------------------- the real flow (integration)


@pytest.mark.integration
def test_flow_blocks_a_candidate_evaluated_with_other_negatives(tmp_path: Path, prefect_harness, monkeypatch) -> None:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from project import make_project
    from test_flow_training import EVAL, PERMISSIVE, _set_params, pretrained_tiny_model_dir

    from flows.training_pipeline import training_pipeline
    from tether.config import load_config
    from tether.registry import registry_status

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    root = make_project(tmp_path / "proj", overrides={"examples": {"token_stats": False}, "eval": EVAL, "gates": PERMISSIVE})
    from tether.eval.panel import load_panel

    gate_docs = load_panel(load_config(root / "params.yaml"), root, "gate").sources[0].documents[:2]
    base = pretrained_tiny_model_dir(tmp_path / "tiny-model", [t for _, t in gate_docs])
    _set_params(root, model={"base_model": str(base)})
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        first = training_pipeline(root=str(root))
        assert first["registry"]["decision"].promoted
        champion = first["registry"]["version"]
        # Same data, same base model; 5 -> 7 negatives per user. PERMISSIVE lets any candidate beat the
        # champion (margin -1): only the protocol check can block it.
        _set_params(root, eval={"n_negatives": 7})
        second = training_pipeline(root=str(root), generate=False)
    failures = second["report"].blocking_failures
    assert [(g.gate, g.metric) for g in failures] == [("beats_champion", "ndcg_at_10")], [g.reason for g in failures]
    assert "n_negatives 5 -> 7" in failures[0].reason
    assert "test_data" not in failures[0].reason and "base_model_hash" not in failures[0].reason
    assert not second["registry"]["decision"].promoted
    status = registry_status(load_config(root / "params.yaml"), root=root)
    assert status["champion"]["version"] == champion
    challenger = status["challenger"]
    assert challenger["version"] == second["registry"]["version"] and challenger["blocked"]
    assert "n_negatives 5 -> 7" in challenger["blocked_reason"]
    assert challenger["eval_protocol"]["n_negatives"] == 7 and status["champion"]["eval_protocol"]["n_negatives"] == 5
    assert challenger["eval_protocol_hash"] == second["report"].lineage["eval_protocol_hash"]
    assert status["champion"]["eval_protocol_hash"] == first["report"].lineage["eval_protocol_hash"]
    assert protocol_hash(status["champion"]["eval_protocol"]) == status["champion"]["eval_protocol_hash"]
