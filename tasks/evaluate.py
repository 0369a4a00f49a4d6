"""Evaluation, gating and registry tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.logging import get_run_logger

from tether.config import TetherConfig
from tether.eval.evaluate import Evaluation, evaluate_base, evaluate_run, expected_base_cache_key
from tether.eval.gating import log_to_mlflow, run_gates
from tether.eval.report import GateReport, to_markdown


@task(name="check-drift-panel")
def check_panel_task(cfg: TetherConfig, root: Path) -> dict[str, Any]:
    """Read every text source of the drift panel: a missing, empty or unreachable one stops the run here."""
    from tether.eval.panel import load_text_sources

    sources = load_text_sources(cfg, root)
    summary = {name: {"gate_chunks": len(s.gate), "selection_chunks": len(s.selection), "fingerprint": s.fingerprint}
               for name, s in sources.items()}
    get_run_logger().info("drift panel: %s", ", ".join(f"{n} ({v['gate_chunks']}+{v['selection_chunks']} chunks)"
                                                        for n, v in summary.items()))
    return summary


def base_eval_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of the base model's evaluation: tether's own base_cache_key (base weights
    hash + test data + corpus + golden prompts + protocol + device/dtype + cache format)."""
    return "base-eval-" + expected_base_cache_key(parameters["cfg"], parameters["root"], parameters["base"].content_hash)


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
) -> tuple[GateReport, dict[str, Path]]:
    """Turn numbers into verdicts; write and log the gate report (with guarded selection's trials)."""
    report, paths = run_gates(cfg, evaluation, lineage, out_dir, champion=champion, selection=selection)
    if run_id:
        log_to_mlflow(report, paths, evaluation, run_id=run_id)
    create_markdown_artifact(key="gate-report", markdown=to_markdown(report), description=f"Verdict: {report.verdict}")
    get_run_logger().info("gate verdict: %s", report.verdict)
    return report, paths


@task(name="register-and-promote", retries=2, retry_delay_seconds=5)
def register_task(
    cfg: TetherConfig, root: Path, *, run_id: str, adapter_dir: Path, resolved_base: Any,
    report: GateReport, paths: dict[str, Path], lineage: dict[str, Any], idempotency_key: str,
    eval_protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register the candidate (alias challenger) with the protocol it was evaluated under
    (``tether.eval.gating.protocol_settings``); move champion only if every gate passed and it beats it."""
    from tether.registry import promote, register_candidate

    metric = cfg.gates.primary_metric
    candidate_value = report.metrics.get("candidate", {}).get(metric)
    version = register_candidate(
        cfg, root, run_id=run_id, adapter_dir=adapter_dir, resolved_base=resolved_base,
        gate_report_md=Path(paths["markdown"]).read_text(encoding="utf-8"), gate_results=report.gates,
        metrics=report.metrics, lineage=lineage, idempotency_key=idempotency_key, eval_protocol=eval_protocol,
    )
    decision = promote(
        cfg, version, all_gates_passed=not report.blocking_failures, candidate_metric=candidate_value,
        reasons=[g.reason for g in report.blocking_failures], root=root,
    )
    get_run_logger().info("registry: version %s -> %s", version.version, decision.decision)
    return {"version": str(version.version), "decision": decision}


@task(name="record-outputs")
def record_outputs_task(
    cfg: TetherConfig, root: Path, *, train_loss: list[tuple[int, float]], evaluation: Evaluation,
    lineage: dict[str, Any], commit: bool,
) -> dict[str, Any]:
    """Write the DVC stages' outputs at their fixed paths and record them in dvc.lock.

    Only for a run of ``params.yaml`` itself (``commit``): those paths and dvc.lock describe
    params.yaml's pipeline (the metrics files are in git), so a profile's or another params
    file's numbers must not overwrite them. Such a run keeps its results in its gate report
    directory, its own training output directory and MLflow.
    """
    from tether import outputs, versioning

    if not commit:
        get_run_logger().info(
            "DVC stage outputs (outputs/eval, outputs/gate, the loss curve) left as they are: they belong to "
            "params.yaml's pipeline; this run's results are in its gate report directory and in MLflow"
        )
        return {"paths": {}, "dvc_committed": False}
    out_dir = cfg.train.output_dir if cfg.train.output_dir.is_absolute() else root / cfg.train.output_dir
    written = {"loss": outputs.write_loss_csv(train_loss, out_dir)}
    written["evaluation"] = evaluation.save(root / outputs.EVAL_DIR / "evaluation.json")
    written.update(outputs.write_eval_outputs(evaluation, cfg.eval.ks, root / outputs.EVAL_DIR))
    # The gate stage's outputs are what its own command (`tether gate`) computes: no @champion,
    # so `dvc repro` reproduces them. The flow's full report (with the champion) stays in its
    # gate report directory, MLflow and the registry.
    stage_report, stage_paths = run_gates(cfg, evaluation, lineage, root / outputs.GATE_DIR)
    written.update({k: v for k, v in stage_paths.items() if k in ("json", "markdown", "png")})
    written["verdict"] = outputs.write_verdict(stage_report, root / outputs.GATE_DIR)
    committed = versioning.is_dvc_repo(root) and (root / "dvc.yaml").exists()
    if committed:
        versioning.dvc(root, "commit", "--force", "--quiet", "train", "evaluate", "gate")
    get_run_logger().info("stage outputs written%s", " and recorded in dvc.lock" if committed else "")
    return {"paths": written, "dvc_committed": committed}
