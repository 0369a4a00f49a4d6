"""The gate stage: turn an :class:`~tether.eval.evaluate.Evaluation` into verdicts and a report.

Orchestration only: the verdicts come from the pure gate functions of
:mod:`tether.eval.gates`, the files from :func:`tether.eval.report.write_report`.

Gates, in the order they are checked (every one blocking):

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tether.eval import metrics
from tether.eval.evaluate import Evaluation
from tether.eval.gates import (
    GateResult,
    beats_reference_gate,
    floor_gate,
    generation_health_gate,
    kl_gate,
    perplexity_drift_gate,
)
from tether.eval.report import GateReport, write_report

if TYPE_CHECKING:
    from tether.config import GateConfig, TetherConfig

logger = logging.getLogger(__name__)

# Bump when the scoring or ranking-metric code changes what a number means (another score of a
# title, another candidate sampler): every champion measured before then stops being comparable.
PROTOCOL_VERSION = 1
# The ``evaluation.protocol`` settings that change a ranking number. Batch sizes, ``ks``,
# ``head_share`` and the perplexity / generation settings do not change NDCG, HR or MRR.
RANKING_PROTOCOL_KEYS = ("candidates", "n_negatives", "n_users", "score", "seed")
# Keys of the champion mapping (build_gates) and tag names of a registered version (tether.registry).
PROTOCOL_HASH_KEY = "eval_protocol_hash"
PROTOCOL_KEY = "eval_protocol"


# --------------------------------------------------------------------------- protocol fingerprint


def protocol_settings(evaluation: Evaluation, lineage: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that decides whether two ranking numbers (NDCG, HR, MRR) can be compared.

    The ranking settings of the evaluation protocol (:data:`RANKING_PROTOCOL_KEYS`;
    ``n_negatives`` is None with ``candidates: full``, where it plays no part), the processed
    test data the numbers were computed on (``evaluation.info["hashes"]["test_data"]``), the raw
    data version (``lineage["data_hash"]``, from ``data.dvc``), the base model's weights hash
    (the evaluation's, else the lineage's) and :data:`PROTOCOL_VERSION`.

    Args:
        evaluation: the evaluation (its ``protocol`` and ``info``).
        lineage: the run's lineage tags (:func:`tether.tracking.lineage_tags`).

    Returns:
        A flat, JSON-safe dict; :func:`protocol_hash` of it is the fingerprint.
    """
    protocol = evaluation.protocol or {}
    settings: dict[str, Any] = {k: protocol.get(k) for k in RANKING_PROTOCOL_KEYS}
    if settings["candidates"] == "full":
        settings["n_negatives"] = None
    info = evaluation.info or {}
    settings["test_data_sha256"] = (info.get("hashes") or {}).get("test_data")
    settings["data_hash"] = lineage.get("data_hash")
    settings["base_model_hash"] = info.get("base_model_hash") or lineage.get("base_model_hash")
    settings["protocol_version"] = PROTOCOL_VERSION
    return settings


def protocol_hash(settings: Mapping[str, Any]) -> str:
    """sha256 of the settings as sorted, compact JSON: the same settings give the same hash, whatever their order."""
    text = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def protocol_fingerprint(evaluation: Evaluation, lineage: Mapping[str, Any]) -> str:
    """The protocol fingerprint of an evaluation: :func:`protocol_hash` of :func:`protocol_settings`.

    Two evaluations with the same fingerprint measured their ranking numbers the same way
    (same candidates, users, score rule, seed, test data and base model), so their numbers compare.
    It is recorded on every registered version as the ``eval_protocol_hash`` tag and in the gate
    report's lineage.
    """
    return protocol_hash(protocol_settings(evaluation, lineage))


def _show(value: Any) -> str:
    if value is None:
        return "none"
    text = str(value)
    # Content hashes: a prefix is enough to tell them apart.
    return text[:12] if len(text) > 16 and all(c in "0123456789abcdef." for c in text.lower()) else text


