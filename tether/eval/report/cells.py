"""How one value reads in the report: numbers, percentages, thresholds, intervals, lineage values.

Shared by the Markdown report, the terminal table and the chart, so a number reads the same in all three.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from typing import Any

from tether.eval.gates import GateResult
from tether.io import jsonable


def fmt(x: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; ``—`` for None, ``NaN``/``inf`` spelled out; other values as text."""
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


def pct(x: float, sign: bool = False) -> str:
    """A fraction as a percentage (``+4.00%`` with ``sign``); a non-finite value as :func:`fmt` writes it."""
    if x is None or not math.isfinite(float(x)):
        return fmt(x)
    return f"{float(x):+.2%}" if sign else f"{float(x):.2%}"


def fmt_threshold(g: GateResult) -> str:
    """A gate's threshold: ``[lo, hi]``, ``max 5.00%`` (drift), ``max 0.1 nats/token`` (KL), else the number."""
    t = g.threshold
    if isinstance(t, tuple):
        return f"[{fmt(t[0])}, {fmt(t[1])}]"
    if g.gate == "perplexity_drift":
        return f"max {pct(t)}"
    if g.gate == "golden_kl":
        return f"max {fmt(t)} nats/token"
    return fmt(t)


def fmt_interval(g: GateResult) -> str:
    """A gate's interval as ``[lo, hi]`` (percentages for drift), ``—`` without one."""
    if g.interval is None:
        return "—"
    if g.gate == "perplexity_drift":
        return f"[{pct(g.interval[0], sign=True)}, {pct(g.interval[1], sign=True)}]"
    return f"[{fmt(g.interval[0])}, {fmt(g.interval[1])}]"


def drift_of(g: GateResult) -> str:
    """A drift gate's drift (candidate / reference - 1) as a signed percentage, ``—`` when not computable."""
    if g.candidate is None or g.reference is None or not (finite(g.candidate) and finite(g.reference)) or not g.reference:
        return "—"
    return pct(float(g.candidate) / float(g.reference) - 1.0, sign=True)


def fmt_value(value: Any, interval: Sequence[float] | None) -> str:
    """A metric's value with its interval in brackets: ``0.21 [0.18, 0.24]``."""
    s = fmt(value)
    if interval is not None and len(interval) == 2:
        s += f" [{fmt(interval[0], 3)}, {fmt(interval[1], 3)}]"
    return s


def fmt_lineage(v: Any) -> str:
    """A lineage value as inline code: structures as compact JSON, empty strings and numbers as :func:`fmt`."""
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(jsonable(v), ensure_ascii=False) + "`"
    return f"`{v}`" if isinstance(v, str) and v else fmt(v)


def finite(x: Any) -> bool:
    """A finite number (not a bool, not None, not text that is no number)."""
    if x is None or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def num(x: Any) -> float:
    """``float(x)`` when :func:`finite`, else NaN."""
    return float(x) if finite(x) else math.nan
