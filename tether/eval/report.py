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

:func:`write_report` writes ``gate_report.{json,md,png}`` into a folder.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.eval.gates import GateResult, summarize

if TYPE_CHECKING:
    from rich.table import Table

logger = logging.getLogger(__name__)

REPORT_FORMAT = 1
# Column order of the systems in tables and charts: references first, the candidate last.
SYSTEM_ORDER = ("popularity", "base", "champion", "candidate")
# Metrics about general text and free generation; every other metric is a recommendation metric.
GENERATION_METRICS = (
    "perplexity",
    "distinct_1",
    "distinct_2",
    "repeated_4gram_rate",
    "empty_rate",
    "mean_length",
    "length_ratio",
)
MAX_CELL_CHARS = 280


def _is_generation_metric(name: str) -> bool:
    return name in GENERATION_METRICS or name.startswith("perplexity.")

_COLOURS = {"popularity": "#9e9e9e", "base": "#4c72b0", "champion": "#8172b2", "candidate": "#dd8452"}
_PASS, _FAIL, _ADVISORY = "#2e7d32", "#c62828", "#ef6c00"


@dataclass
class GateReport:
    """Everything the gate stage decided, and the numbers it decided on.

    Attributes:
        gates: the verdicts, in the order they were checked.
        metrics: system -> metric -> value, e.g. ``{"candidate": {"ndcg_at_10": 0.21, ...},
            "base": {...}, "popularity": {...}}``. Generation and perplexity metrics may sit in
            the same dicts (see :data:`GENERATION_METRICS`).
        intervals: system -> metric -> ``(low, high)`` confidence interval of that value.
        generations: rows of :func:`tether.eval.generation.side_by_side`
            (``id``, ``category``, ``prompt``, ``base``, ``candidate``).
        lineage: git commit, data hash, config hash, base-model hash, ... (shown as given).
        promote: the overall verdict; None = derived from the gates with
            :func:`tether.eval.gates.summarize`. It may be False while every gate passed (held
            back for another reason), never True while a blocking gate failed.
        ci_level: confidence level of the intervals (for the column headers).
        title: heading of the Markdown report and the chart.
        selection: guarded selection's trials and choice (:class:`tether.selection.SelectionResult`
            as a dict), or None when the adapter was not selected.
    """

    gates: list[GateResult]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    generations: list[dict[str, str]] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    promote: bool | None = None
    ci_level: float = 0.95
    title: str = "Tether gate report"
    selection: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.gates = list(self.gates)
        passed, failures = summarize(self.gates)
        if self.promote is None:
            self.promote = passed
        elif self.promote and not passed:
            names = ", ".join(g.gate for g in failures) or "no gate was checked"
            raise ValueError(f"GateReport: promote=True contradicts the gates ({names})")
        self.promote = bool(self.promote)

    @property
    def verdict(self) -> str:
        """``PROMOTE`` or ``BLOCKED``."""
        return "PROMOTE" if self.promote else "BLOCKED"

    @property
    def blocking_failures(self) -> list[GateResult]:
        """The blocking gates that failed."""
        return summarize(self.gates)[1]

    @property
    def advisory_failures(self) -> list[GateResult]:
        """The advisory (non-blocking) gates that failed."""
        return [g for g in self.gates if not g.blocking and not g.passed]

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-safe dict (non-finite numbers as None)."""
        return _jsonable(
            {
                "format": REPORT_FORMAT,
                "title": self.title,
                "verdict": self.verdict,
                "promote": self.promote,
                "blocking_failures": [g.gate + ":" + g.metric for g in self.blocking_failures],
                "gates": [g.to_dict() for g in self.gates],
                "metrics": self.metrics,
                "intervals": self.intervals,
                "ci_level": self.ci_level,
                "generations": self.generations,
                "lineage": self.lineage,
                "selection": self.selection,
            }
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateReport:
        """Rebuild a report from :meth:`to_dict` output (nulls in numbers come back as NaN)."""
        gates = []
        for g in data.get("gates", []):
            threshold = g["threshold"]
            gates.append(
                GateResult(
                    gate=g["gate"],
                    metric=g["metric"],
                    candidate=g.get("candidate"),
                    reference=g.get("reference"),
                    threshold=tuple(_nan_if_none(t) for t in threshold)
                    if isinstance(threshold, list)
                    else _nan_if_none(threshold),
                    interval=None if g.get("interval") is None else tuple(_nan_if_none(x) for x in g["interval"]),
                    passed=bool(g["passed"]),
                    reason=g["reason"],
                    blocking=bool(g.get("blocking", True)),
                )
            )
        return cls(
            gates=gates,
            metrics={s: {k: _nan_if_none(v) for k, v in m.items()} for s, m in data.get("metrics", {}).items()},
            intervals={
                s: {k: tuple(_nan_if_none(x) for x in iv) for k, iv in m.items()}
                for s, m in data.get("intervals", {}).items()
            },
            generations=list(data.get("generations", [])),
            lineage=dict(data.get("lineage", {})),
            promote=data.get("promote"),
            ci_level=float(data.get("ci_level", 0.95)),
            title=data.get("title", "Tether gate report"),
            selection=data.get("selection"),
        )


# --------------------------------------------------------------------------- JSON


def to_json(report: GateReport, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259): NaN and infinities become ``null``; numpy values become numbers."""
    return json.dumps(report.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


def from_json(text: str) -> GateReport:
    """Read a report written by :func:`to_json`."""
    return GateReport.from_dict(json.loads(text))


# --------------------------------------------------------------------------- Markdown


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
    lines = [f"# {_cell(report.title)}", "", _headline(report), ""]
    failures = report.blocking_failures
    if failures:
        lines += [f"- **{_cell(g.gate)}** ({_cell(g.metric)}): {_cell(g.reason)}" for g in failures] + [""]
    elif not report.promote:
        lines += ["- every gate passed, but the verdict was set to BLOCKED by the caller", ""]
    advisory = report.advisory_failures
    if advisory:
        lines.append("Advisory failures (do not block):")
        lines += [f"- {_cell(g.gate)} ({_cell(g.metric)}): {_cell(g.reason)}" for g in advisory] + [""]

    lines += ["## Gates", ""]
    if report.gates:
        lines += _table(
            ["gate", "metric", "candidate", "reference", "threshold", ci, "passed", "reason"],
            [
                [
                    g.gate,
                    g.metric,
                    _fmt(g.candidate),
                    _fmt(g.reference),
                    _fmt_threshold(g),
                    _fmt_interval(g),
                    ("✅" if g.passed else "❌") + ("" if g.blocking else " (advisory)"),
                    g.reason,
                ]
                for g in report.gates
            ],
        )
    else:
        lines.append("No gate was checked, so nothing can be promoted.")
    lines.append("")

    drift_rows = [g for g in report.gates if g.gate == "perplexity_drift"]
    if drift_rows:
        lines += ["## Drift by source", "",
                  "Perplexity of the base and the candidate on each source of the drift panel (identical "
                  "tokens); promotion is blocked when any one source drifts over its limit.", ""]
        lines += _table(
            ["source", "base", "candidate", "drift", ci, "limit", "passed"],
            [[g.metric, _fmt(g.reference), _fmt(g.candidate), _drift_of(g), _fmt_interval(g), _fmt_threshold(g),
              "✅" if g.passed else "❌"] for g in drift_rows],
        )
        lines.append("")

    systems = _systems(report.metrics)
    for heading, keep in (
        ("Recommendation metrics", lambda m: not _is_generation_metric(m)),
        ("General text and generation health", _is_generation_metric),
    ):
        names = _metric_names(report.metrics, keep)
        if not names:
            continue
        shown = [s for s in systems if any(m in report.metrics[s] for m in names)]
        lines += [f"## {heading}", ""]
        if any(m in report.intervals.get(s, {}) for s in shown for m in names):
            lines += [f"Values with their {ci} in brackets.", ""]
        lines += _table(
            ["metric", *shown],
            [
                [m, *(_fmt_value(report.metrics[s].get(m), report.intervals.get(s, {}).get(m)) for s in shown)]
                for m in names
            ],
        )
        lines.append("")

    if report.selection:
        lines += _selection_lines(report.selection)

    if report.generations:
        lines += ["## Generations: base vs candidate", "", "Same prompts, same greedy decoding.", ""]
        lines += _table(
            ["id", "prompt", "base", "candidate"],
            [
                [
                    _cell(str(r.get("id", n)) + (f" ({r['category']})" if r.get("category") else ""), html=True),
                    _cell(_truncate(str(r.get("prompt", "")), max_chars), html=True),
                    _cell(_truncate(str(r.get("base", "")), max_chars), html=True) or "*(empty)*",
                    _cell(_truncate(str(r.get("candidate", "")), max_chars), html=True) or "*(empty)*",
                ]
                for n, r in enumerate(report.generations, start=1)
            ],
            escaped=True,
        )
        lines.append("")

    if report.lineage:
        lines += ["## Lineage", ""]
        lines += _table(["key", "value"], [[str(k), _fmt_lineage(v)] for k, v in report.lineage.items()])
        lines.append("")
    return "\n".join(lines)


def _selection_lines(sel: Mapping[str, Any]) -> list[str]:
    """The guarded-selection table: every trial, the chosen one in bold, and the Pareto plot."""
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
        cells = [str(t["step"]), f"{t['scale']:g}", _fmt(t["primary"]), *(_pct(t["drift"].get(s), sign=True) for s in sources),
                 "✅" if t["feasible"] else "❌"]
        rows.append([f"**{c}**" for c in cells] if mark else cells)
    lines += _table(["step", "scale", metric, *(f"drift {s}" for s in sources), "within limits"], rows)
    if sel.get("plot"):
        lines += ["", f"![Pareto plot of guarded selection]({Path(sel['plot']).name})"]
    return lines + [""]


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
    return f"**Verdict: ❌ BLOCKED**: {len(failures)} of {n} gate checks failed: {_cell(names)}."


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], escaped: bool = False) -> list[str]:
    """A Markdown table; cells are escaped with :func:`_cell` unless ``escaped`` (already done)."""
    esc = (lambda c: str(c)) if escaped else _cell
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def _cell(text: Any, html: bool = False) -> str:
    """One Markdown table cell: pipes escaped, line breaks as ``<br>``; ``html`` escapes ``<``/``>`` too.

    Model output and prompts get ``html=True`` so a generation cannot inject HTML into the
    rendered page; our own reasons keep their ``<=`` readable in the raw file.
    """
    s = str(text).replace("\\", "\\\\").replace("|", "\\|")
    if html:
        s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    return s.replace("\n", "<br>")