def protocol_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The settings that differ, as ``"n_negatives 19 -> 99"`` (hashes shortened), sorted by name."""
    keys = sorted(set(before) | set(after))
    return [f"{k} {_show(before.get(k))} -> {_show(after.get(k))}" for k in keys if before.get(k) != after.get(k)]


def champion_protocol_mismatch(
    champion: Mapping[str, Any],
    candidate_protocol: Mapping[str, Any] | None,
    metric: str,
    *,
    candidate_hash: str | None = None,
    candidate_version: str | None = None,
) -> str | None:
    """Why the champion's numbers cannot be compared with the candidate's, or None when they can.

    They can only when both were measured under the same protocol: equal fingerprints. A
    champion that records none (a version registered before fingerprints were recorded) has an
    unknown protocol and is not comparable either: the check fails closed.

    Args:
        champion: the champion as :func:`build_gates` takes it, with ``eval_protocol_hash``
            (None or absent = unknown), ``eval_protocol`` (its settings, to name the differences;
            optional) and ``name`` or ``version``.
        candidate_protocol: the candidate's :func:`protocol_settings` (None = not known).
        metric: the metric that would be compared (named in the reason).
        candidate_hash: the candidate's fingerprint when already known (a registry tag);
            default :func:`protocol_hash` of ``candidate_protocol``.
        candidate_version: the candidate's registry version, for the manual-promotion command.

    Returns:
        None when comparable, else one sentence: what differs and what to do.
    """
    champion_hash = champion.get(PROTOCOL_HASH_KEY) or None
    if candidate_hash is None and candidate_protocol is not None:
        candidate_hash = protocol_hash(candidate_protocol)
    if champion_hash is not None and champion_hash == candidate_hash:
        return None
    name = champion.get("name") or (f"v{champion['version']}" if champion.get("version") is not None else "")
    who = f"champion {name}".rstrip()
    if champion_hash is None:
        head = f"{who} records no evaluation protocol (unknown protocol: registered before {PROTOCOL_HASH_KEY} was recorded)"
    elif candidate_hash is None:
        head = f"the candidate records no evaluation protocol (unknown protocol), {who} has {champion_hash[:12]}"
    else:
        before, after = champion.get(PROTOCOL_KEY), candidate_protocol
        diffs = protocol_differences(before, after) if isinstance(before, Mapping) and isinstance(after, Mapping) else []
        what = ", ".join(diffs) or "the champion's settings were not recorded"
        head = f"{who} was evaluated under a different protocol (hash {champion_hash[:12]} vs {candidate_hash[:12]}: {what})"
    return (
        f"{head}; its {metric} is not comparable with the candidate's, so the numbers were not compared: "
        "evaluate both under one protocol (`tether evaluate --adapter DIR` on the champion's adapter) and, "
        f"after a review, promote by hand with `tether promote {candidate_version or 'VERSION'} --reason \"...\"`"
    )


# --------------------------------------------------------------------------- gates


def _interval(iv: Any) -> tuple[float, float] | None:
    if iv is None:
        return None
    return (float("nan") if iv[0] is None else float(iv[0]), float("nan") if iv[1] is None else float(iv[1]))


def _paired_interval(evaluation: Evaluation, reference: str, metric: str) -> tuple[float, float] | None:
    """candidate - reference CI: the stored one for the primary metric, else bootstrapped from per-user values."""
    stored = evaluation.comparisons.get(f"candidate_vs_{reference}")
    if stored is not None and stored.get("metric") == metric:
        return _interval(stored.get("interval"))
    a = evaluation.per_user.get("candidate", {}).get(metric)
    b = evaluation.per_user.get(reference, {}).get(metric)
    if a is None or b is None or len(a) != len(b) or not len(a):
        return None
    return metrics.paired_bootstrap_ci(
        a, b, n_boot=evaluation.bootstrap_samples, alpha=1.0 - evaluation.ci_level, seed=evaluation.seed
    )


def _champion_interval(evaluation: Evaluation, champion: Mapping[str, Any], metric: str) -> tuple[float, float] | None:
    """Paired CI vs the champion, only when it was evaluated on exactly the same users."""
    per_user = champion.get("per_user") or {}
    b = per_user.get(metric)
    a = evaluation.per_user.get("candidate", {}).get(metric)
    same_users = list(champion.get("user_ids") or []) == list(evaluation.user_ids)
    if a is None or b is None or len(a) != len(b) or not same_users or not len(a):
        return None
    return metrics.paired_bootstrap_ci(
        a, b, n_boot=evaluation.bootstrap_samples, alpha=1.0 - evaluation.ci_level, seed=evaluation.seed
    )


def _champion_value(champion: Mapping[str, Any], metric: str) -> float:
    """The champion's value of ``metric``: a flat key, or the ``candidate.<metric>`` name logged to MLflow."""
    for key in (metric, f"candidate.{metric}"):
        if key in champion and champion[key] is not None:
            return float(champion[key])
    return math.nan


