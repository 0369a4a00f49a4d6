"""The rules every gate shares: a non-finite input fails, a value at its threshold passes, interval shape.

* a NaN or infinite input (value, reference or threshold) fails, and the reason says which
  (:func:`not_computable`); a broken evaluation must never promote an adapter;
* a value exactly at its threshold passes; "exactly" forgives float rounding (relative 1e-9,
  :func:`le`), so ``110 / 100 - 1`` passes a ``0.1`` drift limit;
* an interval is ``(low, high)`` (:func:`as_interval`), shown as ``, CI [lo, hi]`` (:func:`fmt_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tether.eval.metrics import as_float

_REL_TOL = 1e-9
_ABS_TOL = 1e-12


def not_computable(what: str, values: Mapping[str, float]) -> str | None:
    """The failure reason when any of ``values`` is non-finite, else None.

    Args:
        what: the quantity the gate would compute (``perplexity drift``, ``ndcg_at_10 vs base``).
        values: input name -> value (already a float, NaN for a missing one).

    Returns:
        ``"<what> not computable: <name> is nan, ...; a non-finite input never passes"`` or None.
    """
    bad = ", ".join(f"{name} is {v}" for name, v in values.items() if not math.isfinite(v))
    return f"{what} not computable: {bad}; a non-finite input never passes" if bad else None


def le(a: float, b: float) -> bool:
    """``a <= b`` forgiving float rounding, so a value exactly at its threshold passes."""
    return a <= b or math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)


def as_interval(iv: Sequence[float] | None) -> tuple[float, float] | None:
    """``(low, high)`` as floats (NaN for a non-number), or None.

    Raises:
        ValueError: ``iv`` does not have two entries.
    """
    if iv is None:
        return None
    if len(iv) != 2:
        raise ValueError(f"interval must be (low, high), got {iv!r}")
    return (as_float(iv[0]), as_float(iv[1]))


def fmt_interval(iv: tuple[float, float] | None, pct: bool = False) -> str:
    """``, CI [lo, hi]`` for a reason (percentages with ``pct``), or "" without an interval."""
    if iv is None:
        return ""
    if pct:
        return f", CI [{iv[0]:+.2%}, {iv[1]:+.2%}]"
    return f", CI [{iv[0]:+.4g}, {iv[1]:+.4g}]"


def verdict_word(passed: bool) -> str:
    """``pass`` or ``FAIL``, the last word of every reason."""
    return "pass" if passed else "FAIL"
