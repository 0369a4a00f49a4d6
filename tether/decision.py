"""From an evaluation to a registry decision: the verdicts (with and without the champion), then
registration as @challenger and the promotion decision.

The Prefect flow judges a candidate once (:func:`judge`). That one judgement yields two reports:
the flow's, which compares with the registry's @champion and decides promotion, and the gate
stage's (:func:`champion_free_report`), which is what ``tether gate`` (the DVC gate stage)
computes from the same evaluation with no champion, so ``dvc repro`` reproduces
``outputs/gate/verdict.json`` whatever the registry held.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.config import TetherConfig

if TYPE_CHECKING:
    from tether.eval.evaluate import Evaluation
    from tether.eval.report import GateReport

# The one gate that reads the champion (tether.eval.gating.build_gates appends it only when a
# champion is given); every other gate depends on the evaluation and the config alone.
CHAMPION_GATE = "beats_champion"


@dataclass(frozen=True)
class Judgement:
    """What the gate step of the flow produces.

    Attributes:
        report: the flow's report: every gate, the champion's when there is one, guarded selection.
        paths: its files (``json``, ``markdown``, ``png``, ``evaluation``, maybe ``pareto``).
        stage_report: the DVC gate stage's report (no champion, no selection), not written yet.
    """

    report: GateReport
    paths: dict[str, Path]
    stage_report: GateReport


def champion_free_report(
    cfg: TetherConfig, evaluation: Evaluation, report: GateReport, lineage: Mapping[str, Any],
) -> GateReport:
    """The verdict ``tether gate`` gives the same evaluation, from a report that compared with a champion.

    The gates are not judged again: the champion gate is dropped from ``report``'s, and the report
    is assembled as ``tether gate`` assembles it (its lineage, no champion column, no selection).

    Args:
        cfg: the config (``gates.primary_metric``).
        evaluation: the evaluation ``report`` judged.
        report: from :func:`tether.eval.gating.run_gates`, with or without a champion.
        lineage: the lineage ``tether gate`` would use (:func:`tether.tracking.lineage_tags`).

    Returns:
        The champion-free :class:`GateReport`.
    """
    from tether.eval.gating import build_report

    gates = [g for g in report.gates if g.gate != CHAMPION_GATE]
    return build_report(evaluation, gates, lineage, primary_metric=cfg.gates.primary_metric)


def judge(
    cfg: TetherConfig, evaluation: Evaluation, lineage: Mapping[str, Any], out_dir: Path, *,
    champion: Mapping[str, Any] | None, run_id: str | None, selection: Mapping[str, Any] | None,
    stage_lineage: Mapping[str, Any],
) -> Judgement:
    """Judge the candidate once: write the gate report, log it to the training run, derive the stage's verdict.

    Args:
        cfg: the config (``gates``).
        evaluation: the candidate's evaluation.
        lineage: the run's lineage tags plus guarded selection's (shown in the report).
        out_dir: where the flow's gate report goes.
        champion: the champion for the gates (:func:`tether.registry.champion_for_gates`), or None.
        run_id: the MLflow run the report and gate metrics are logged to (None: not logged).
        selection: guarded selection's result, shown in the report.
        stage_lineage: the lineage of the DVC gate stage's report (without selection's tags).

    Returns:
        The :class:`Judgement`.
    """
    from tether.eval.gating import log_to_mlflow, run_gates

    report, paths = run_gates(cfg, evaluation, lineage, out_dir, champion=champion, selection=selection)
    if run_id:
        log_to_mlflow(report, paths, evaluation, run_id=run_id)
    return Judgement(report, paths, champion_free_report(cfg, evaluation, report, stage_lineage))


def register_and_promote(
    cfg: TetherConfig, root: Path, *, run_id: str, adapter_dir: Path, resolved_base: Any,
    report: GateReport, paths: Mapping[str, Path], lineage: Mapping[str, Any], idempotency_key: str,
    eval_protocol: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Register the candidate (@challenger) with its report and protocol; move @champion only if every gate passed.

    Args:
        cfg: the config (``registry``, ``gates``).
        root: the project root.
        run_id: the training run the version is registered from.
        adapter_dir: the adapter to package.
        resolved_base: the base model (:class:`tether.model.base.ResolvedModel`).
        report: the flow's gate report (:attr:`Judgement.report`).
        paths: its files (the Markdown one becomes the version's description).
        lineage: tags of the version.
        idempotency_key: one registered version per key (a retried task registers nothing twice).
        eval_protocol: the protocol it was evaluated under (:func:`tether.eval.gating.protocol_settings`).

    Returns:
        ``{"version": str, "decision": tether.registry.PromotionDecision}``.
    """
    from tether.registry import promote, register_candidate

    version = register_candidate(
        cfg, root, run_id=run_id, adapter_dir=adapter_dir, resolved_base=resolved_base,
        gate_report_md=Path(paths["markdown"]).read_text(encoding="utf-8"), gate_results=report.gates,
        metrics=report.metrics, lineage=lineage, idempotency_key=idempotency_key, eval_protocol=eval_protocol,
    )
    decision = promote(
        cfg, version, all_gates_passed=not report.blocking_failures,
        candidate_metric=report.metrics.get("candidate", {}).get(cfg.gates.primary_metric),
        reasons=[g.reason for g in report.blocking_failures], root=root,
    )
    return {"version": str(version.version), "decision": decision}
