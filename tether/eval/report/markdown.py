"""The gate report as Markdown (:func:`to_markdown`): the verdict first, then the gate table, the metric
tables, and the sections of :mod:`tether.eval.report.sections`."""

from __future__ import annotations

from tether.eval.report.cells import fmt, fmt_interval, fmt_threshold, fmt_value
from tether.eval.report.model import GateReport
from tether.eval.report.sections import drift_lines, generation_lines, lineage_lines, selection_lines
from tether.eval.report.tables import md_cell, md_table, metric_names, ordered_systems
from tether.eval.systems import is_generation_metric

MAX_CELL_CHARS = 280


def to_markdown(report: GateReport, max_chars: int = MAX_CELL_CHARS) -> str:
    """The report as Markdown: verdict, gate table, metric tables, generations, lineage.

    Table cells escape ``|`` and turn newlines into ``<br>``; ``<`` and ``>`` are escaped so a
    generation cannot inject HTML. Generations longer than ``max_chars`` are cut with ``…``.

    Args:
        report: the report.
        max_chars: longest generation or prompt shown in a cell.

    Returns:
        The Markdown text (ends with a newline).
    """
    ci = f"{report.ci_level:.0%} CI"
    lines = [f"# {md_cell(report.title)}", "", _headline(report), ""]
    lines += _verdict_lines(report)
    lines += _gate_lines(report, ci)
    lines += drift_lines(report.gates, ci)
    lines += _metric_lines(report, ci)
    if report.selection:
        lines += selection_lines(report.selection)
    lines += generation_lines(report.generations, max_chars)
    lines += lineage_lines(report.lineage)
    return "\n".join(lines)


def _headline(report: GateReport) -> str:
    n = len(report.gates)
    if report.promote:
        n_blocking = sum(g.blocking for g in report.gates)
        advisory = len(report.advisory_failures)
        return f"**Verdict: ✅ PROMOTE**: all {n_blocking} blocking gate checks passed" + (
            f"; {advisory} advisory check(s) failed." if advisory else "."
        )
    failures = report.blocking_failures
    if not report.gates:
        return "**Verdict: ❌ BLOCKED**: no gate was checked."
    if not failures:
        return "**Verdict: ❌ BLOCKED**"
    names = ", ".join(f"{g.gate} ({g.metric})" for g in failures)
    return f"**Verdict: ❌ BLOCKED**: {len(failures)} of {n} gate checks failed: {md_cell(names)}."


def _verdict_lines(report: GateReport) -> list[str]:
    """What blocked the adapter (or that the caller did), then the advisory failures."""
    lines: list[str] = []
    failures = report.blocking_failures
    if failures:
        lines += [f"- **{md_cell(g.gate)}** ({md_cell(g.metric)}): {md_cell(g.reason)}" for g in failures] + [""]
    elif not report.promote:
        lines += ["- every gate passed, but the verdict was set to BLOCKED by the caller", ""]
    advisory = report.advisory_failures
    if advisory:
        lines.append("Advisory failures (do not block):")
        lines += [f"- {md_cell(g.gate)} ({md_cell(g.metric)}): {md_cell(g.reason)}" for g in advisory] + [""]
    return lines


def _gate_lines(report: GateReport, ci: str) -> list[str]:
    lines = ["## Gates", ""]
    if report.gates:
        lines += md_table(
            ["gate", "metric", "candidate", "reference", "threshold", ci, "passed", "reason"],
            [
                [
                    g.gate,
                    g.metric,
                    fmt(g.candidate),
                    fmt(g.reference),
                    fmt_threshold(g),
                    fmt_interval(g),
                    ("✅" if g.passed else "❌") + ("" if g.blocking else " (advisory)"),
                    g.reason,
                ]
                for g in report.gates
            ],
        )
    else:
        lines.append("No gate was checked, so nothing can be promoted.")
    return lines + [""]


def _metric_lines(report: GateReport, ci: str) -> list[str]:
    """One table per kind of metric (recommendation; general text and generation), a column per system."""
    lines: list[str] = []
    systems = ordered_systems(report.metrics)
    for heading, keep in (
        ("Recommendation metrics", lambda m: not is_generation_metric(m)),
        ("General text and generation health", is_generation_metric),
    ):
        names = metric_names(report.metrics, keep)
        if not names:
            continue
        shown = [s for s in systems if any(m in report.metrics[s] for m in names)]
        lines += [f"## {heading}", ""]
        if any(m in report.intervals.get(s, {}) for s in shown for m in names):
            lines += [f"Values with their {ci} in brackets.", ""]
        lines += md_table(
            ["metric", *shown],
            [
                [m, *(fmt_value(report.metrics[s].get(m), report.intervals.get(s, {}).get(m)) for s in shown)]
                for m in names
            ],
        )
        lines.append("")
    return lines
