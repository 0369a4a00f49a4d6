"""Running the gates: :func:`build_gates` (the verdicts of the declared list) and :func:`run_gates` (the stage).

The gates themselves are the rows of :data:`~tether.eval.gating.definitions.GATES`; this module
only checks the config, runs the rows in order, and writes the report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.eval.gates import GateResult
from tether.eval.gating.assemble import build_report
from tether.eval.gating.definitions import GATES
from tether.eval.gating.inputs import GateInputs
from tether.eval.gating.protocol import champion_protocol_mismatch, protocol_settings
from tether.eval.report import GateReport, write_report

if TYPE_CHECKING:
    from tether.config import GateConfig, TetherConfig
    from tether.eval.evaluate import Evaluation

logger = logging.getLogger(__name__)


def build_gates(
    evaluation: Evaluation,
    gates_cfg: GateConfig,
    champion: Mapping[str, Any] | None = None,
    *,
    protocol: Mapping[str, Any] | None = None,
    drift_limits: Mapping[str, float] | None = None,
) -> list[GateResult]:
    """Every promotion verdict for one evaluation (pure: same inputs, same verdicts).

    Args:
        evaluation: from :func:`tether.eval.evaluate.evaluate_run` (or :meth:`Evaluation.load`).
        gates_cfg: the ``gates`` config section.
        champion: the current champion's metrics, flat (``{"ndcg_at_10": 0.31, ...}``), e.g. the
            candidate metrics of its own evaluation, or its MLflow run metrics
            (``candidate.ndcg_at_10``, as :func:`log_to_mlflow` names them). Optional keys: ``per_user`` (metric -> values)
            with ``user_ids`` (a paired interval is computed only when the users are the same),
            ``name`` (shown in nothing but the caller's logs), ``eval_protocol_hash`` and
            ``eval_protocol`` (the protocol it was measured under). None = no champion yet: no gate.
        protocol: the candidate's :func:`protocol_settings`. Given, the champion is compared only
            when its ``eval_protocol_hash`` equals the candidate's fingerprint; otherwise (another
            protocol, or none recorded) ``beats_champion`` fails with the reason of
            :func:`champion_protocol_mismatch` and no numbers are compared. None = no check.
        drift_limits: drift-panel source -> its own limit (:func:`tether.eval.panel.panel_limits`);
            a source not named gets ``gates_cfg.max_ppl_drift``. Limits are read at gate time, so
            changing a threshold re-judges a saved evaluation without measuring it again.

    Returns:
        The gate results, in the order of :data:`~tether.eval.gating.definitions.GATES`.

    Raises:
        ValueError: ``gates.primary_metric`` is not a metric of the evaluation (a config error
            that must not turn silently into a failed gate).
    """
    primary = gates_cfg.primary_metric
    cand = evaluation.systems.get("candidate", {})
    if primary not in cand:
        known = sorted(k for k in cand if k.startswith(("hr_at_", "ndcg_at_", "mrr")))
        raise ValueError(f"gates.primary_metric {primary!r} is not an evaluated metric; evaluated: {known}")

    inputs = GateInputs(evaluation, gates_cfg, champion, protocol, dict(drift_limits or {}))
    results = [result for spec in GATES for result in spec.check(spec, inputs)]
    for g in results:
        (logger.info if g.passed else logger.warning)("gate %s (%s): %s", g.gate, g.metric, g.reason)
    return results


def run_gates(
    cfg: TetherConfig,
    evaluation: Evaluation,
    lineage: Mapping[str, Any],
    out_dir: str | Path,
    champion: Mapping[str, Any] | None = None,
    selection: Mapping[str, Any] | None = None,
) -> tuple[GateReport, dict[str, Path]]:
    """The gate stage: verdicts, then ``gate_report.{json,md,png}`` and ``evaluation.json`` in ``out_dir``.

    Args:
        cfg: the config (``gates``).
        evaluation: the evaluation to judge.
        lineage: lineage tags of the run.
        out_dir: where the report files go.
        champion: the current champion's metrics, if there is one (see :func:`build_gates`), with the
            protocol it was measured under: it is compared only under the candidate's protocol
            (:func:`protocol_settings`); a champion measured under another (or an unknown) one fails
            ``beats_champion`` and its numbers are left out of the report.
        selection: guarded selection's result, shown in the report (its Pareto plot copied beside it).

    Returns:
        ``(report, paths)``; ``paths`` has ``json``, ``markdown``, ``png`` and ``evaluation``.
    """
    from tether.eval.panel import panel_limits

    protocol = protocol_settings(evaluation, lineage)
    primary = cfg.gates.primary_metric
    gates = build_gates(evaluation, cfg.gates, champion, protocol=protocol, drift_limits=panel_limits(cfg))
    comparable = champion is not None and champion_protocol_mismatch(champion, protocol, primary) is None
    report = build_report(
        evaluation, gates, lineage, champion=champion if comparable else None, primary_metric=primary,
        selection=selection,
    )
    paths = write_report(report, out_dir)
    paths["evaluation"] = evaluation.save(Path(out_dir) / "evaluation.json")
    failures = report.blocking_failures
    logger.info(
        "gate verdict: %s (%d/%d checks passed)%s", report.verdict, sum(g.passed for g in gates), len(gates),
        ("; blocked by " + ", ".join(f"{g.gate}:{g.metric}" for g in failures)) if failures else "",
    )
    return report, paths
