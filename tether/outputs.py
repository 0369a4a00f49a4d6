"""Stage outputs at fixed paths, for DVC: small deterministic metrics and plot files.

``dvc.yaml``'s train / evaluate / gate stages and the Prefect flow both write these, with the
same functions, so ``dvc metrics show`` and ``dvc plots show`` read the same numbers whichever
ran last, and the flow can record its outputs in ``dvc.lock`` (``dvc repro`` is then a no-op).

=================================  ==========================================================
``<train.output_dir>/loss.csv``    ``step,train_loss`` per logged step (a DVC plot)
``outputs/eval/metrics.json``      per system (candidate, base, popularity): ranking metrics,
                                   valid-item and exact-title rates, perplexity per drift-panel
                                   source; drift per source, golden-prompt KL (DVC metrics)
``outputs/eval/systems.csv``       ``system,<metric>...`` one row per system (a DVC bar plot)
``outputs/gate/verdict.json``      verdict, promote, blocking failures, each check passed (DVC metrics)
=================================  ==========================================================

Deterministic: no absolute paths, no timestamps, no timings; numbers rounded to 6 decimals so
that float noise below that never changes a file's hash.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether import versioning
from tether.eval.systems import EVALUATED_SYSTEMS, is_recorded_metric, ranking_metrics
from tether.io import resolve

if TYPE_CHECKING:
    from tether.config import TetherConfig
    from tether.eval.evaluate import Evaluation
    from tether.eval.report import GateReport

EVAL_DIR = Path("outputs/eval")
GATE_DIR = Path("outputs/gate")
LOSS_CSV = "loss.csv"
METRICS_JSON = "metrics.json"
SYSTEMS_CSV = "systems.csv"
VERDICT_JSON = "verdict.json"
# The rows of metrics.json / systems.csv: the systems the evaluate stage measures (tether.eval.systems).
SYSTEMS = EVALUATED_SYSTEMS
DIGITS = 6


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return round(value, DIGITS) if math.isfinite(value) else None


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Rewrite only on change: an unchanged file keeps its mtime and DVC's cached hash.
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def write_loss_csv(train_loss: Iterable[tuple[int, float]], out_dir: str | Path) -> Path:
    """The training loss curve, ``step,train_loss``, as ``<out_dir>/loss.csv``.

    Args:
        train_loss: ``(step, loss)`` pairs (``TrainResult.train_loss``).
        out_dir: the training output directory (``train.output_dir``).

    Returns:
        The file written.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "train_loss"])
    for step, loss in train_loss:
        writer.writerow([int(step), _num(loss)])
    return _write(Path(out_dir) / LOSS_CSV, buf.getvalue())


def eval_metrics(evaluation: Evaluation, ks: Iterable[int]) -> dict[str, Any]:
    """The headline numbers: ``{system: {metric: value}}``, ``drift`` per source, ``golden_kl``."""
    ks = list(ks)
    out: dict[str, Any] = {}
    for system in SYSTEMS:
        values = evaluation.systems.get(system, {})
        out[system] = {m: _num(v) for m, v in values.items() if is_recorded_metric(m, ks)}
    panel = evaluation.comparisons.get("drift_panel", {})
    out["drift"] = {source: _num(entry.get("drift")) for source, entry in panel.items()}
    out["golden_kl"] = _num((evaluation.comparisons.get("golden_kl") or {}).get("kl"))
    out["n_users"] = len(evaluation.user_ids)
    return out


def write_eval_outputs(evaluation: Evaluation, ks: Iterable[int], out_dir: str | Path = EVAL_DIR) -> dict[str, Path]:
    """``metrics.json`` (DVC metrics) and ``systems.csv`` (a per-system DVC plot) in ``out_dir``.

    Returns:
        ``{"metrics": path, "systems": path}``.
    """
    ks = list(ks)
    metrics = eval_metrics(evaluation, ks)
    out_dir = Path(out_dir)
    names = ranking_metrics(ks)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["system", *names])
    for system in SYSTEMS:
        writer.writerow([system, *[metrics[system].get(m) for m in names]])
    return {
        "metrics": _write(out_dir / METRICS_JSON, json.dumps(metrics, indent=2, sort_keys=True) + "\n"),
        "systems": _write(out_dir / SYSTEMS_CSV, buf.getvalue()),
    }


def verdict_summary(report: GateReport) -> dict[str, Any]:
    """Verdict, promote flag, number of blocking failures and ``{gate.metric: passed}``."""
    failures = report.blocking_failures
    return {
        "verdict": report.verdict,
        "promote": bool(report.verdict == "PROMOTE"),
        "blocking_failures": len(failures),
        "blocked_by": ",".join(f"{g.gate}:{g.metric}" for g in failures) or "none",
        "gates": {f"{g.gate}.{g.metric}": bool(g.passed) for g in report.gates},
    }


def write_verdict(report: GateReport, out_dir: str | Path = GATE_DIR) -> Path:
    """``verdict.json`` (DVC metrics) in ``out_dir``."""
    return _write(Path(out_dir) / VERDICT_JSON, json.dumps(verdict_summary(report), indent=2, sort_keys=True) + "\n")


def write_stage_outputs(
    cfg: TetherConfig, root: Path, *, train_loss: Iterable[tuple[int, float]], evaluation: Evaluation,
    stage_report: GateReport,
) -> dict[str, Path]:
    """Every output of the train / evaluate / gate stages at its fixed path, as the stages write them.

    Args:
        cfg: the config (``train.output_dir``, ``eval.ks``).
        root: the project root.
        train_loss: ``(step, loss)`` pairs of the training run.
        evaluation: the run's evaluation.
        stage_report: the verdict as the gate stage's own command (``tether gate``) computes it: no
            @champion (:func:`tether.decision.champion_free_report`), so ``dvc repro`` reproduces it.

    Returns:
        ``{"loss", "evaluation", "metrics", "systems", "json", "markdown", "png", "verdict"}`` -> path.
    """
    from tether.eval.report import write_report

    written = {"loss": write_loss_csv(train_loss, resolve(root, cfg.train.output_dir))}
    written["evaluation"] = evaluation.save(root / EVAL_DIR / "evaluation.json")
    written.update(write_eval_outputs(evaluation, cfg.eval.ks, root / EVAL_DIR))
    report_paths = write_report(stage_report, root / GATE_DIR)
    written.update({k: v for k, v in report_paths.items() if k in ("json", "markdown", "png")})
    # `tether gate --out outputs/gate` saves the judged evaluation beside its report: so does this.
    evaluation.save(root / GATE_DIR / "evaluation.json")
    written["verdict"] = write_verdict(stage_report, root / GATE_DIR)
    return written


def record_stage_outputs(
    cfg: TetherConfig, root: Path, *, train_loss: Iterable[tuple[int, float]], evaluation: Evaluation,
    stage_report: GateReport,
) -> dict[str, Any]:
    """:func:`write_stage_outputs`, then record the three stages in ``dvc.lock`` (``dvc repro`` is then a no-op).

    Only for a run of ``params.yaml`` itself: these paths and dvc.lock describe params.yaml's pipeline.

    Returns:
        ``{"paths": {name: path}, "dvc_committed": bool}``.
    """
    written = write_stage_outputs(cfg, root, train_loss=train_loss, evaluation=evaluation, stage_report=stage_report)
    return {"paths": written, "dvc_committed": versioning.record_stages(root, "train", "evaluate", "gate")}
