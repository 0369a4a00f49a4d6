"""The gate report: what a reviewer reads before an adapter is promoted (or why it was not).

A :class:`GateReport` gathers the verdicts (:class:`~tether.eval.gates.GateResult`), the
metrics of every system evaluated with the same protocol (candidate, base model, popularity
baseline, champion), their confidence intervals, the base and candidate generations side by
side, and the lineage of the run. It renders to:

* strict JSON (:func:`to_json`; non-finite numbers become ``null``), read back by :func:`from_json`;
* Markdown (:func:`to_markdown`): the verdict first, then the gate table, the metric tables and
  the generations;
* a PNG chart (:func:`plot`): ranking quality with intervals, perplexity against the drift
  limit, generation health, each coloured by its verdict;
* a ``rich`` table of the verdicts (:func:`to_rich_table`) for the end of a run.

:func:`write_report` writes ``gate_report.{json,md,png}`` into a folder. The systems, their order,
colours and metric labels come from :mod:`tether.eval.systems`.

Modules: :mod:`~tether.eval.report.model` (the report, JSON), :mod:`~tether.eval.report.markdown`
and :mod:`~tether.eval.report.sections` (Markdown), :mod:`~tether.eval.report.tables` (Markdown
tables, column and row order), :mod:`~tether.eval.report.cells` (how a value reads),
:mod:`~tether.eval.report.chart` (PNG), :mod:`~tether.eval.report.terminal` (rich),
:mod:`~tether.eval.report.write` (the files).
"""

from __future__ import annotations

from tether.eval.report.chart import plot
from tether.eval.report.markdown import MAX_CELL_CHARS, to_markdown
from tether.eval.report.model import REPORT_FORMAT, GateReport, from_json, to_json
from tether.eval.report.terminal import to_rich_table
from tether.eval.report.write import write_report
from tether.eval.systems import GENERATION_METRICS, SYSTEM_ORDER

__all__ = [
    "GENERATION_METRICS",
    "MAX_CELL_CHARS",
    "REPORT_FORMAT",
    "SYSTEM_ORDER",
    "GateReport",
    "from_json",
    "plot",
    "to_json",
    "to_markdown",
    "to_rich_table",
    "write_report",
]
