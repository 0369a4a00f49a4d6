"""The :class:`Evaluation` from the systems' results: metrics, bootstrap intervals and comparisons.

Computed on every run from the (possibly cached) per-model results: the intervals over users and
documents, candidate vs each reference on the primary metric, the drift per panel source and the
golden-prompt KL. Nothing here is cached, so it is not part of the base-evaluation cache key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tether.eval import metrics
from tether.eval.evaluate.evaluation import Evaluation
from tether.eval.evaluate.inputs import EvalInputs
from tether.eval.evaluate.recommendations import RecEval
from tether.eval.generation import generation_health
from tether.eval.generation import side_by_side as side_by_side_rows
from tether.eval.panel import drift_table, worst_source
from tether.eval.systems import REFERENCES

if TYPE_CHECKING:
    from tether.config import TetherConfig


def assemble(
    cfg: TetherConfig, inputs: EvalInputs, cand: dict[str, Any], base: dict[str, Any], pop: RecEval
) -> Evaluation:
    """The :class:`Evaluation` of one run from the candidate's, the base's and popularity's results.

    Args:
        cfg: the config (``eval`` intervals, ``gates.primary_metric``, ``seed``).
        inputs: the evaluation inputs (golden prompts, drift-panel limits, protocol).
        cand: the candidate's :func:`~tether.eval.evaluate.model.evaluate_model` result.
        base: the base's (computed now, cached or precomputed).
        pop: popularity's :class:`RecEval`.
    """
    ec = cfg.eval
    n_boot, alpha, seed = ec.bootstrap_samples, 1.0 - ec.ci_level, cfg.seed
    recs = {"candidate": RecEval.from_dict(cand["rec"]), "base": RecEval.from_dict(base["rec"]), "popularity": pop}
    models = {"candidate": cand, "base": base}

    cand_texts, base_texts = list(cand["generations"]), list(base["generations"])
    health = {"base": generation_health(base_texts), "candidate": generation_health(cand_texts, base_texts)} \
        if inputs.golden_prompts else {}

    systems: dict[str, dict[str, float]] = {}
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    for name, rec in recs.items():
        m = dict(rec.metrics)
        iv: dict[str, tuple[float, float]] = {}
        for metric, values in rec.per_user.items():
            iv[metric] = metrics.bootstrap_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
        if name in models:
            res = models[name]
            m.update({f"{k}_{res['alt_rule']}": v for k, v in res["alt_metrics"].items()})
            vi = res["valid_items"]
            m["valid_item_rate"] = metrics.as_float(vi["rate"])
            m["exact_title_rate"] = metrics.as_float(vi.get("exact_rate", float("nan")))
            if vi["per_user"]:
                iv["valid_item_rate"] = metrics.bootstrap_ci(vi["per_user"], n_boot=n_boot, alpha=alpha, seed=seed)
            for source, entry in res["panel"].items():
                m[f"perplexity.{source}"] = metrics.as_float(entry["ppl"])
                iv[f"perplexity.{source}"] = _ppl_ci(entry["per_doc"], n_boot, alpha, seed)
            m.update({k: v for k, v in health.get(name, {}).items() if k != "n"})
        systems[name] = {k: metrics.as_float(v) for k, v in m.items()}
        intervals[name] = iv

    primary = cfg.gates.primary_metric
    comparisons: dict[str, dict[str, Any]] = {}
    for ref in REFERENCES:
        a, b = recs["candidate"].per_user.get(primary), recs[ref].per_user.get(primary)
        diff = systems["candidate"].get(primary, math.nan) - systems[ref].get(primary, math.nan)
        interval = None
        if a is not None and b is not None:
            interval = metrics.paired_bootstrap_ci(a, b, n_boot=n_boot, alpha=alpha, seed=seed)
        comparisons[f"candidate_vs_{ref}"] = {"metric": primary, "diff": diff, "interval": interval}
    limits = {src.name: src.max_drift for src in (inputs.panel.sources if inputs.panel else [])}
    panel = drift_table(cand["panel"], base["panel"], limits, n_boot=n_boot, alpha=alpha, seed=seed)
    comparisons["drift_panel"] = panel
    worst = worst_source(panel)
    if worst is not None:
        comparisons["perplexity_drift"] = {"metric": f"perplexity.{worst}", "source": worst, **panel[worst]}
    golden = drift_table({"golden": {**cand["golden"], "ppl": _ppl(cand["golden"])}},
                         {"golden": {**base["golden"], "ppl": _ppl(base["golden"])}}, {"golden": math.nan},
                         n_boot=n_boot, alpha=alpha, seed=seed)["golden"] if cand["golden"]["per_doc"] else None
    if golden is not None:
        # With identical tokens, drift = exp(nll_diff) - 1, so the interval maps to nats by log1p.
        iv = golden["interval"]
        comparisons["golden_kl"] = {
            "metric": "golden_kl", "kl": golden["nll_diff"], "n_tokens": golden["n_tokens"], "n_prompts": golden["n_docs"],
            "interval": None if iv is None else (math.log1p(iv[0]), math.log1p(iv[1])),
        }

    rows = side_by_side_rows(inputs.golden_prompts, base_texts, cand_texts) if inputs.golden_prompts else []
    return Evaluation(
        systems=systems,
        intervals=intervals,
        comparisons=comparisons,
        slices={name: rec.slices for name, rec in recs.items()},
        per_user={name: {k: v.tolist() for k, v in rec.per_user.items()} for name, rec in recs.items()},
        user_ids=list(inputs.user_ids),
        perplexity={name: res["panel"] for name, res in models.items()},
        health=health,
        generations=rows,
        valid_item_generations={name: res["valid_items"]["generations"] for name, res in models.items()},
        protocol=dict(inputs.protocol),
        ci_level=ec.ci_level,
        bootstrap_samples=n_boot,
        seed=seed,
    )


def _ppl(entry: Mapping[str, Any]) -> float:
    nll, n = sum(d[0] for d in entry["per_doc"]), sum(d[1] for d in entry["per_doc"])
    return math.exp(nll / n) if n else math.nan


def _ppl_ci(per_doc: Sequence[Sequence[float]], n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    """Bootstrap interval of the corpus perplexity over documents (token-weighted, as pinned)."""
    nll = np.array([d[0] for d in per_doc], dtype=np.float64)
    tok = np.array([d[1] for d in per_doc], dtype=np.float64)

    def stat(idx: np.ndarray) -> float:
        i = idx.astype(np.int64)
        t = tok[i].sum()
        return float(np.exp(nll[i].sum() / t)) if t > 0 else math.nan

    return metrics.bootstrap_ci(np.arange(len(nll), dtype=np.float64), stat=stat, n_boot=n_boot, alpha=alpha, seed=seed)