def _truncate(text: str, max_chars: int) -> str:
    text = text.strip()
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, (bool, str)):
        return str(x)
    if isinstance(x, numbers.Integral):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def _fmt_threshold(g: GateResult) -> str:
    t = g.threshold
    if isinstance(t, tuple):
        return f"[{_fmt(t[0])}, {_fmt(t[1])}]"
    if g.gate == "perplexity_drift":
        return f"max {_pct(t)}"
    if g.gate == "golden_kl":
        return f"max {_fmt(t)} nats/token"
    return _fmt(t)


def _fmt_interval(g: GateResult) -> str:
    if g.interval is None:
        return "—"
    if g.gate == "perplexity_drift":
        return f"[{_pct(g.interval[0], sign=True)}, {_pct(g.interval[1], sign=True)}]"
    return f"[{_fmt(g.interval[0])}, {_fmt(g.interval[1])}]"


def _drift_of(g: GateResult) -> str:
    if g.candidate is None or g.reference is None or not (_finite(g.candidate) and _finite(g.reference)) or not g.reference:
        return "—"
    return _pct(float(g.candidate) / float(g.reference) - 1.0, sign=True)


def _pct(x: float, sign: bool = False) -> str:
    if x is None or not math.isfinite(float(x)):
        return _fmt(x)
    return f"{float(x):+.2%}" if sign else f"{float(x):.2%}"


