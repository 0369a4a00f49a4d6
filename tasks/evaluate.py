"""Evaluation, gating and registry tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from tether.config import TetherConfig
from tether.eval.evaluate import Evaluation, evaluate_run
from tether.eval.gating import log_to_mlflow, run_gates
from tether.eval.report import GateReport, to_markdown


@task(name="evaluate")
def evaluate_task(cfg: TetherConfig, root: Path, adapter_dir: Path) -> Evaluation:
    """Candidate, zero-shot base (cached on disk by its inputs' hashes) and popularity, one protocol."""
    evaluation = evaluate_run(cfg, root, adapter_dir)
    get_run_logger().info("evaluation timings (s): %s", evaluation.timings)
    return evaluation


@task(name="gate")
def gate_task(
    cfg: TetherConfig, evaluation: Evaluation, lineage: dict[str, Any], out_dir: Path,
    champion: dict[str, Any] | None, run_id: str | None,
) -> tuple[GateReport, dict[str, Path]]:
    """Turn numbers into verdicts; write and log the gate report."""
    report, paths = run_gates(cfg, evaluation, lineage, out_dir, champion=champion)
    if run_id:
        log_to_mlflow(report, paths, evaluation, run_id=run_id)
    create_markdown_artifact(key="gate-report", markdown=to_markdown(report), description=f"Verdict: {report.verdict}")
    get_run_logger().info("gate verdict: %s", report.verdict)
    return report, paths


@task(name="register-and-promote", retries=2, retry_delay_seconds=5)
def register_task(
    cfg: TetherConfig, root: Path, *, run_id: str, adapter_dir: Path, resolved_base: Any,
    report: GateReport, paths: dict[str, Path], lineage: dict[str, Any], idempotency_key: str,
) -> dict[str, Any]:
    """Register the candidate (alias challenger); move champion only if every gate passed and it beats it."""
    from tether.registry import promote, register_candidate

    metric = cfg.gates.primary_metric
    candidate_value = report.metrics.get("candidate", {}).get(metric)
    version = register_candidate(
        cfg, root, run_id=run_id, adapter_dir=adapter_dir, resolved_base=resolved_base,
        gate_report_md=Path(paths["markdown"]).read_text(encoding="utf-8"), gate_results=report.gates,
        metrics=report.metrics, lineage=lineage, idempotency_key=idempotency_key,
    )
    decision = promote(
        cfg, version, all_gates_passed=not report.blocking_failures, candidate_metric=candidate_value,
        reasons=[g.reason for g in report.blocking_failures], root=root,
    )
    get_run_logger().info("registry: version %s -> %s", version.version, decision.decision)
    return {"version": str(version.version), "decision": decision}
