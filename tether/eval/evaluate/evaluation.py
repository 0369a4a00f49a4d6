"""The :class:`Evaluation`: candidate, base and popularity under one protocol, with intervals; saved as JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tether.eval import metrics
from tether.io import atomic_write_text, jsonable


@dataclass
class Evaluation:
    """Candidate, base and popularity evaluated with one protocol, plus intervals and timings.

    Attributes:
        systems: system (``candidate``, ``base``, ``popularity``) -> flat metrics: ranking and
            diversity, the other scoring rule's ranking metrics (``ndcg_at_10_sum``), and for the
            models ``valid_item_rate``, ``exact_title_rate``, ``perplexity.<source>`` per drift-panel
            source and generation health.
        intervals: system -> metric -> ``(low, high)`` bootstrap interval.
        comparisons: ``candidate_vs_popularity`` / ``candidate_vs_base`` (``metric``, ``diff``,
            paired-bootstrap ``interval`` of candidate - reference over users), ``drift_panel``
            (per source: :func:`tether.eval.panel.drift_table`), ``perplexity_drift`` (the
            worst source's entry, with its ``source``) and ``golden_kl`` (``kl`` in nats per token,
            ``interval`` over prompts).
        slices: system -> slice -> ranking metrics.
        per_user: system -> metric -> one value per user (aligned with ``user_ids``).
        user_ids: the evaluated users.
        perplexity: system -> drift-panel source -> measurement (``per_doc``, ``documents``, ``ppl``).
        health: system -> generation-health metrics on the golden prompts.
        generations: side-by-side rows (``id``, ``category``, ``prompt``, ``base``, ``candidate``).
        valid_item_generations: system -> free generations with their targets.
        timings: seconds per part (``load_inputs``, ``load_model``, per model ``scoring``,
            ``valid_items``, ``panel``, ``generation``, ``popularity``, ``bootstrap``, ``total``).
        base_cache: ``key``, ``path``, ``hit``.
        protocol: the evaluation settings.
        info: adapter, base model, its hash, device, dtype, data hashes.
        ci_level: confidence level of every interval.
        bootstrap_samples: resamples per interval.
        seed: bootstrap seed.
    """

    systems: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    slices: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    per_user: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    user_ids: list[str] = field(default_factory=list)
    perplexity: dict[str, dict[str, Any]] = field(default_factory=dict)
    health: dict[str, dict[str, float]] = field(default_factory=dict)
    generations: list[dict[str, str]] = field(default_factory=list)
    valid_item_generations: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    base_cache: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    ci_level: float = 0.95
    bootstrap_samples: int = 1000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-safe dict (non-finite numbers as None, tuples as lists)."""
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evaluation:
        """Rebuild from :meth:`to_dict` output (None in numbers comes back as NaN)."""
        kw = dict(d)
        kw["systems"] = {s: {k: metrics.as_float(v) for k, v in m.items()} for s, m in d.get("systems", {}).items()}
        kw["intervals"] = {
            s: {k: (metrics.as_float(iv[0]), metrics.as_float(iv[1])) for k, iv in m.items()} for s, m in d.get("intervals", {}).items()
        }
        def with_interval(c: Mapping[str, Any]) -> dict[str, Any]:
            iv = c.get("interval")
            return {**c, "interval": None if iv is None else (metrics.as_float(iv[0]), metrics.as_float(iv[1]))}

        # drift_panel holds one comparison per source; every other key is one comparison.
        kw["comparisons"] = {
            name: {src: with_interval(e) for src, e in c.items()} if name == "drift_panel" else with_interval(c)
            for name, c in d.get("comparisons", {}).items()
        }
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        """Write the evaluation as JSON (strict: no NaN); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Evaluation:
        """Read an evaluation written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def metric(self, system: str, name: str) -> float:
        """One metric of one system (NaN when absent)."""
        return float(self.systems.get(system, {}).get(name, math.nan))