def _fmt_value(value: Any, interval: Sequence[float] | None) -> str:
    s = _fmt(value)
    if interval is not None and len(interval) == 2:
        s += f" [{_fmt(interval[0], 3)}, {_fmt(interval[1], 3)}]"
    return s


def _fmt_lineage(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(_jsonable(v), ensure_ascii=False) + "`"
    return f"`{v}`" if isinstance(v, str) and v else _fmt(v)


def _systems(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    known = [s for s in SYSTEM_ORDER if s in metrics and s != "candidate"]
    others = [s for s in metrics if s not in SYSTEM_ORDER]
    return known + others + (["candidate"] if "candidate" in metrics else [])


def _metric_names(metrics: Mapping[str, Mapping[str, Any]], keep: Any) -> list[str]:
    names: list[str] = []
    for m in metrics.values():
        for k in m:
            if k not in names and keep(k):
                names.append(k)
    return sorted(names, key=_metric_sort_key)


def _metric_sort_key(name: str) -> tuple[int, int, str]:
    """Ranking metrics by K, then diversity, then the rest, in a stable reading order."""
    m = re.fullmatch(r"(hr|ndcg)_at_(\d+)", name)
    if m:
        return (1, int(m.group(2)) * 2 + (m.group(1) == "hr"), name)
    if name in ("count", "mrr"):
        return (0, ("count", "mrr").index(name), name)
    order = [
        "coverage", "catalog_coverage", "entropy", "shannon_entropy", "gini", "gini_index",
        "intra_list_diversity", "ild", "novelty", "genre_mi", "valid_item_rate", "exact_title_rate", *GENERATION_METRICS,
    ]
    base = re.sub(r"_at_\d+$", "", name)
    if base in order:
        return (2, order.index(base), name)
    return (3, 0, name)


# --------------------------------------------------------------------------- rich


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
            g.gate, g.metric, _fmt(g.candidate), _fmt(g.reference), _fmt_threshold(g), _fmt_interval(g),
            verdict, Text(g.reason),
        )
    return table


# --------------------------------------------------------------------------- chart


def plot(report: GateReport, path: str | Path, k: int | None = None) -> Path:
    """A one-glance chart of the gate report, written as PNG.

    Panels (each only when its numbers exist): ranking quality (NDCG@K, HR@K, MRR) per system
    with confidence intervals; perplexity of base and candidate on general text with the
    drift limit drawn and the candidate coloured by the drift verdict; generation health
    (distinct-n, repetition, empty rate) of base and candidate, each candidate bar coloured by
    its gate. The title states the verdict and the blocking gates.

    Args:
        report: the report.
        path: where to write the PNG (parent folders are created).
        k: cut-off of the ranking metrics shown; None = 10 if present, else the smallest K.

    Returns:
        ``path``.
    """
    # A bare Figure on an Agg canvas: no pyplot, so no global backend switch and no figure
    # registry that would leak memory over many reports in one process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = []
    ranking = _ranking_metric_names(report, k)
    if ranking:
        panels.append(("ranking", ranking))
    ppl = _perplexity_numbers(report)
    if ppl is not None:
        panels.append(("perplexity", ppl))
    health = _health_numbers(report)
    if health:
        panels.append(("health", health))

    widths = {"ranking": 1.5, "perplexity": 1.2, "health": 1.3}
    fig = Figure(figsize=(1.5 + 3.6 * sum(widths[p[0]] for p in panels), 5.2) if panels else (8, 3), dpi=110)
    FigureCanvasAgg(fig)
    if panels:
        axes = fig.subplots(1, len(panels), gridspec_kw={"width_ratios": [widths[p[0]] for p in panels]})
        axes = [axes] if len(panels) == 1 else list(axes)
        for ax, (kind, data) in zip(axes, panels):
            {"ranking": _plot_ranking, "perplexity": _plot_perplexity, "health": _plot_health}[kind](
                ax, report, data
            )
    else:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no metrics to plot", ha="center", va="center", fontsize=12, color="#555555")

    colour = _PASS if report.promote else _FAIL
    headline = f"{report.verdict}  " + ("✔" if report.promote else "✘")
    failures = report.blocking_failures
    if failures:
        headline += f"   blocked by: {_failure_summary(failures)}"
    elif not report.gates:
        headline += "   no gate was checked"
    fig.suptitle(headline, color=colour, fontsize=14, fontweight="bold", x=0.01, ha="left", y=0.985)
    n_pass = sum(g.passed for g in report.gates)
    fig.text(
        0.01, 0.915, f"{report.title}: {n_pass}/{len(report.gates)} gate checks passed",
        fontsize=10, color="#444444", ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, format="png")
    return path


def _gate_short(g: GateResult) -> str:
    mark = "✔" if g.passed else "✘"
    if g.gate.startswith("beats_"):
        return f"{_label(g.metric)} > {g.gate.removeprefix('beats_')} {mark}"
    return f"{_label(g.metric)} {_fmt(g.candidate, 3)} ≥ {_fmt(g.threshold, 3)} {mark}"


def _failure_summary(failures: Sequence[GateResult]) -> str:
    """``perplexity_drift; generation_health: distinct_2, empty_rate``: gates in order, metrics grouped."""
    grouped: dict[str, list[str]] = {}
    for g in failures:
        grouped.setdefault(g.gate, []).append(g.metric)
    parts = [f"{gate}: {', '.join(ms)}" for gate, ms in grouped.items()]
    text = "; ".join(parts)
    return text if len(text) <= 110 else text[:109] + "…"


def _ranking_metric_names(report: GateReport, k: int | None) -> list[str]:
    keys = {key for m in report.metrics.values() for key in m}
    if k is None:
        ks = sorted({int(m.group(1)) for key in keys if (m := re.fullmatch(r"ndcg_at_(\d+)", key))})
        k = 10 if 10 in ks else (ks[0] if ks else None)
    names = [n for n in (f"ndcg_at_{k}", f"hr_at_{k}", "mrr") if k is not None or n == "mrr"]
    return [n for n in names if n in keys and _any_finite(report, n)]


def _any_finite(report: GateReport, metric: str) -> bool:
    return any(_finite(m.get(metric)) for m in report.metrics.values())


def _plot_ranking(ax: Any, report: GateReport, names: list[str]) -> None:
    import numpy as np

    systems = [s for s in _systems(report.metrics) if any(_finite(report.metrics[s].get(n)) for n in names)]
    width = 0.8 / max(len(systems), 1)
    x = np.arange(len(names))
    top = 0.0
    for j, system in enumerate(systems):
        values = np.array([_num(report.metrics[system].get(n)) for n in names])
        ivs = [report.intervals.get(system, {}).get(n) for n in names]
        lo, hi = _error_bars(values, ivs)
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(
            pos, np.nan_to_num(values), width * 0.92, color=_COLOURS.get(system, "#64b5cd"), label=system,
            yerr=[lo, hi] if any(iv is not None for iv in ivs) else None,
            capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333333"},
        )
        for p, v, h in zip(pos, values, hi):
            if math.isfinite(v):
                ax.text(p, v + h, f"{v:.3f}", ha="center", va="bottom", fontsize=7.5, color="#333333")
                top = max(top, v + h)
            else:
                ax.text(p, 0, "n/a", ha="center", va="bottom", fontsize=7.5, color="#999999")
    ax.set_xticks(x, [_label(n) for n in names])
    ax.set_ylim(0, top * 1.18 if top > 0 else 1)
    # The recommendation gates (vs references, floors) as one line under the axis.
    checks = [g for g in report.gates if g.gate.startswith("beats_") or g.gate == "floor"]
    if checks:
        ax.set_xlabel(
            "gates: " + ",  ".join(_gate_short(g) for g in checks),
            color=_PASS if all(g.passed or not g.blocking for g in checks) else _FAIL, fontsize=9,
        )
    n_users = report.metrics.get("candidate", {}).get("count")
    ax.set_title(
        "Recommendation quality (higher is better)" + (f"\n{int(n_users)} test users" if _finite(n_users) else ""),
        fontsize=11,
    )
    if any(report.intervals.get(s) for s in systems):
        ax.set_ylabel(f"value, {report.ci_level:.0%} CI as error bars")
    ax.legend(frameon=False, fontsize=9, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _despine(ax)


def _perplexity_numbers(report: GateReport) -> list[GateResult] | None:
    """The drift gates (one per drift-panel source) that have numbers to draw."""
    gates = [g for g in report.gates if g.gate == "perplexity_drift" and _finite(g.candidate) and _finite(g.reference)
             and float(g.reference) > 0]
    return gates or None


def _plot_perplexity(ax: Any, report: GateReport, gates: list[GateResult]) -> None:
    """Drift by source: one horizontal bar per source, its interval, its limit; coloured by its verdict."""
    y = list(range(len(gates)))[::-1]
    lo_all, hi_all = [0.0], [0.0]
    for yi, g in zip(y, gates):
        drift = float(g.candidate) / float(g.reference) - 1.0
        colour = _PASS if g.passed else _FAIL
        xerr = None
        if g.interval is not None and all(_finite(v) for v in g.interval):
            xerr = [[max(drift - g.interval[0], 0.0)], [max(g.interval[1] - drift, 0.0)]]
            lo_all.append(g.interval[0])
            hi_all.append(g.interval[1])
        ax.barh([yi], [100 * drift], 0.6, color=colour,
                xerr=None if xerr is None else [[100 * xerr[0][0]], [100 * xerr[1][0]]],
                capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333333"})
        lo_all.append(drift)
        hi_all.append(drift)
        if _finite(g.threshold):
            limit = 100 * float(g.threshold)
            hi_all.append(float(g.threshold))
            ax.plot([limit, limit], [yi - 0.4, yi + 0.4], color=_FAIL, linestyle="--", linewidth=1.3)
        ax.text(100 * drift, yi + 0.33, f"{drift:+.1%}", ha="center", va="bottom", fontsize=8, color="#333333")
    ax.axvline(0, color="#555555", linewidth=0.8)
    ax.set_yticks(y, [g.metric for g in gates])
    span = 100 * (max(hi_all) - min(lo_all)) or 10.0
    ax.set_xlim(100 * min(lo_all) - 0.15 * span, 100 * max(hi_all) + 0.2 * span)
    ax.set_xlabel("perplexity drift vs base, % (dashed: the source's limit)", fontsize=9)
    failed = [g.metric for g in gates if not g.passed]
    ax.set_title("Drift by source: " + ("FAIL (" + ", ".join(failed) + ")" if failed else "PASS")
                 + "\n(general text, lower is better)", fontsize=11, color=_FAIL if failed else _PASS)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    _despine(ax)


_HEALTH_SHOWN = ("distinct_1", "distinct_2", "repeated_4gram_rate", "empty_rate")


def _health_numbers(report: GateReport) -> list[str]:
    base, cand = report.metrics.get("base", {}), report.metrics.get("candidate", {})
    return [m for m in _HEALTH_SHOWN if _finite(base.get(m)) or _finite(cand.get(m))]


def _plot_health(ax: Any, report: GateReport, names: list[str]) -> None:
    import numpy as np

    base = np.array([_num(report.metrics.get("base", {}).get(n)) for n in names])
    cand = np.array([_num(report.metrics.get("candidate", {}).get(n)) for n in names])
    verdicts = {g.metric: g for g in report.gates if g.gate == "generation_health"}
    x = np.arange(len(names))
    ax.bar(x - 0.2, np.nan_to_num(base), 0.38, color=_COLOURS["base"], label="base")
    colours = [
        _COLOURS["candidate"] if n not in verdicts
        else (_PASS if verdicts[n].passed else (_FAIL if verdicts[n].blocking else _ADVISORY))
        for n in names
    ]
    ax.bar(x + 0.2, np.nan_to_num(cand), 0.38, color=colours, label="candidate")
    for i, n in enumerate(names):
        if math.isfinite(base[i]):
            ax.text(x[i] - 0.2, base[i], f"{base[i]:.2f}", ha="center", va="bottom", fontsize=7.5)
        mark = "" if n not in verdicts else (" ✔" if verdicts[n].passed else " ✘")
        ax.text(x[i] + 0.2, np.nan_to_num(cand[i]), (f"{cand[i]:.2f}" if math.isfinite(cand[i]) else "n/a") + mark,
                ha="center", va="bottom", fontsize=7.5, color=colours[i], fontweight="bold")
    ax.set_xticks(x, [_label(n) for n in names])
    ax.set_ylim(0, 1.15)
    ax.set_title("Generation health on golden prompts\n(distinct: higher is better; others: lower)", fontsize=11)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color=_COLOURS["base"], label="base"),
            Patch(color=_PASS, label="candidate, gate passed"),
            Patch(color=_FAIL, label="candidate, gate failed"),
        ],
        frameon=False, fontsize=8.5, loc="upper right",
    )
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _despine(ax)


