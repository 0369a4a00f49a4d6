"""The whole pipeline as a Prefect flow: raw data to a promotion decision in the MLflow registry."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.data_pipeline import data_pipeline
from tasks.evaluate import (
    check_panel_task,
    evaluate_base_task,
    evaluate_task,
    gate_task,
    record_outputs_task,
    register_task,
)
from tasks.model import fetch_model_task, train_task
from tether.config import REPO_ROOT, is_params_yaml_run, load_config
from tether.eval.gating import protocol_settings
from tether.interrupted import runs_killed_on_interrupt
from tether.registry import champion_for_gates
from tether.selection import selection_tags
from tether.tracking import lineage_tags


@flow(name="training_pipeline", log_prints=True)
def training_pipeline(
    profile: str | None = None,
    params: str | None = None,
    root: str | None = None,
    generate: bool = True,
    resume: bool = False,
) -> dict:
    """Raw data in, a gated candidate registered (and maybe promoted) out.

    1. data pipeline (subflow, handed this flow's config): sample data, DVC versioning, GX
       validation, preparation
    2. read every drift-panel source (a bad one stops the run here, before any model work)
    3. materialize the base model (converted once; a Prefect cache hit while its source is unchanged)
    4. evaluate the zero-shot base (a Prefect cache hit while base, data, panel and protocol are unchanged)
    5. fine-tune a LoRA adapter (distilled replay against forgetting), then guarded selection over
       checkpoints x scales on the validation split and the panel's selection half; tracked in MLflow
    6. evaluate candidate and popularity with the same protocol, next to the base's numbers
    7. gate: drift per panel source, golden-prompt KL, generation health, quality vs baselines and
       champion (the champion's numbers only if measured under the same protocol; else the gate fails)
    8. register the candidate as @challenger; move @champion only if every gate passed
    9. for a run of params.yaml itself (no profile): write the DVC stages' outputs (outputs/...)
       and record them in dvc.lock so `dvc repro` agrees they are up to date

    Args:
        profile: config profile (``cpu``, ``gpu``, ``test``); None = params.yaml alone.
        params: path of the params file (default ``<root>/params.yaml``).
        root: project directory (default: this repository).
        generate: write the deterministic sample data first.
        resume: continue training from the newest checkpoint.
    """
    project = Path(root) if root else REPO_ROOT
    params = params or str(project / "params.yaml")
    cfg = load_config(params, profile=profile)
    # A signal (SIGTERM/SIGINT to `tether run`, a worker or `tether serve` stopping) or a cancellation
    # interrupts the flow here: its MLflow runs end KILLED, not RUNNING/FAILED (tether/interrupted.py).
    with runs_killed_on_interrupt(cfg, project, str(flow_run.id or "")):
        data = data_pipeline(profile=profile, params=params, root=str(project), generate=generate, cfg=cfg)
        check_panel_task(cfg, project)
        base = fetch_model_task(cfg)
        base_eval = evaluate_base_task(cfg, project, base)
        trained = train_task(cfg, project, resume=resume)
        evaluation = evaluate_task(cfg, project, trained.adapter_dir, base_eval)
        lineage = lineage_tags(cfg, project, trained.base_model_hash)
        champion = champion_for_gates(cfg, root=project)  # its metric and the protocol it was measured under
        chosen = {**lineage, **selection_tags(trained.selection)}  # which checkpoint x scale became the adapter
        # Judged once: the flow's report (with the champion) and the DVC gate stage's (without it, as
        # `tether gate` computes it, so `dvc repro` reproduces outputs/gate/verdict.json).
        judged = gate_task(
            cfg, evaluation, chosen, project / "outputs" / "gate" / str(flow_run.id or "local"),
            champion, trained.mlflow_run_id, trained.selection, stage_lineage=lineage,
        )
        report, paths = judged.report, judged.paths
        registered = register_task(
            cfg, project, run_id=trained.mlflow_run_id, adapter_dir=trained.adapter_dir, resolved_base=base,
            report=report, paths=paths, lineage=chosen, idempotency_key=str(flow_run.id or trained.mlflow_run_id),
            eval_protocol=protocol_settings(evaluation, lineage),
        )
        # dvc.lock records params.yaml's values: only a run of exactly params.yaml may be recorded there.
        recorded = record_outputs_task(
            cfg, project, train_loss=trained.train_loss, evaluation=evaluation, stage_report=judged.stage_report,
            commit=is_params_yaml_run(profile, params, project),
        )
        return {"data": data, "base_model": base, "train": trained, "evaluation": evaluation,
                "base_timings": base_eval["result"].get("timings", {}),
                "report": report, "report_paths": paths, "registry": registered, "outputs": recorded,
                "flow_run_id": str(flow_run.id) if flow_run.id else None}
