"""The declared list of gates (tether.eval.gating.definitions.GATES) is what the gate stage runs."""

from __future__ import annotations

import dataclasses

from test_gating import _evaluation, _gates_cfg

from tether.config import GateConfig
from tether.eval.gates import summarize
from tether.eval.gating import GATES, build_gates, protocol_hash, protocol_settings
from tether.eval.systems import REFERENCES


def _champion(evaluation) -> dict:
    settings = protocol_settings(evaluation, {})
    return {"ndcg_at_10": 0.3, "eval_protocol_hash": protocol_hash(settings), "eval_protocol": settings}


def test_every_row_names_a_config_threshold_and_is_unique() -> None:
    assert len({(s.name, s.metrics) for s in GATES}) == len(GATES)
    assert all(s.threshold in GateConfig.model_fields for s in GATES)
    assert all(s.description and callable(s.check) for s in GATES)


def test_the_reference_gates_are_the_systems_tables_references() -> None:
    names = [s.name for s in GATES]
    assert [n.removeprefix("beats_") for n in names if n.startswith("beats_") and n != "beats_champion"] == list(REFERENCES)


def test_build_gates_runs_the_rows_in_order_and_each_result_carries_its_row() -> None:
    evaluation = _evaluation()
    results = build_gates(evaluation, _gates_cfg(), _champion(evaluation), protocol=protocol_settings(evaluation, {}))
    order = [s.name for s in GATES]
    assert [order.index(g.gate) for g in results] == sorted(order.index(g.gate) for g in results)
    assert {g.gate for g in results} == set(order)  # with a champion and a golden-KL measurement every row applies
    assert all(g.blocking for g in results)  # every row of today's list blocks


def test_an_advisory_row_records_its_failure_without_blocking(monkeypatch) -> None:
    rows = tuple(dataclasses.replace(s, blocking=False) if s.name == "floor" else s for s in GATES)
    monkeypatch.setattr("tether.eval.gating.run.GATES", rows)
    results = build_gates(_evaluation(valid=0.1), _gates_cfg())
    floor = next(g for g in results if g.gate == "floor")
    assert not floor.passed and not floor.blocking
    passed, failures = summarize(results)
    assert passed and floor not in failures
