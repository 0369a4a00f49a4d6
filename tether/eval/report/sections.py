"""The report's Markdown sections beyond the verdict and the metric tables: drift by source,
guarded selection, generations side by side, lineage. Each returns its lines, ending with a blank one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tether.eval.gates import GateResult
from tether.eval.report.cells import drift_of, fmt, fmt_interval, fmt_lineage, fmt_threshold, pct
from tether.eval.report.tables import md_cell, md_table, truncate


def drift_lines(gates: Sequence[GateResult], ci: str) -> list[str]:
    """``## Drift by source``: base and candidate perplexity, drift, interval and limit per drift-panel source.

    Args:
        gates: the report's gates (only the ``perplexity_drift`` ones are shown; none, no section).
        ci: the interval column's header (``95% CI``).
    """
    drift_rows = [g for g in gates if g.gate == "perplexity_drift"]
    if not drift_rows:
        return []
    lines = ["## Drift by source", "",
             "Perplexity of the base and the candidate on each source of the drift panel (identical "
             "tokens); promotion is blocked when any one source drifts over its limit.", ""]
    lines += md_table(
        ["source", "base", "candidate", "drift", ci, "limit", "passed"],
        [[g.metric, fmt(g.reference), fmt(g.candidate), drift_of(g), fmt_interval(g), fmt_threshold(g),
          "✅" if g.passed else "❌"] for g in drift_rows],
    )
    return lines + [""]


def selection_lines(sel: Mapping[str, Any]) -> list[str]:
    """``## Guarded selection``: every trial, the chosen one in bold, and the Pareto plot.

    Args:
        sel: :class:`tether.selection.SelectionResult` as a dict (``metric``, ``chosen``, ``trials``,
            ``feasible``, ``plot``).
    """
    chosen = sel.get("chosen", {})
    metric = sel.get("metric", "primary")
    sources = list(chosen.get("drift", {}))
    lines = ["## Guarded selection", "",
             f"Checkpoints x adapter scales, each measured on the validation split ({metric}) and on the selection "
             "half of the drift panel (other documents and prompts than the gate's). Chosen: the best "
             f"{metric} among trials with every source within its limit"
             + ("." if sel.get("feasible", True) else "; **no trial was within every limit**, so the least-over one was kept."),
             ""]
    rows = []
    for t in sel.get("trials", []):
        mark = t["step"] == chosen.get("step") and t["scale"] == chosen.get("scale")
        cells = [str(t["step"]), f"{t['scale']:g}", fmt(t["primary"]), *(pct(t["drift"].get(s), sign=True) for s in sources),
                 "✅" if t["feasible"] else "❌"]
        rows.append([f"**{c}**" for c in cells] if mark else cells)
    lines += md_table(["step", "scale", metric, *(f"drift {s}" for s in sources), "within limits"], rows)
    if sel.get("plot"):
        lines += ["", f"![Pareto plot of guarded selection]({Path(sel['plot']).name})"]
    return lines + [""]


def generation_lines(generations: Sequence[Mapping[str, Any]], max_chars: int) -> list[str]:
    """``## Generations: base vs candidate``: prompt, base and candidate answers, HTML-escaped and cut to ``max_chars``.

    Args:
        generations: rows of :func:`tether.eval.generation.side_by_side` (none, no section).
        max_chars: longest prompt or generation shown in a cell.
    """
    if not generations:
        return []
    lines = ["## Generations: base vs candidate", "", "Same prompts, same greedy decoding.", ""]
    lines += md_table(
        ["id", "prompt", "base", "candidate"],
        [
            [
                md_cell(str(r.get("id", n)) + (f" ({r['category']})" if r.get("category") else ""), html=True),
                md_cell(truncate(str(r.get("prompt", "")), max_chars), html=True),
                md_cell(truncate(str(r.get("base", "")), max_chars), html=True) or "*(empty)*",
                md_cell(truncate(str(r.get("candidate", "")), max_chars), html=True) or "*(empty)*",
            ]
            for n, r in enumerate(generations, start=1)
        ],
        escaped=True,
    )
    return lines + [""]


def lineage_lines(lineage: Mapping[str, Any]) -> list[str]:
    """``## Lineage``: one row per key, values as inline code (none, no section)."""
    if not lineage:
        return []
    lines = ["## Lineage", ""]
    lines += md_table(["key", "value"], [[str(k), fmt_lineage(v)] for k, v in lineage.items()])
    return lines + [""]
