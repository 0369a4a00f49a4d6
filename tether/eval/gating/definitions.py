"""The gates the gate stage checks: one declared list, :data:`GATES`, in the order they are checked.

Each row (:class:`GateSpec`) names a gate, the metric(s) it judges, the key of its threshold in
the ``gates`` config section, whether a failure blocks promotion or is advisory, what it means,
and its check: a small function that reads the numbers out of the evaluation
(:class:`~tether.eval.gating.inputs.GateInputs`) and calls the pure gate of
:mod:`tether.eval.gates`. :func:`~tether.eval.gating.build_gates` runs the rows in order, so adding
a gate is one row here (and its check, beside it).

Limits are read at gate time, so changing a threshold re-judges a saved evaluation without
measuring it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.eval.gates import (
    GateResult,
    beats_reference_gate,
    floor_gate,
    generation_health_gate,
    kl_gate,
    perplexity_drift_gate,
)
from tether.eval.gating.inputs import GateInputs, champion_interval, champion_value, paired_interval
from tether.eval.gating.protocol import champion_protocol_mismatch

# The ``metrics`` of a row whose metric is ``gates.primary_metric``.
PRIMARY = "<gates.primary_metric>"


@dataclass(frozen=True)
class GateSpec:
    """One gate of :data:`GATES`.

    Attributes:
        name: the gate's name, as its results carry it (:attr:`GateResult.gate`).
        metrics: the metric it judges, by name (``valid_item_rate``), or in ``<...>`` where the
            names come from (:data:`PRIMARY`, each drift-panel source, each health tolerance).
        threshold: the key of its threshold in the ``gates`` config section (:class:`tether.config.GateConfig`).
        blocking: True = a failure blocks promotion; False = advisory (recorded, never blocking).
        description: what it checks, for a reviewer.
        check: ``check(spec, inputs) -> [GateResult, ...]``: its results (none when it does not apply).
    """

    name: str
    metrics: str
    threshold: str
    blocking: bool
    description: str
    check: Callable[[GateSpec, GateInputs], list[GateResult]]

    def limit(self, inputs: GateInputs) -> Any:
        """The configured threshold: ``gates.<threshold>``."""
        return getattr(inputs.cfg, self.threshold)


def _drift(spec: GateSpec, x: GateInputs) -> list[GateResult]:
    panel = x.evaluation.comparisons.get("drift_panel", {})
    if not panel:
        return [GateResult(spec.name, "perplexity", None, None, spec.limit(x), None, False,
                           "no drift-panel source was measured: forgetting cannot be ruled out, FAIL", spec.blocking)]
    results = []
    for source, entry in panel.items():
        kl_note = f", KL(base || candidate) {entry['nll_diff']:+.4f} nats/token" if entry.get("kind") == "self_samples" else ""
        results.append(
            perplexity_drift_gate(
                x.evaluation.metric("candidate", f"perplexity.{source}"),
                x.evaluation.metric("base", f"perplexity.{source}"),
                x.drift_limits.get(source, spec.limit(x)),
                interval=entry.get("interval"),
                blocking=spec.blocking,
                metric=source,
                note=kl_note,
            )
        )
    return results


def _golden_kl(spec: GateSpec, x: GateInputs) -> list[GateResult]:
    golden = x.evaluation.comparisons.get("golden_kl")
    if golden is None:
        return []
    return [kl_gate(golden["kl"], spec.limit(x), golden.get("interval"), metric=spec.metrics, blocking=spec.blocking)]


def _health(spec: GateSpec, x: GateInputs) -> list[GateResult]:
    health = x.evaluation.health
    return generation_health_gate(health.get("candidate", {}), health.get("base", {}), spec.limit(x),
                                  blocking=spec.blocking)


def _beats_reference(spec: GateSpec, x: GateInputs) -> list[GateResult]:
    """``beats_<reference>``: the reference is an evaluated system, named by the gate."""
    reference, primary = spec.name.removeprefix("beats_"), x.primary
    return [
        beats_reference_gate(
            primary,
            x.evaluation.metric("candidate", primary),
            x.evaluation.metric(reference, primary),
            reference,
            spec.limit(x),
            interval=paired_interval(x.evaluation, reference, primary),
            blocking=spec.blocking,
            decide_on=x.cfg.decide_on,
        )
    ]


def _floor(spec: GateSpec, x: GateInputs) -> list[GateResult]:
    metric = spec.metrics
    return [
        floor_gate(
            metric,
            x.evaluation.metric("candidate", metric),
            spec.limit(x),
            interval=x.evaluation.intervals.get("candidate", {}).get(metric),
            blocking=spec.blocking,
        )
    ]


def _beats_champion(spec: GateSpec, x: GateInputs) -> list[GateResult]:
    """Only with a champion; its numbers are compared only under the candidate's protocol (when given)."""
    if x.champion is None:
        return []
    primary = x.primary
    candidate = x.evaluation.metric("candidate", primary)
    mismatch = None if x.protocol is None else champion_protocol_mismatch(x.champion, x.protocol, primary)
    if mismatch is not None:
        return [GateResult(spec.name, primary, candidate, None, float(spec.limit(x)), None, False, mismatch, spec.blocking)]
    return [
        beats_reference_gate(
            primary,
            candidate,
            champion_value(x.champion, primary),
            "champion",
            spec.limit(x),
            interval=champion_interval(x.evaluation, x.champion, primary),
            blocking=spec.blocking,
            decide_on=x.cfg.decide_on,
        )
    ]


GATES: tuple[GateSpec, ...] = (
    GateSpec(
        "perplexity_drift", "<each drift-panel source>", "max_ppl_drift", True,
        "candidate vs base perplexity on each source of eval.drift_panel (identical tokens), at most the "
        "source's max_drift (else gates.max_ppl_drift), with the bootstrap interval of the drift over "
        "documents / samples; no source measured fails (forgetting cannot be ruled out)",
        _drift,
    ),
    GateSpec(
        "golden_kl", "golden_prompts", "max_golden_kl", True,
        "the candidate's NLL on the base's greedy answers to the golden prompts minus the base's (nats per "
        "token, ~KL(base || candidate)): fluent answers that lost their meaning; checked when measured",
        _golden_kl,
    ),
    GateSpec(
        "generation_health", "<each key of gates.health_tolerances>", "health_tolerances", True,
        "free generations on the golden prompts, candidate vs base: distinct-n, repetition, empty rate, "
        "length ratio, each within its tolerance",
        _health,
    ),
    GateSpec(
        "beats_popularity", PRIMARY, "min_margin_vs_popularity", True,
        "the primary metric at least the margin above the popularity baseline (paired bootstrap over users; "
        "gates.decide_on: point estimate or CI lower bound)",
        _beats_reference,
    ),
    GateSpec(
        "beats_base", PRIMARY, "min_margin_vs_base", True,
        "the primary metric at least the margin above the zero-shot base model (paired bootstrap over users; "
        "gates.decide_on: point estimate or CI lower bound)",
        _beats_reference,
    ),
    GateSpec(
        "floor", "valid_item_rate", "valid_item_rate_floor", True,
        "the share of free generations that name a catalog item at least the floor",
        _floor,
    ),
    GateSpec(
        "beats_champion", PRIMARY, "min_margin_vs_champion", True,
        "only with a champion: the primary metric at least the margin above the champion's; compared only "
        "when the champion was measured under the candidate's protocol (equal fingerprints), else it fails "
        "without comparing and its reason names the settings that differ",
        _beats_champion,
    ),
)
