"""One judgement, two reports: the flow's (with the champion) and the DVC gate stage's (without it).

The stage's report is derived from the flow's without judging the gates again; it must be exactly
what ``tether gate`` (run_gates with no champion) writes, so ``dvc repro`` reproduces verdict.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_gating import _evaluation

from tether.config import load_config
from tether.decision import CHAMPION_GATE, champion_free_report
from tether.eval.gating import protocol_fingerprint, run_gates
from tether.eval.report import to_json, to_markdown
from tether.outputs import GATE_DIR, verdict_summary, write_stage_outputs

LINEAGE = {"git_commit": "abc", "git_dirty": "false", "data_hash": "d1", "config_hash": "c1", "base_model_hash": "h"}
# What the flow shows beside the lineage: which trial of guarded selection became the adapter.
CHOSEN = {**LINEAGE, "selection.step": "75", "selection.scale": "1", "selection.trials": "2"}
SELECTION = {"metric": "ndcg_at_10", "feasible": True, "chosen": {"step": 75, "scale": 1.0, "drift": {"heldout_prose": 0.01}},
             "trials": [{"step": 75, "scale": 1.0, "primary": 0.4, "drift": {"heldout_prose": 0.01}, "feasible": True},
                        {"step": 75, "scale": 0.5, "primary": 0.3, "drift": {"heldout_prose": 0.0}, "feasible": True}]}


def _champions() -> dict[str, dict | None]:
    same = protocol_fingerprint(_evaluation(), CHOSEN)
    return {
        "none": None,
        "beaten": {"ndcg_at_10": 0.30, "eval_protocol_hash": same},
        "not beaten": {"ndcg_at_10": 0.90, "eval_protocol_hash": same},
        "other protocol": {"ndcg_at_10": 0.30, "eval_protocol_hash": "0" * 64},
    }


@pytest.mark.parametrize("case", list(_champions()))
def test_the_champion_free_report_is_what_tether_gate_computes(case: str, tmp_path: Path) -> None:
    cfg = load_config(overrides={"gates": {"primary_metric": "ndcg_at_10"}})
    evaluation = _evaluation()
    champion = _champions()[case]
    flow_report, _ = run_gates(cfg, evaluation, CHOSEN, tmp_path / "flow", champion=champion, selection=SELECTION)
    derived = champion_free_report(cfg, evaluation, flow_report, LINEAGE)
    expected, _ = run_gates(cfg, evaluation, LINEAGE, tmp_path / "stage")  # `tether gate`: no champion, no selection
    assert to_json(derived) == to_json(expected)
    assert to_markdown(derived) == to_markdown(expected)
    assert verdict_summary(derived) == verdict_summary(expected)
    assert not any(g.gate == CHAMPION_GATE for g in derived.gates) and derived.selection is None
    if case != "none":  # the flow's own report did compare with the champion
        assert flow_report.gates[-1].gate == CHAMPION_GATE
    if case in ("not beaten", "other protocol"):  # the two verdicts differ: the stage's ignores the registry
        assert flow_report.verdict == "BLOCKED" and derived.verdict == "PROMOTE"


def test_stage_outputs_are_the_files_tether_gate_writes(tmp_path: Path) -> None:
    cfg = load_config(overrides={"gates": {"primary_metric": "ndcg_at_10"},
                                 "train": {"output_dir": str(tmp_path / "train")}})
    evaluation = _evaluation()
    champion = _champions()["not beaten"]
    flow_report, _ = run_gates(cfg, evaluation, CHOSEN, tmp_path / "flow", champion=champion, selection=SELECTION)
    root = tmp_path / "proj"
    written = write_stage_outputs(cfg, root, train_loss=[(1, 2.5), (2, 2.25)], evaluation=evaluation,
                                  stage_report=champion_free_report(cfg, evaluation, flow_report, LINEAGE))

    from tether.outputs import write_verdict

    reference = tmp_path / "reference"
    report, paths = run_gates(cfg, evaluation, LINEAGE, reference)
    write_verdict(report, reference)
    for name in ("gate_report.json", "gate_report.md", "verdict.json", "evaluation.json"):
        assert (root / GATE_DIR / name).read_bytes() == (reference / name).read_bytes(), name
    assert written["verdict"] == root / GATE_DIR / "verdict.json"
    assert (tmp_path / "train" / "loss.csv").read_text() == "step,train_loss\n1,2.5\n2,2.25\n"
    assert set(written) == {"loss", "evaluation", "metrics", "systems", "json", "markdown", "png", "verdict"}