def build_gates(
    evaluation: Evaluation,
    gates_cfg: GateConfig,
    champion: Mapping[str, Any] | None = None,
    *,
    protocol: Mapping[str, Any] | None = None,
    drift_limits: Mapping[str, float] | None = None,
) -> list[GateResult]:
    """Every promotion verdict for one evaluation (pure: same inputs, same verdicts).

    Args:
        evaluation: from :func:`tether.eval.evaluate.evaluate_run` (or :meth:`Evaluation.load`).
        gates_cfg: the ``gates`` config section.
        champion: the current champion's metrics, flat (``{"ndcg_at_10": 0.31, ...}``), e.g. the
            candidate metrics of its own evaluation, or its MLflow run metrics
            (``candidate.ndcg_at_10``, as :func:`log_to_mlflow` names them). Optional keys: ``per_user`` (metric -> values)
            with ``user_ids`` (a paired interval is computed only when the users are the same),
            ``name`` (shown in nothing but the caller's logs), ``eval_protocol_hash`` and
            ``eval_protocol`` (the protocol it was measured under). None = no champion yet: no gate.
        protocol: the candidate's :func:`protocol_settings`. Given, the champion is compared only
            when its ``eval_protocol_hash`` equals the candidate's fingerprint; otherwise (another
            protocol, or none recorded) ``beats_champion`` fails with the reason of
            :func:`champion_protocol_mismatch` and no numbers are compared. None = no check.
        drift_limits: drift-panel source -> its own limit (:func:`tether.eval.panel.panel_limits`);
            a source not named gets ``gates_cfg.max_ppl_drift``. Limits are read at gate time, so
            changing a threshold re-judges a saved evaluation without measuring it again.

    Returns:
        The gate results, in the order of the module docstring.

    Raises:
        ValueError: ``gates.primary_metric`` is not a metric of the evaluation (a config error
            that must not turn silently into a failed gate).
    """
    primary = gates_cfg.primary_metric
    cand = evaluation.systems.get("candidate", {})
    if primary not in cand:
        known = sorted(k for k in cand if k.startswith(("hr_at_", "ndcg_at_", "mrr")))
        raise ValueError(f"gates.primary_metric {primary!r} is not an evaluated metric; evaluated: {known}")

    results: list[GateResult] = []
    panel = evaluation.comparisons.get("drift_panel", {})
    if not panel:
        results.append(GateResult("perplexity_drift", "perplexity", None, None, gates_cfg.max_ppl_drift, None, False,
                                  "no drift-panel source was measured: forgetting cannot be ruled out, FAIL"))
    for source, entry in panel.items():
        kl_note = f", KL(base || candidate) {entry['nll_diff']:+.4f} nats/token" if entry.get("kind") == "self_samples" else ""
        results.append(
            perplexity_drift_gate(
                evaluation.metric("candidate", f"perplexity.{source}"),
                evaluation.metric("base", f"perplexity.{source}"),
                (drift_limits or {}).get(source, gates_cfg.max_ppl_drift),
                interval=_interval(entry.get("interval")),
                metric=source,
                note=kl_note,
            )
        )
    golden = evaluation.comparisons.get("golden_kl")
    if golden is not None:
        results.append(kl_gate(golden["kl"], gates_cfg.max_golden_kl, _interval(golden.get("interval"))))
    results += generation_health_gate(
        evaluation.health.get("candidate", {}), evaluation.health.get("base", {}), gates_cfg.health_tolerances
    )
    for reference, margin in (("popularity", gates_cfg.min_margin_vs_popularity), ("base", gates_cfg.min_margin_vs_base)):
        results.append(
            beats_reference_gate(
                primary,
                evaluation.metric("candidate", primary),
                evaluation.metric(reference, primary),
                reference,
                margin,
                interval=_paired_interval(evaluation, reference, primary),
                decide_on=gates_cfg.decide_on,
            )
        )
    vi_iv = evaluation.intervals.get("candidate", {}).get("valid_item_rate")
    results.append(
        floor_gate(
            "valid_item_rate",
            evaluation.metric("candidate", "valid_item_rate"),
            gates_cfg.valid_item_rate_floor,
            interval=_interval(vi_iv),
        )
    )
    mismatch = None
    if champion is not None and protocol is not None:
        mismatch = champion_protocol_mismatch(champion, protocol, primary)
    if mismatch is not None:
        results.append(
            GateResult(
                "beats_champion", primary, evaluation.metric("candidate", primary), None,
                float(gates_cfg.min_margin_vs_champion), None, False, mismatch,
            )
        )
    elif champion is not None:
        results.append(
            beats_reference_gate(
                primary,
                evaluation.metric("candidate", primary),
                _champion_value(champion, primary),
                "champion",
                gates_cfg.min_margin_vs_champion,
                interval=_champion_interval(evaluation, champion, primary),
                decide_on=gates_cfg.decide_on,
            )
        )
    for g in results:
        (logger.info if g.passed else logger.warning)("gate %s (%s): %s", g.gate, g.metric, g.reason)
    return results


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
        gates: from :func:`build_gates`.
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
    full_lineage["eval_seconds"] = _timing_summary(evaluation.timings)
    return GateReport(
        gates=gates,
        metrics=systems,
        intervals=intervals,
        generations=list(evaluation.generations),
        lineage=full_lineage,
        ci_level=evaluation.ci_level,
        selection=dict(selection) if selection else None,
    )


