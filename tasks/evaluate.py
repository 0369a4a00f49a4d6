"""Evaluation, gating and registry tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.logging import get_run_logger

from tether import outputs
from tether.cache_keys import base_eval_cache_key as _base_eval_key
from tether.config import TetherConfig
from tether.decision import Judgement, judge, register_and_promote
from tether.eval.evaluate import Evaluation, evaluate_base, evaluate_run
from tether.eval.report import GateReport, to_markdown
from tether.stages import check_drift_panel


@task(name="check-drift-panel")
def check_panel_task(cfg: TetherConfig, root: Path) -> dict[str, Any]:
    """Read every text source of the drift panel: a missing, empty or unreachable one stops the run here."""
    summary = check_drift_panel(cfg, root)
    get_run_logger().info("drift panel: %s", ", ".join(f"{n} ({v['gate_chunks']}+{v['selection_chunks']} chunks)"
                                                        for n, v in summary.items()))
    return summary


def base_eval_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of the base model's evaluation (:func:`tether.cache_keys.base_eval_cache_key`)."""
    return _base_eval_key(parameters["cfg"], parameters["root"], parameters["base"].content_hash)


@task(
    name="evaluate-base",
    cache_policy=CacheKeyFnPolicy(cache_key_fn=base_eval_cache_key) + TASK_SOURCE,
    persist_result=True,
)
def evaluate_base_task(cfg: TetherConfig, root: Path, base: Any) -> dict[str, Any]:
    """The zero-shot base alone (cached by its inputs' hashes), handed to the evaluate task."""
    result = evaluate_base(cfg, root)
    get_run_logger().info(
        "base model %s evaluated in %.1f s (on-disk cache hit: %s)", result["base_model"], result["seconds"], result["hit"],
    )
    return result


@task(name="evaluate")
def evaluate_task(
    cfg: TetherConfig, root: Path, adapter_dir: Path, base_result: dict[str, Any] | None = None,
) -> Evaluation:
    """Candidate, zero-shot base (precomputed, or cached on disk by its inputs' hashes) and popularity, one protocol."""
    evaluation = evaluate_run(cfg, root, adapter_dir, base_result=base_result)
    get_run_logger().info("evaluation timings (s): %s", evaluation.timings)
    return evaluation


@task(name="gate")
def gate_task(
    cfg: TetherConfig, evaluation: Evaluation, lineage: dict[str, Any], out_dir: Path,
    champion: dict[str, Any] | None, run_id: str | None, selection: dict[str, Any] | None = None,
    stage_lineage: dict[str, Any] | None = None,
) -> Judgement:
    """Turn numbers into verdicts, once: the flow's report (written, logged) and the DVC gate stage's (no champion)."""
    judged = judge(cfg, evaluation, lineage, out_dir, champion=champion, run_id=run_id, selection=selection,
                   stage_lineage=lineage if stage_lineage is None else stage_lineage)
    create_markdown_artifact(key="gate-report", markdown=to_markdown(judged.report),
                             description=f"Verdict: {judged.report.verdict}")
    get_run_logger().info("gate verdict: %s", judged.report.verdict)
    return judged


@task(name="register-and-promote", retries=2, retry_delay_seconds=5)
def register_task(
    cfg: TetherConfig, root: Path, *, run_id: str, adapter_dir: Path, resolved_base: Any,
    report: GateReport, paths: dict[str, Path], lineage: dict[str, Any], idempotency_key: str,
    eval_protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register the candidate (alias challenger) with the protocol it was evaluated under; move champion
    only if every gate passed and it beats it (:func:`tether.decision.register_and_promote`)."""
    registered = register_and_promote(
        cfg, root, run_id=run_id, adapter_dir=adapter_dir, resolved_base=resolved_base, report=report, paths=paths,
        lineage=lineage, idempotency_key=idempotency_key, eval_protocol=eval_protocol,
    )
    get_run_logger().info("registry: version %s -> %s", registered["version"], registered["decision"].decision)
    return registered


@task(name="record-outputs")
def record_outputs_task(
    cfg: TetherConfig, root: Path, *, train_loss: list[tuple[int, float]], evaluation: Evaluation,
    stage_report: GateReport | None, commit: bool,
) -> dict[str, Any]:
    """Write the DVC stages' outputs at their fixed paths and record them in dvc.lock.

    Only for a run of ``params.yaml`` itself (``commit``): those paths and dvc.lock describe
    params.yaml's pipeline (the metrics files are in git), so a profile's or another params
    file's numbers must not overwrite them. Such a run keeps its results in its gate report
    directory, its own training output directory and MLflow.
    """
    if not commit:
        get_run_logger().info(
            "DVC stage outputs (outputs/eval, outputs/gate, the loss curve) left as they are: they belong to "
            "params.yaml's pipeline; this run's results are in its gate report directory and in MLflow"
        )
        return {"paths": {}, "dvc_committed": False}
    recorded = outputs.record_stage_outputs(
        cfg, root, train_loss=train_loss, evaluation=evaluation, stage_report=stage_report,
    )
    get_run_logger().info("stage outputs written%s", " and recorded in dvc.lock" if recorded["dvc_committed"] else "")
    return recorded
