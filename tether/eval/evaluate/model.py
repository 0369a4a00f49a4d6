"""One model's evaluation: ranking, valid-item rate, the drift panel and golden-prompt generations.

:func:`evaluate_model` works on a plain model, a peft model (the candidate) and a peft model
inside ``disable_adapter()`` (the base). Its result for the base is what the base-evaluation cache
stores (:mod:`tether.eval.evaluate.cache`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tether.eval import metrics
from tether.eval.evaluate.inputs import EvalInputs
from tether.eval.evaluate.recommendations import evaluate_recommendations
from tether.eval.generation import free_generation_titles, generate
from tether.eval.panel import measure
from tether.eval.scoring import rank_users
from tether.eval.selfsamples import SampleRow, golden_rows, sequence_nll
from tether.eval.systems import is_ranking_metric
from tether.io import jsonable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tether.config import TetherConfig

logger = logging.getLogger(__name__)


def evaluate_model(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    inputs: EvalInputs,
    cfg: TetherConfig,
    *,
    name: str = "model",
    progress: bool = True,
    reference: Mapping[str, Any] | None = None,
    samples: Sequence[SampleRow] = (),
) -> dict[str, Any]:
    """Evaluate one model: ranking, valid-item rate, the drift panel, golden-prompt generations.

    Works on a plain model, a peft model (the candidate) and a peft model inside
    ``disable_adapter()`` (the base), so one loaded model serves both. The base is evaluated
    first (``reference=None``, with its ``samples``); the candidate then gets the base's result
    as ``reference`` and scores the very token ids the base was scored on: the base's
    self-samples and its greedy answers to the golden prompts.

    Args:
        model: the causal LM.
        tokenizer: its tokenizer (the same for every system: identical tokenization).
        inputs: from :func:`load_eval_inputs`.
        cfg: the config (``eval``).
        name: label for progress bars and log lines.
        progress: show progress bars.
        reference: the base model's result (for a candidate); None = this model is the base.
        samples: the base's self-samples (for the base; a candidate takes them from ``reference``).

    Returns:
        A JSON-safe dict: ``rec`` (:meth:`RecEval.to_dict` under ``eval.score``), ``alt_rule``
        and ``alt_metrics`` (ranking metrics under the other rule), ``valid_items`` (``rate``,
        ``per_user`` 0/1, ``generations``), ``panel`` (per drift-panel source: ``per_doc``,
        ``documents``, ``nll_sum``, ``n_tokens``, ``ppl``; :func:`tether.eval.panel.measure`),
        ``generations`` (golden-prompt texts), ``golden`` (``per_doc``: NLL and tokens of the base's
        golden answers under this model), for the base also ``golden_ids`` and ``self_samples``
        (the token ids the candidate is scored on), and ``timings`` (seconds in ``scoring``,
        ``valid_items``, ``panel``, ``generation``).
    """
    ec = cfg.eval
    gc = ec.generation
    timings: dict[str, float] = {}

    started = time.perf_counter()
    scored = rank_users(
        model, tokenizer, inputs.examples, inputs.candidate_titles, batch_size=ec.batch_size,
        progress=progress, desc=f"{name}: scoring",
    )
    timings["scoring"] = time.perf_counter() - started
    n_cands = sum(len(c) for c in inputs.candidates)
    logger.info("%s: scored %d users, %d candidates in %.1f s", name, inputs.n_users, n_cands, timings["scoring"])
    rule = ec.score
    alt = "sum" if rule == "mean" else "mean"
    rec = evaluate_recommendations([r.scores(rule) for r in scored], inputs, ec.ks)
    alt_rec = evaluate_recommendations([r.scores(alt) for r in scored], inputs, ec.ks)
    alt_metrics = {k: v for k, v in alt_rec.metrics.items() if is_ranking_metric(k)}

    started = time.perf_counter()
    n_valid = min(gc.valid_item_users, inputs.n_users)
    gen_examples = inputs.examples[:n_valid]
    free = free_generation_titles(
        model, tokenizer, gen_examples, max_new_tokens=gc.valid_item_max_new_tokens, batch_size=gc.batch_size,
        progress=progress,
    )
    index = metrics.CatalogIndex(inputs.titles.values())
    per_user_valid = [0.0 if index.resolve(g) is None else 1.0 for g in free]
    rate = metrics.valid_item_rate(free, index)
    exact_rate = metrics.exact_title_rate(free, index) if free else float("nan")
    timings["valid_items"] = time.perf_counter() - started
    logger.info("%s: valid-item rate %.3f over %d free generations in %.1f s", name, rate, n_valid,
                timings["valid_items"])

    started = time.perf_counter()
    if reference is not None:
        samples = [SampleRow.from_dict(r) for r in reference.get("self_samples", [])]
    panel = measure(model, tokenizer, inputs.panel, cfg, samples=samples, progress=progress) if inputs.panel else {}
    timings["panel"] = time.perf_counter() - started
    logger.info("%s: drift panel %s in %.1f s", name,
                ", ".join(f"{k} ppl {v['ppl']:.3f} ({v['n_tokens']} tokens)" for k, v in panel.items()) or "none",
                timings["panel"])

    started = time.perf_counter()
    golden_ids: list[list[int]] = []
    texts = generate(
        model, tokenizer, [p.messages for p in inputs.golden_prompts], max_new_tokens=gc.max_new_tokens,
        batch_size=gc.batch_size, progress=progress, desc=f"{name}: golden prompts", ids_out=golden_ids,
    )
    # The golden-prompt KL check scores the base's own answers under each model.
    answers = golden_ids if reference is None else reference.get("golden_ids", [])
    golden = sequence_nll(model, golden_rows(tokenizer, inputs.golden_prompts, answers))
    timings["generation"] = time.perf_counter() - started
    logger.info("%s: %d golden-prompt generations in %.1f s", name, len(texts), timings["generation"])

    result = {
        "rec": rec.to_dict(),
        "rule": rule,
        "alt_rule": alt,
        "alt_metrics": alt_metrics,
        "valid_items": {
            "rate": rate,
            "exact_rate": exact_rate,
            "per_user": per_user_valid,
            "generations": [
                {"user_id": ex["user_id"], "generation": g, "resolved": index.resolve(g),
                 "target": inputs.titles[str(ex["item_id"])]}
                for ex, g in zip(gen_examples, free)
            ],
        },
        "panel": panel,
        "generations": texts,
        "golden": {"per_doc": [list(d) for d in golden], "documents": [p.id for p, a in zip(inputs.golden_prompts, answers) if a]},
        "timings": timings,
    }
    if reference is None:
        result["golden_ids"] = golden_ids
        result["self_samples"] = [r.to_dict() for r in samples]
    return jsonable(result)
