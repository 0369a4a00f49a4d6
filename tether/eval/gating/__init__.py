"""The gate stage: turn an :class:`~tether.eval.evaluate.Evaluation` into verdicts and a report.

Orchestration only: the verdicts come from the pure gate functions of :mod:`tether.eval.gates`,
the files from :func:`tether.eval.report.write_report`.

The gates, in the order they are checked, are the declared list
:data:`~tether.eval.gating.definitions.GATES` (name, metric(s), threshold key, blocking or
advisory, description, check); today every one is blocking:

1. ``perplexity_drift``: one check per drift-panel source (``eval.drift_panel``): candidate vs
   base perplexity on that source, limit the source's ``max_drift`` (else ``gates.max_ppl_drift``),
   with the bootstrap interval of the drift over documents / samples;
2. ``golden_kl``: the candidate's NLL on the base's greedy answers to the golden prompts minus the
   base's (nats per token) at most ``gates.max_golden_kl``;
3. ``generation_health``: one check per metric of ``gates.health_tolerances`` on the golden
   prompts, candidate vs base;
4. ``beats_popularity`` and ``beats_base``: ``gates.primary_metric`` at least
   ``min_margin_vs_*`` above the reference, with the paired-bootstrap interval over users;
5. ``floor``: the valid-item rate at least ``gates.valid_item_rate_floor``;
6. ``beats_champion``: only when the current champion's metrics are given. With the candidate's
   protocol (:func:`protocol_settings`, as :func:`run_gates` always passes it), the numbers are
   compared only when the champion was measured under the same protocol (equal
   :func:`protocol_fingerprint`); otherwise the gate fails without comparing them, and its
   reason names the settings that differ (:func:`champion_protocol_mismatch`).

Modules: :mod:`~tether.eval.gating.definitions` (the list and each gate's check),
:mod:`~tether.eval.gating.inputs` (what a check reads), :mod:`~tether.eval.gating.run`
(:func:`build_gates`, :func:`run_gates`), :mod:`~tether.eval.gating.assemble` (:func:`build_report`),
:mod:`~tether.eval.gating.protocol` (the protocol fingerprint), :mod:`~tether.eval.gating.mlflow_log`.
"""

from __future__ import annotations

from tether.eval.gating.assemble import build_report
from tether.eval.gating.definitions import GATES, GateSpec
from tether.eval.gating.inputs import GateInputs
from tether.eval.gating.mlflow_log import log_to_mlflow, mlflow_metrics
from tether.eval.gating.protocol import (
    PROTOCOL_HASH_KEY,
    PROTOCOL_KEY,
    PROTOCOL_VERSION,
    RANKING_PROTOCOL_KEYS,
    champion_protocol_mismatch,
    protocol_differences,
    protocol_fingerprint,
    protocol_hash,
    protocol_settings,
)
from tether.eval.gating.run import build_gates, run_gates

__all__ = [
    "GATES",
    "PROTOCOL_HASH_KEY",
    "PROTOCOL_KEY",
    "PROTOCOL_VERSION",
    "RANKING_PROTOCOL_KEYS",
    "GateInputs",
    "GateSpec",
    "build_gates",
    "build_report",
    "champion_protocol_mismatch",
    "log_to_mlflow",
    "mlflow_metrics",
    "protocol_differences",
    "protocol_fingerprint",
    "protocol_hash",
    "protocol_settings",
    "run_gates",
]
