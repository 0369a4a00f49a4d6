"""The gate report of one evaluation: :func:`build_report` puts the verdicts beside the numbers they judged."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tether.eval.gates import GateResult
from tether.eval.gating.protocol import PROTOCOL_HASH_KEY, RANKING_PROTOCOL_KEYS, protocol_fingerprint
from tether.eval.report import GateReport

if TYPE_CHECKING:
    from tether.eval.evaluate import Evaluation


def build_report(
    evaluation: Evaluation,
    gates: list[GateResult],
    lineage: Mapping[str, Any],
    *,
    champion: Mapping[str, Any] | None = None,
    primary_metric: str | None = None,
    selection: Mapping[str, Any] | None = None,
) -> GateReport:
    """The gate report: verdicts, metrics per system with intervals, generations, lineage, selection.

    Args:
        evaluation: the evaluation the gates judged.
        gates: from :func:`~tether.eval.gating.build_gates`.
        lineage: git commit, data hash, config hash, base-model hash... (shown as given); the
            evaluation's adapter, base model, protocol fingerprint (``eval_protocol_hash``),
            base-cache hit and timings are added.
        champion: the champion's metrics (shown as the ``champion`` system).
        primary_metric: its value per slice is added as ``<slice>.<metric>`` (plus the slice size).
        selection: guarded selection's result (``TrainResult.selection``), shown as its own section.

    Returns:
        The :class:`GateReport`.
    """
    systems: dict[str, dict[str, float]] = {s: dict(m) for s, m in evaluation.systems.items()}
    if primary_metric:
        for system, slices in evaluation.slices.items():
            for name, m in slices.items():
                systems.setdefault(system, {})[f"{name}.count"] = m.get("count", math.nan)
                systems[system][f"{name}.{primary_metric}"] = m.get(primary_metric, math.nan)
    if champion is not None:
        systems["champion"] = {
            k: float(v) for k, v in champion.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    intervals = {s: {k: tuple(v) for k, v in m.items()} for s, m in evaluation.intervals.items()}
    info = dict(evaluation.info)
    full_lineage: dict[str, Any] = dict(lineage)
    full_lineage.setdefault("adapter_dir", info.get("adapter_dir"))
    full_lineage.setdefault("base_model", info.get("base_model"))
    full_lineage.setdefault("base_model_hash", info.get("base_model_hash"))
    full_lineage["eval_users"] = len(evaluation.user_ids)
    full_lineage["eval_protocol"] = {k: evaluation.protocol.get(k) for k in RANKING_PROTOCOL_KEYS}
    full_lineage[PROTOCOL_HASH_KEY] = protocol_fingerprint(evaluation, lineage)
    full_lineage["perplexity_drift"] = {k: v.get("drift") for k, v in evaluation.comparisons.get("drift_panel", {}).items()}
    full_lineage["base_cache_hit"] = bool(evaluation.base_cache.get("hit"))
    full_lineage["eval_seconds"] = timing_summary(evaluation.timings)
    return GateReport(
        gates=gates,
        metrics=systems,
        intervals=intervals,
        generations=list(evaluation.generations),
        lineage=full_lineage,
        ci_level=evaluation.ci_level,
        selection=dict(selection) if selection else None,
    )


def timing_summary(timings: Mapping[str, Any]) -> dict[str, float]:
    """The evaluation's timings, flat: ``{"candidate.scoring": 1.5, "total": 4.0}`` (seconds, 2 decimals; flags dropped)."""
    out: dict[str, float] = {}
    for key, value in timings.items():
        if isinstance(value, Mapping):
            for part, seconds in value.items():
                if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                    out[f"{key}.{part}"] = round(float(seconds), 2)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = round(float(value), 2)
    return out
