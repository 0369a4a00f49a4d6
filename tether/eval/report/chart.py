"""The gate report's one-glance chart (:func:`plot`): ranking quality, drift by source, generation health.

Each panel is drawn only when its numbers exist; bars are coloured by system
(:data:`tether.eval.systems.COLOURS`) or by the verdict of the gate that judged them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether.eval.gates import GateResult
from tether.eval.report.cells import finite, fmt, num
from tether.eval.report.model import GateReport
from tether.eval.report.tables import ordered_systems
from tether.eval.systems import COLOURS, HEALTH_CHART_METRICS, OTHER_COLOUR, metric_label, ranking_cutoff

_PASS, _FAIL, _ADVISORY = "#2e7d32", "#c62828", "#ef6c00"


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
        return f"{metric_label(g.metric)} > {g.gate.removeprefix('beats_')} {mark}"
    return f"{metric_label(g.metric)} {fmt(g.candidate, 3)} ≥ {fmt(g.threshold, 3)} {mark}"


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
        ks = sorted({cut[1] for key in keys if (cut := ranking_cutoff(key)) and cut[0] == "ndcg"})
        k = 10 if 10 in ks else (ks[0] if ks else None)
    names = [n for n in (f"ndcg_at_{k}", f"hr_at_{k}", "mrr") if k is not None or n == "mrr"]
    return [n for n in names if n in keys and _any_finite(report, n)]


def _any_finite(report: GateReport, metric: str) -> bool:
    return any(finite(m.get(metric)) for m in report.metrics.values())


def _plot_ranking(ax: Any, report: GateReport, names: list[str]) -> None:
    import numpy as np

    systems = [s for s in ordered_systems(report.metrics) if any(finite(report.metrics[s].get(n)) for n in names)]
    width = 0.8 / max(len(systems), 1)
    x = np.arange(len(names))
    top = 0.0
    for j, system in enumerate(systems):
        values = np.array([num(report.metrics[system].get(n)) for n in names])
        ivs = [report.intervals.get(system, {}).get(n) for n in names]
        lo, hi = _error_bars(values, ivs)
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(
            pos, np.nan_to_num(values), width * 0.92, color=COLOURS.get(system, OTHER_COLOUR), label=system,
            yerr=[lo, hi] if any(iv is not None for iv in ivs) else None,
            capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333333"},
        )
        for p, v, h in zip(pos, values, hi):
            if math.isfinite(v):
                ax.text(p, v + h, f"{v:.3f}", ha="center", va="bottom", fontsize=7.5, color="#333333")
                top = max(top, v + h)
            else:
                ax.text(p, 0, "n/a", ha="center", va="bottom", fontsize=7.5, color="#999999")
    ax.set_xticks(x, [metric_label(n) for n in names])
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
        "Recommendation quality (higher is better)" + (f"\n{int(n_users)} test users" if finite(n_users) else ""),
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
    gates = [g for g in report.gates if g.gate == "perplexity_drift" and finite(g.candidate) and finite(g.reference)
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
        if g.interval is not None and all(finite(v) for v in g.interval):
            xerr = [[max(drift - g.interval[0], 0.0)], [max(g.interval[1] - drift, 0.0)]]
            lo_all.append(g.interval[0])
            hi_all.append(g.interval[1])
        ax.barh([yi], [100 * drift], 0.6, color=colour,
                xerr=None if xerr is None else [[100 * xerr[0][0]], [100 * xerr[1][0]]],
                capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333333"})
        lo_all.append(drift)
        hi_all.append(drift)
        if finite(g.threshold):
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


def _health_numbers(report: GateReport) -> list[str]:
    base, cand = report.metrics.get("base", {}), report.metrics.get("candidate", {})
    return [m for m in HEALTH_CHART_METRICS if finite(base.get(m)) or finite(cand.get(m))]


def _plot_health(ax: Any, report: GateReport, names: list[str]) -> None:
    import numpy as np

    base = np.array([num(report.metrics.get("base", {}).get(n)) for n in names])
    cand = np.array([num(report.metrics.get("candidate", {}).get(n)) for n in names])
    verdicts = {g.metric: g for g in report.gates if g.gate == "generation_health"}
    x = np.arange(len(names))
    ax.bar(x - 0.2, np.nan_to_num(base), 0.38, color=COLOURS["base"], label="base")
    colours = [
        COLOURS["candidate"] if n not in verdicts
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
    ax.set_xticks(x, [metric_label(n) for n in names])
    ax.set_ylim(0, 1.15)
    ax.set_title("Generation health on golden prompts\n(distinct: higher is better; others: lower)", fontsize=11)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color=COLOURS["base"], label="base"),
            Patch(color=_PASS, label="candidate, gate passed"),
            Patch(color=_FAIL, label="candidate, gate failed"),
        ],
        frameon=False, fontsize=8.5, loc="upper right",
    )
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _despine(ax)


def _error_bars(values: Any, intervals: Sequence[Sequence[float] | None]) -> tuple[list[float], list[float]]:
    lo, hi = [], []
    for v, iv in zip(values, intervals):
        if iv is None or not math.isfinite(v) or not all(finite(e) for e in iv):
            lo.append(0.0)
            hi.append(0.0)
        else:
            lo.append(max(v - float(iv[0]), 0.0))
            hi.append(max(float(iv[1]) - v, 0.0))
    return lo, hi


def _despine(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