def _timing_summary(timings: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in timings.items():
        if isinstance(value, Mapping):
            for part, seconds in value.items():
                if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                    out[f"{key}.{part}"] = round(float(seconds), 2)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = round(float(value), 2)
    return out


def run_gates(
    cfg: TetherConfig,
    evaluation: Evaluation,
    lineage: Mapping[str, Any],
    out_dir: str | Path,
    champion: Mapping[str, Any] | None = None,
    selection: Mapping[str, Any] | None = None,
) -> tuple[GateReport, dict[str, Path]]:
    """The gate stage: verdicts, then ``gate_report.{json,md,png}`` and ``evaluation.json`` in ``out_dir``.

    Args:
        cfg: the config (``gates``).
        evaluation: the evaluation to judge.
        lineage: lineage tags of the run.
        out_dir: where the report files go.
        champion: the current champion's metrics, if there is one (see :func:`build_gates`), with the
            protocol it was measured under: it is compared only under the candidate's protocol
            (:func:`protocol_settings`); a champion measured under another (or an unknown) one fails
            ``beats_champion`` and its numbers are left out of the report.
        selection: guarded selection's result, shown in the report (its Pareto plot copied beside it).

    Returns:
        ``(report, paths)``; ``paths`` has ``json``, ``markdown``, ``png`` and ``evaluation``.
    """
    from tether.eval.panel import panel_limits

    protocol = protocol_settings(evaluation, lineage)
    primary = cfg.gates.primary_metric
    gates = build_gates(evaluation, cfg.gates, champion, protocol=protocol, drift_limits=panel_limits(cfg))
    comparable = champion is not None and champion_protocol_mismatch(champion, protocol, primary) is None
    report = build_report(
        evaluation, gates, lineage, champion=champion if comparable else None, primary_metric=primary,
        selection=selection,
    )
    paths = write_report(report, out_dir)
    paths["evaluation"] = evaluation.save(Path(out_dir) / "evaluation.json")
    failures = report.blocking_failures
    logger.info(
        "gate verdict: %s (%d/%d checks passed)%s", report.verdict, sum(g.passed for g in gates), len(gates),
        ("; blocked by " + ", ".join(f"{g.gate}:{g.metric}" for g in failures)) if failures else "",
    )
    return report, paths


def mlflow_metrics(report: GateReport, evaluation: Evaluation) -> dict[str, float]:
    """Flat, MLflow-safe metric names and finite values for a report and its evaluation.

    ``<system>.<metric>`` for every system metric (``candidate.ndcg_at_10``),
    ``<system>.<metric>_ci_low/_ci_high`` for intervals, ``gate.<gate>.<metric>.passed`` as 0/1,
    ``drift.<source>`` per drift-panel source (+ interval and ``.nll_diff``), ``perplexity_drift``
    (the worst source's), ``golden_kl``, ``promote`` as 0/1 and ``eval_seconds.<part>``.
    """
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value)):
            out[name.replace("@", "_at_")] = float(value)

    for system, m in report.metrics.items():
        for name, value in m.items():
            put(f"{system}.{name}", value)
    for system, m in report.intervals.items():
        for name, iv in m.items():
            if iv is not None:
                put(f"{system}.{name}_ci_low", iv[0])
                put(f"{system}.{name}_ci_high", iv[1])
    for g in report.gates:
        put(f"gate.{g.gate}.{g.metric}.passed", g.passed)
    for source, entry in evaluation.comparisons.get("drift_panel", {}).items():
        put(f"drift.{source}", entry.get("drift"))
        put(f"drift.{source}.nll_diff", entry.get("nll_diff"))
        if entry.get("interval") is not None:
            put(f"drift.{source}_ci_low", entry["interval"][0])
            put(f"drift.{source}_ci_high", entry["interval"][1])
    worst = evaluation.comparisons.get("perplexity_drift", {})
    put("perplexity_drift", worst.get("drift"))  # the worst source's, relative to its limit
    golden = evaluation.comparisons.get("golden_kl") or {}
    put("golden_kl", golden.get("kl"))
    put("promote", report.promote)
    for name, seconds in _timing_summary(evaluation.timings).items():
        put(f"eval_seconds.{name}", seconds)
    return out


