"""The gate report in MLflow: flat metric names (:func:`mlflow_metrics`) and the logging itself (:func:`log_to_mlflow`).

The run tags ``gate.<gate>.<metric>`` (:func:`tether.eval.verdicts.check_tag`: the words of the
version's tags), ``gate_verdict`` and
``gate_blocking_failures`` are written here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tether.eval.gating.assemble import timing_summary
from tether.eval.verdicts import check_tag

if TYPE_CHECKING:
    from tether.eval.evaluate import Evaluation
    from tether.eval.report import GateReport

logger = logging.getLogger(__name__)


def mlflow_metrics(report: GateReport, evaluation: Evaluation) -> dict[str, float]:
    """Flat, MLflow-safe metric names and finite values for a report and its evaluation.

    ``<system>.<metric>`` for every system metric (``candidate.ndcg_at_10``),
    ``<system>.<metric>_ci_low/_ci_high`` for intervals, ``gate.<gate>.<metric>.passed`` as 0/1,
    ``drift.<source>`` per drift-panel source (+ interval and ``.nll_diff``), ``perplexity_drift``
    (the worst source's), ``golden_kl``, ``promote`` as 0/1 and ``eval_seconds.<part>``.
    """
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value)):
            out[name.replace("@", "_at_")] = float(value)

    for system, m in report.metrics.items():
        for name, value in m.items():
            put(f"{system}.{name}", value)
    for system, m in report.intervals.items():
        for name, iv in m.items():
            if iv is not None:
                put(f"{system}.{name}_ci_low", iv[0])
                put(f"{system}.{name}_ci_high", iv[1])
    for g in report.gates:
        put(f"gate.{g.gate}.{g.metric}.passed", g.passed)
    for source, entry in evaluation.comparisons.get("drift_panel", {}).items():
        put(f"drift.{source}", entry.get("drift"))
        put(f"drift.{source}.nll_diff", entry.get("nll_diff"))
        if entry.get("interval") is not None:
            put(f"drift.{source}_ci_low", entry["interval"][0])
            put(f"drift.{source}_ci_high", entry["interval"][1])
    worst = evaluation.comparisons.get("perplexity_drift", {})
    put("perplexity_drift", worst.get("drift"))  # the worst source's, relative to its limit
    golden = evaluation.comparisons.get("golden_kl") or {}
    put("golden_kl", golden.get("kl"))
    put("promote", report.promote)
    for name, seconds in timing_summary(evaluation.timings).items():
        put(f"eval_seconds.{name}", seconds)
    return out


def log_to_mlflow(
    report: GateReport,
    paths: Mapping[str, Path],
    evaluation: Evaluation,
    run_id: str | None = None,
) -> str:
    """Log the gate report to MLflow: metrics, verdict tags, report files, generations table.

    Args:
        report: from :func:`~tether.eval.gating.run_gates`.
        paths: the files it wrote (logged under ``gate_report/``).
        evaluation: the evaluation (drift, timings).
        run_id: the run to log into (e.g. the training run); None = the active run, or a new
            ``gate-*`` run in the current experiment (call ``tether.tracking.setup_tracking`` first).

    Returns:
        The run id.
    """
    import mlflow
    from mlflow.entities import Metric, RunTag

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            with mlflow.start_run(run_name=f"gate-{time.strftime('%Y%m%d-%H%M%S')}") as run:
                return log_to_mlflow(report, paths, evaluation, run.info.run_id)
        run_id = active.info.run_id

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metric_items = [Metric(k, v, now, 0) for k, v in mlflow_metrics(report, evaluation).items()]
    failures = report.blocking_failures
    tags = {
        "gate_verdict": report.verdict,
        "gate_blocking_failures": ",".join(f"{g.gate}:{g.metric}" for g in failures) or "none",
        "base_cache_hit": str(bool(evaluation.base_cache.get("hit"))).lower(),
    }
    for g in report.gates:
        tags[f"gate.{g.gate}.{g.metric}"] = check_tag(g)  # the words a version uses too
    tag_items = [RunTag(k, v) for k, v in tags.items()]
    # log_batch takes at most 1000 metrics per call.
    for start in range(0, max(len(metric_items), 1), 1000):
        client.log_batch(run_id, metrics=metric_items[start : start + 1000], tags=tag_items if start == 0 else [])
    for path in paths.values():
        client.log_artifact(run_id, str(path), artifact_path="gate_report")
    if report.generations:
        columns = ("id", "category", "prompt", "base", "candidate")
        table = {c: [str(r.get(c, "")) for r in report.generations] for c in columns}
        mlflow.log_table(data=table, artifact_file="gate_report/generations.json", run_id=run_id)
    logger.info("gate report logged to MLflow run %s (%d metrics)", run_id, len(metric_items))
    return run_id
