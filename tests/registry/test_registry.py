"""The model registry against a real sqlite MLflow store: registration, promotion, serving, races.

The base model is the tiny random Llama of tests/tiny.py; the adapter, the store and the git
repository are the ``tiny``, ``empty_store`` and ``registry_project`` fixtures of tests/conftest.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from project import git
from tiny import reset_mlflow_globals

from tether.eval.gates import GateResult, beats_reference_gate, perplexity_drift_gate, summarize

pytestmark = pytest.mark.integration

HISTORY = ["Silent Harbor Part 1", "Silent Harbor Part 2", "Glass River Part 1"]
CANDIDATES = ["Silent Harbor Part 3", "Glass River Part 2", "Iron Meadow Part 1", "Hidden Garden Part 4"]


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


class _V:
    """A registered version with its number as a string (MLflow returns int or str by call)."""

    def __init__(self, version: str, mv) -> None:
        self.version, self.mv = version, mv


def _gates(metric: float, passed: bool = True) -> list[GateResult]:
    drift = perplexity_drift_gate(103.0 if passed else 130.0, 100.0, 0.05)
    return [drift, beats_reference_gate("ndcg_at_10", metric, 0.2, "popularity")]


def _register(cfg, root: Path, tiny, metric: float, *, passed: bool = True, key: str | None = None, adapter=None):
    import mlflow

    from tether.eval.report import GateReport, to_markdown
    from tether.registry import register_candidate
    from tether.tracking import setup_tracking

    setup_tracking(cfg, root)
    with mlflow.start_run() as run:
        pass
    gates = _gates(metric, passed)
    report = GateReport(gates=gates, metrics={"candidate": {"ndcg_at_10": metric}})
    mv = register_candidate(
        cfg, root,
        run_id=run.info.run_id,
        adapter_dir=adapter or tiny["adapter"],
        resolved_base=tiny["resolved"],
        gate_report_md=to_markdown(report),
        gate_results=gates,
        metrics={"candidate": {"ndcg_at_10": metric, "hr_at_10": 0.5}},
        idempotency_key=key or f"flow-run-{metric}-{passed}",
    )
    return _V(str(mv.version), mv), gates


def _promote(cfg, root, mv, metric, gates):
    from tether.registry import promote

    passed, failures = summarize(gates)
    return promote(cfg, mv, all_gates_passed=passed, candidate_metric=metric, reasons=[g.reason for g in failures], root=root)


def _client(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve().as_posix()}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _alias(root: Path, name: str, alias: str) -> str | None:
    from tether.registry.store import alias_version

    mv = alias_version(_client(root), name, alias)
    return str(mv.version) if mv is not None else None


def test_promotion_rules_tags_lineage_and_manual_override(registry_project, tiny) -> None:
    from tether.registry import manual_promote, registry_status

    cfg, root = registry_project
    name = cfg.registry.name
    client = _client(root)

    # 1. A passing candidate becomes champion and challenger; its record is complete.
    v1, gates1 = _register(cfg, root, tiny, 0.30)
    d1 = _promote(cfg, root, v1, 0.30, gates1)
    assert d1.decision == "champion" and d1.champion_before is None
    assert _alias(root, name, "champion") == v1.version == _alias(root, name, "challenger")
    mv = client.get_model_version(name, v1.version)
    assert mv.description.startswith("# ") and "PROMOTE" in mv.description
    assert mv.tags["gate.perplexity_drift"] == "passed" and mv.tags["gate.beats_popularity"] == "passed"
    assert mv.tags["verdict"] == "PROMOTE" and mv.tags["primary_metric"] == "ndcg_at_10"
    assert float(mv.tags["primary_metric_value"]) == 0.30 and mv.tags["blocked"] == "false"
    # Lineage equals the repository: git HEAD, data.dvc's md5, the config hash, the base weights hash.
    assert mv.tags["git_commit"] == git(root, "rev-parse", "HEAD").strip()
    assert mv.tags["data_hash"] == "feedbeef0123.dir"
    assert mv.tags["config_hash"] == cfg.config_hash()
    assert mv.tags["base_model_hash"] == tiny["resolved"].content_hash
    assert mv.tags["idempotency_key"] == "flow-run-0.3-True"
    # The base model is a reference, never copied: only the adapter's weights are stored.
    stored = [p.name for p in (root / "mlflow" / "artifacts").rglob("*.safetensors")]
    assert stored == ["adapter_model.safetensors"]

    # 2. A candidate failing a gate: champion stays, challenger moves, blocked with the gate's reason.
    v2, gates2 = _register(cfg, root, tiny, 0.50, passed=False)
    d2 = _promote(cfg, root, v2, 0.50, gates2)
    assert d2.decision == "blocked" and not d2.promoted
    assert _alias(root, name, "champion") == v1.version and _alias(root, name, "challenger") == v2.version
    t2 = client.get_model_version(name, v2.version).tags
    assert t2["blocked"] == "true" and "perplexity" in t2["blocked_reason"]
    assert t2["gate.perplexity_drift"] == "failed" and t2["verdict"] == "BLOCKED"

    # 3. A passing candidate worse than the champion does not replace it.
    v3, gates3 = _register(cfg, root, tiny, 0.25)
    d3 = _promote(cfg, root, v3, 0.25, gates3)
    assert d3.decision == "blocked" and d3.champion_metric == 0.30
    assert _alias(root, name, "champion") == v1.version and _alias(root, name, "challenger") == v3.version
    assert "champion version 1" in client.get_model_version(name, v3.version).tags["blocked_reason"]

    # 4. A better one replaces it; the old champion records its successor.
    v4, gates4 = _register(cfg, root, tiny, 0.40)
    assert _promote(cfg, root, v4, 0.40, gates4).decision == "champion"
    assert _alias(root, name, "champion") == v4.version
    assert client.get_model_version(name, v1.version).tags["superseded_by"] == v4.version

    status = registry_status(cfg, root=root)
    assert status["champion"]["version"] == v4.version and status["champion"]["primary_metric_value"] == 0.40
    assert status["challenger"]["version"] == v4.version
    assert [r["version"] for r in status["recent"]] == ["4", "3", "2", "1"]
    assert status["recent"][1]["blocked"] and "champion" in status["recent"][1]["blocked_reason"]

    # 5. A manual override moves the champion back and records who and why.
    d5 = manual_promote(cfg, v1.version, reason="v4 regressed on a partner's catalog", user="alice", root=root)
    assert d5.manual and d5.champion_before == v4.version
    t1 = client.get_model_version(name, v1.version).tags
    assert t1["promoted_manually_by"] == "alice" and t1["manual_reason"] == "v4 regressed on a partner's catalog"
    assert t1["manual_promoted_at"] and _alias(root, name, "champion") == v1.version
    with pytest.raises(ValueError):
        manual_promote(cfg, v1.version, reason=" ", user="alice", root=root)


def test_champion_serves_the_same_rankings_as_the_adapter(registry_project, tiny) -> None:
    import mlflow
    import numpy as np
    import pandas as pd
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether.data.examples import build_prompt
    from tether.eval.scoring import score_candidates
    from tether.registry import load_champion
    from tether.serving import BaseModelMismatchError

    cfg, root = registry_project
    mv, gates = _register(cfg, root, tiny, 0.3)
    _promote(cfg, root, mv, 0.3, gates)
    champion = load_champion(cfg, root=root)
    out = champion.predict(pd.DataFrame({"history": [HISTORY, HISTORY[:1]], "candidates": [CANDIDATES, None]}))
    assert list(out["mode"]) == ["ranked", "generated"]

    base = AutoModelForCausalLM.from_pretrained(tiny["base"])
    direct = PeftModel.from_pretrained(base, str(tiny["adapter"])).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    expected = score_candidates(direct, tokenizer, build_prompt(HISTORY, cfg.examples), CANDIDATES).mean
    order = np.argsort(-expected, kind="stable")
    assert list(out["recommendations"][0]) == [CANDIDATES[i] for i in order]
    np.testing.assert_allclose(out["scores"][0], expected[order], atol=1e-5)
    with direct.disable_adapter():  # the adapter matters: the base model alone scores differently
        assert not np.allclose(score_candidates(direct, tokenizer, build_prompt(HISTORY, cfg.examples), CANDIDATES).mean, expected)
    assert isinstance(out["recommendations"][1][0], str) and list(out["scores"][1]) == []

    # The same model by its URI, with top_k; and the wrong base model is refused, loudly.
    mlflow.set_tracking_uri(_client(root)._registry_uri)
    by_uri = mlflow.pyfunc.load_model(f"models:/{cfg.registry.name}@champion")
    top2 = by_uri.predict(pd.DataFrame({"history": [HISTORY], "candidates": [CANDIDATES]}), params={"top_k": 2})
    assert list(top2["recommendations"][0]) == [CANDIDATES[i] for i in order[:2]]
    with pytest.raises(Exception) as err:
        load_champion(cfg, root=root, model_config={"base_model": str(tiny["other_base"])})
    assert isinstance(err.value, BaseModelMismatchError) or "sha256" in str(err.value)


def test_idempotency_and_no_half_made_versions(registry_project, tiny, monkeypatch, tmp_path) -> None:
    import tether.registry.register as registry

    cfg, root = registry_project
    name = cfg.registry.name
    client = _client(root)
    v1, _ = _register(cfg, root, tiny, 0.3, key="flow-run-A")
    again, _ = _register(cfg, root, tiny, 0.3, key="flow-run-A")
    assert again.version == v1.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # An adapter directory that disappeared before registration: nothing is registered.
    with pytest.raises(FileNotFoundError):
        _register(cfg, root, tiny, 0.3, key="flow-run-B", adapter=tmp_path / "gone")
    # A store failure after the version was created: the half-made version is deleted.
    def outage(*args, **kwargs):
        raise OSError("simulated artifact store outage")

    finalize = registry._finalize
    monkeypatch.setattr(registry, "_finalize", outage)
    with pytest.raises(OSError, match="outage"):
        _register(cfg, root, tiny, 0.3, key="flow-run-C")
    assert [str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")] == [v1.version]
    # (not monkeypatch.undo(): it would also restore MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri sets)
    monkeypatch.setattr(registry, "_finalize", finalize)
    # Retrying the same flow run registers it once.
    v3, _ = _register(cfg, root, tiny, 0.3, key="flow-run-C")
    assert sorted(str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")) == sorted([v1.version, v3.version])


def _copy_version(cfg, root: Path, src: _V, metric: float, passed: bool) -> _V:
    from tether.registry import TAG_COMPLETE, verdict_tags

    client = _client(root)
    mv = client.get_model_version(cfg.registry.name, src.version)
    tags = {k: v for k, v in mv.tags.items() if k != TAG_COMPLETE and not k.startswith("gate")}
    tags.update(verdict_tags(_gates(metric, passed)))
    tags.update({"primary_metric_value": repr(metric), "idempotency_key": f"copy-{metric}"})
    new = client.create_model_version(cfg.registry.name, mv.source, run_id=mv.run_id, tags=tags)
    client.set_model_version_tag(cfg.registry.name, new.version, TAG_COMPLETE, "complete")
    return _V(str(new.version), new)


def assert_one_consistent_champion(tags: dict[str, dict[str, str]], champion: str) -> None:
    """The versions' tags after racing promotions (``tags``: version -> tags) agree with ``champion``.

    Exactly one version holds a champion decision that nobody superseded: the champion, unblocked.
    Every blocked version says why; every other promoted version names a successor at least as good.
    Also used by the ten-process race of tests/pipeline/test_faults.py.
    """
    standing = [v for v, t in tags.items() if t.get("promotion.decision") == "champion" and "superseded_by" not in t]
    assert standing == [champion]
    assert tags[champion]["blocked"] == "false"
    for v, t in tags.items():
        if t["promotion.decision"] == "blocked":
            assert t["blocked"] == "true" and t["blocked_reason"]
        elif v != champion:  # promoted, then replaced by a better one, which it names
            assert float(tags[t["superseded_by"]]["primary_metric_value"]) >= float(t["primary_metric_value"])


@pytest.mark.parametrize("lock", ["file", "registry"])
def test_racing_promotions_end_with_one_consistent_champion(registry_project, tiny, lock) -> None:
    from tether.registry import promote

    cfg, root = registry_project
    cfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"lock": lock})})
    name = cfg.registry.name
    metrics = [0.31, 0.47, 0.22, 0.52, 0.40, 0.38, 0.60, 0.29, 0.45, 0.33]
    passed = [True, True, True, True, True, True, False, True, True, True]  # 0.60 fails a gate
    # One real registration; the other nine are copies of it with their own metric and verdict
    # (promotion reads only tags and aliases, and ten real registrations would cost ~15 s).
    first, _ = _register(cfg, root, tiny, metrics[0], passed=passed[0])
    versions = [first] + [_copy_version(cfg, root, first, m, p) for m, p in zip(metrics[1:], passed[1:])]

    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []


    def run(mv, m, p):
        try:
            barrier.wait()
            promote(cfg, mv, all_gates_passed=p, candidate_metric=m, reasons=[] if p else ["perplexity drift"], root=root)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in zip(versions, metrics, passed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors

    client = _client(root)
    tags = {mv.version: client.get_model_version(name, mv.version).tags for mv in versions}
    best = max((m, mv.version) for mv, m, p in zip(versions, metrics, passed) if p)[1]
    champion = _alias(root, name, "champion")
    assert champion == best
    assert _alias(root, name, "challenger") == versions[-1].version
    assert_one_consistent_champion(tags, champion)
    # Every champion decision was made against the champion of its moment: a chain of improvements.
    assert "promotion-lock" not in str([m.name for m in client.search_registered_models()])