def log_to_mlflow(
    report: GateReport,
    paths: Mapping[str, Path],
    evaluation: Evaluation,
    run_id: str | None = None,
) -> str:
    """Log the gate report to MLflow: metrics, verdict tags, report files, generations table.

    Args:
        report: from :func:`run_gates`.
        paths: the files it wrote (logged under ``gate_report/``).
        evaluation: the evaluation (drift, timings).
        run_id: the run to log into (e.g. the training run); None = the active run, or a new
            ``gate-*`` run in the current experiment (call ``tether.tracking.setup_tracking`` first).

    Returns:
        The run id.
    """
    import mlflow
    from mlflow.entities import Metric, RunTag

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            with mlflow.start_run(run_name=f"gate-{time.strftime('%Y%m%d-%H%M%S')}") as run:
                return log_to_mlflow(report, paths, evaluation, run.info.run_id)
        run_id = active.info.run_id

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metric_items = [Metric(k, v, now, 0) for k, v in mlflow_metrics(report, evaluation).items()]
    failures = report.blocking_failures
    tags = {
        "gate_verdict": report.verdict,
        "gate_blocking_failures": ",".join(f"{g.gate}:{g.metric}" for g in failures) or "none",
        "base_cache_hit": str(bool(evaluation.base_cache.get("hit"))).lower(),
    }
    for g in report.gates:
        tags[f"gate.{g.gate}.{g.metric}"] = "pass" if g.passed else "fail"
    tag_items = [RunTag(k, v) for k, v in tags.items()]
    # log_batch takes at most 1000 metrics per call.
    for start in range(0, max(len(metric_items), 1), 1000):
        client.log_batch(run_id, metrics=metric_items[start : start + 1000], tags=tag_items if start == 0 else [])
    for path in paths.values():
        client.log_artifact(run_id, str(path), artifact_path="gate_report")
    if report.generations:
        columns = ("id", "category", "prompt", "base", "candidate")
        table = {c: [str(r.get(c, "")) for r in report.generations] for c in columns}
        mlflow.log_table(data=table, artifact_file="gate_report/generations.json", run_id=run_id)
    logger.info("gate report logged to MLflow run %s (%d metrics)", run_id, len(metric_items))
    return run_id
