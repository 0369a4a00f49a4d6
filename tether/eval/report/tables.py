"""Markdown tables (escaped cells) and the order of their columns and rows: systems, then metrics.

Systems follow :data:`tether.eval.systems.SYSTEM_ORDER` (references first, the candidate last);
metrics follow :func:`metric_sort_key` (ranking metrics by K, then :data:`tether.eval.systems.METRIC_ORDER`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tether.eval.systems import METRIC_ORDER, SYSTEM_ORDER, ranking_cutoff


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], escaped: bool = False) -> list[str]:
    """A Markdown table, as lines; cells are escaped with :func:`md_cell` unless ``escaped`` (already done)."""
    esc = (lambda c: str(c)) if escaped else md_cell
    out = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def md_cell(text: Any, html: bool = False) -> str:
    """One Markdown table cell: pipes escaped, line breaks as ``<br>``; ``html`` escapes ``<``/``>`` too.

    Model output and prompts get ``html=True`` so a generation cannot inject HTML into the
    rendered page; our own reasons keep their ``<=`` readable in the raw file.
    """
    s = str(text).replace("\\", "\\\\").replace("|", "\\|")
    if html:
        s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    return s.replace("\n", "<br>")


def truncate(text: str, max_chars: int) -> str:
    """``text`` stripped, cut to ``max_chars`` with ``…``."""
    text = text.strip()
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def ordered_systems(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The systems of ``metrics`` in display order: the known references, any others, the candidate last."""
    known = [s for s in SYSTEM_ORDER if s in metrics and s != "candidate"]
    others = [s for s in metrics if s not in SYSTEM_ORDER]
    return known + others + (["candidate"] if "candidate" in metrics else [])


def metric_names(metrics: Mapping[str, Mapping[str, Any]], keep: Callable[[str], bool]) -> list[str]:
    """Every metric name of any system that ``keep`` accepts, in :func:`metric_sort_key` order."""
    names: list[str] = []
    for m in metrics.values():
        for k in m:
            if k not in names and keep(k):
                names.append(k)
    return sorted(names, key=metric_sort_key)


def metric_sort_key(name: str) -> tuple[int, int, str]:
    """Ranking metrics by K, then diversity, then the rest, in a stable reading order."""
    cut = ranking_cutoff(name)
    if cut:
        return (1, cut[1] * 2 + (cut[0] == "hr"), name)
    if name in ("count", "mrr"):
        return (0, ("count", "mrr").index(name), name)
    base = re.sub(r"_at_\d+$", "", name)
    if base in METRIC_ORDER:
        return (2, METRIC_ORDER.index(base), name)
    return (3, 0, name)
