"""Gates: pure functions that turn evaluation numbers into promotion verdicts.

Every gate returns a :class:`GateResult` that records what was compared, against what, under
which threshold, with which confidence interval, and why it passed or failed. Thresholds come
in as arguments; nothing here reads config, so the same numbers always give the same verdict.
Which gates the gate stage checks, on which numbers and thresholds, is the declared list
:data:`tether.eval.gating.definitions.GATES`.

Rules shared by every gate (:mod:`~tether.eval.gates.rules`):
    * a NaN or infinite input (value, reference or threshold) fails, and the reason says which;
      a broken evaluation must never promote an adapter;
    * a value exactly at its threshold passes; "exactly" forgives float rounding
      (relative 1e-9), so ``110 / 100 - 1`` passes a ``0.1`` drift limit;
    * verdicts use the point estimates; the interval is recorded for the reviewer, in the
      units of the quantity compared with the threshold (see :class:`GateResult`).

Modules: :mod:`~tether.eval.gates.result` (:class:`GateResult`, :func:`summarize`),
:mod:`~tether.eval.gates.checks` (drift, KL, beats a reference, floor),
:mod:`~tether.eval.gates.health` (generation health), :mod:`~tether.eval.gates.rules`.
"""

from __future__ import annotations

from tether.eval.gates.checks import beats_reference_gate, floor_gate, kl_gate, perplexity_drift_gate
from tether.eval.gates.health import (
    HEALTH_METRICS,
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    RANGE_METRICS,
    generation_health_gate,
)
from tether.eval.gates.result import GateResult, summarize

__all__ = [
    "HEALTH_METRICS",
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "RANGE_METRICS",
    "GateResult",
    "beats_reference_gate",
    "floor_gate",
    "generation_health_gate",
    "kl_gate",
    "perplexity_drift_gate",
    "summarize",
]
