"""The verdicts as a ``rich`` table for the end of a run (:func:`to_rich_table`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.eval.report.cells import fmt, fmt_interval, fmt_threshold
from tether.eval.report.model import GateReport

if TYPE_CHECKING:
    from rich.table import Table


def to_rich_table(report: GateReport) -> Table:
    """The verdict table for a terminal: one row per gate, PASS/FAIL coloured, title = verdict."""
    from rich.table import Table
    from rich.text import Text

    colour = "bold green" if report.promote else "bold red"
    table = Table(
        title=Text(f"Gate verdicts: {report.verdict}", style=colour),
        show_lines=False,
        header_style="bold",
    )
    for name, kw in (
        ("gate", {"no_wrap": True}),
        ("metric", {"no_wrap": True}),
        ("candidate", {"justify": "right"}),
        ("reference", {"justify": "right"}),
        ("threshold", {"justify": "right"}),
        (f"{report.ci_level:.0%} CI", {}),
        ("passed", {"justify": "center"}),
        ("reason", {"overflow": "fold", "ratio": 1}),
    ):
        table.add_column(name, **kw)
    for g in report.gates:
        if g.passed:
            verdict = Text("PASS", style="green")
        else:
            verdict = Text("FAIL", style="bold red") if g.blocking else Text("FAIL (advisory)", style="yellow")
        table.add_row(
            g.gate, g.metric, fmt(g.candidate), fmt(g.reference), fmt_threshold(g), fmt_interval(g),
            verdict, Text(g.reason),
        )
    return table
