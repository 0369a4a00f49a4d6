"""The gate report itself (:class:`GateReport`) and its strict-JSON form (:func:`to_json`, :func:`from_json`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.eval.gates import GateResult, summarize
from tether.io import jsonable

REPORT_FORMAT = 1


@dataclass
class GateReport:
    """Everything the gate stage decided, and the numbers it decided on.

    Attributes:
        gates: the verdicts, in the order they were checked.
        metrics: system -> metric -> value, e.g. ``{"candidate": {"ndcg_at_10": 0.21, ...},
            "base": {...}, "popularity": {...}}``. Generation and perplexity metrics may sit in
            the same dicts (see :data:`tether.eval.systems.GENERATION_METRICS`).
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
        return jsonable(
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


def to_json(report: GateReport, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259): NaN and infinities become ``null``; numpy values become numbers."""
    return json.dumps(report.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


def from_json(text: str) -> GateReport:
    """Read a report written by :func:`to_json`."""
    return GateReport.from_dict(json.loads(text))


def _nan_if_none(x: Any) -> Any:
    return math.nan if x is None else x