def _label(metric: str) -> str:
    m = re.fullmatch(r"(hr|ndcg)_at_(\d+)", metric)
    if m:
        return f"{m.group(1).upper()}@{m.group(2)}"
    return {
        "mrr": "MRR",
        "distinct_1": "distinct-1",
        "distinct_2": "distinct-2",
        "repeated_4gram_rate": "repeated\n4-grams",
        "empty_rate": "empty",
        "valid_item_rate": "valid-item rate",
        "exact_title_rate": "exact-title rate",
    }.get(metric, metric)


def _error_bars(values: Any, intervals: Sequence[Sequence[float] | None]) -> tuple[list[float], list[float]]:
    lo, hi = [], []
    for v, iv in zip(values, intervals):
        if iv is None or not math.isfinite(v) or not all(_finite(e) for e in iv):
            lo.append(0.0)
            hi.append(0.0)
        else:
            lo.append(max(v - float(iv[0]), 0.0))
            hi.append(max(float(iv[1]) - v, 0.0))
    return lo, hi


def _despine(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


# --------------------------------------------------------------------------- files


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


# --------------------------------------------------------------------------- helpers


def _finite(x: Any) -> bool:
    if x is None or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(x: Any) -> float:
    return float(x) if _finite(x) else math.nan


def _nan_if_none(x: Any) -> Any:
    return math.nan if x is None else x


def _jsonable(x: Any) -> Any:
    """Plain JSON types: non-finite floats -> None, numpy scalars/arrays -> numbers/lists, tuples -> lists."""
    if isinstance(x, GateResult):
        return x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    tolist = getattr(x, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return _jsonable(tolist())
    if isinstance(x, Path):
        return str(x)
    return str(x)
