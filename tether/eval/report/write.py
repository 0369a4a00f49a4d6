"""The report's files: :func:`write_report` writes ``gate_report.{json,md,png}`` (and the selection's Pareto plot)."""

from __future__ import annotations

import logging
from pathlib import Path

from tether.eval.report.chart import plot
from tether.eval.report.markdown import to_markdown
from tether.eval.report.model import GateReport, to_json

logger = logging.getLogger(__name__)


def write_report(report: GateReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``gate_report.json``, ``gate_report.md`` and ``gate_report.png`` into ``out_dir``.

    Returns:
        ``{"json": ..., "markdown": ..., "png": ...}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "gate_report.json", "markdown": out / "gate_report.md", "png": out / "gate_report.png"}
    paths["json"].write_text(to_json(report) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(report), encoding="utf-8")
    plot(report, paths["png"])
    pareto = Path(report.selection["plot"]) if report.selection and report.selection.get("plot") else None
    if pareto is not None and pareto.is_file():
        import shutil

        paths["pareto"] = out / pareto.name
        if pareto.resolve() != paths["pareto"].resolve():
            shutil.copyfile(pareto, paths["pareto"])
    logger.info("gate report (%s) written to %s", report.verdict, out)
    return paths
