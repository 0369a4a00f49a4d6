"""The evaluate stage's run: load the base once, evaluate base (cached), candidate and popularity.

:func:`evaluate_run` is the stage; :func:`evaluate_base` evaluates the base alone under the same
protocol and cache, so an orchestrator can cache it as its own step; :func:`expected_base_cache_key`
gives that cache's key without loading the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.eval.evaluate.assemble import assemble
from tether.eval.evaluate.cache import base_cache_key, cache_path, read_cache, write_cache
from tether.eval.evaluate.evaluation import Evaluation
from tether.eval.evaluate.inputs import EvalInputs, load_eval_inputs
from tether.eval.evaluate.model import evaluate_model
from tether.eval.evaluate.recommendations import evaluate_recommendations, popularity_scores

if TYPE_CHECKING:
    from tether.config import TetherConfig

logger = logging.getLogger(__name__)


def evaluate_run(
    cfg: TetherConfig,
    root: Path,
    adapter_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    base_cache: bool = True,
    progress: bool = True,
    base_result: Mapping[str, Any] | None = None,
) -> Evaluation:
    """The evaluate stage: candidate (adapter on), base (adapter off) and popularity, one protocol.

    The base model is loaded once (``cfg.model``, or ``model_dir`` for tests and tools) and the
    adapter is put on it with ``PeftModel.from_pretrained``; the base is evaluated inside
    ``disable_adapter()``. Its results are cached in ``<model cache>/eval-cache/<key>.json``
    (:func:`base_cache_key`); ``base_cache=False`` ignores the cache (and refreshes it).

    Intervals (level ``eval.ci_level``, ``eval.bootstrap_samples`` resamples, seed ``seed``):
    bootstrap over users per system for NDCG@K, HR@K, MRR and the valid-item rate; over
    documents for perplexity; paired bootstrap over users of candidate - popularity and
    candidate - base on ``gates.primary_metric``; :func:`metrics.ppl_drift_ci` for the drift.

    Args:
        cfg: the config.
        root: the project root.
        adapter_dir: the trained LoRA adapter (``adapter_model.safetensors`` + config).
        model_dir: a Hugging Face model directory to use instead of ``cfg.model``.
        base_cache: reuse cached base results when the key matches.
        progress: progress bars.
        base_result: the base model's results computed beforehand by :func:`evaluate_base`
            (e.g. a cached Prefect task); used instead of scoring the base here. Its ``key``
            must equal this evaluation's :func:`base_cache_key`, else ``ValueError``.

    Returns:
        The :class:`Evaluation`.
    """
    from peft import PeftModel

    from tether.model.train import load_model

    t_start = time.perf_counter()
    root = Path(root).resolve()
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; train an adapter first (tether train)")
    timings: dict[str, Any] = {}

    started = time.perf_counter()
    inputs = load_eval_inputs(cfg, root)
    timings["load_inputs"] = time.perf_counter() - started

    started = time.perf_counter()
    model, tokenizer, base_name, base_hash, device, dtype = load_model(cfg, None if model_dir is None else Path(model_dir))
    model.eval()
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    timings["load_model"] = time.perf_counter() - started
    logger.info("loaded %s + adapter %s in %.1f s", base_name, adapter_dir, timings["load_model"])

    key = base_cache_key(base_hash, inputs, device=device, dtype=str(dtype))
    path = cache_path(cfg, key)

    if base_result is not None:
        if base_result.get("key") != key:
            raise ValueError(
                f"the precomputed base results are for key {str(base_result.get('key'))[:12]}, this evaluation's "
                f"key is {key[:12]}: base model, data, protocol or evaluation code differ; evaluate the base again"
            )
        base, hit = dict(base_result["result"]), True
        logger.info("base model: precomputed results (key %s, no re-scoring)", key[:12])
        timings["base"] = {"cached": True, "precomputed": True}
    else:
        with model.disable_adapter():
            base, hit = _base_results(model, tokenizer, inputs, cfg, key, path, base_name,
                                      use_cache=base_cache, progress=progress, base_hash=base_hash,
                                      device=device, dtype=str(dtype))
        timings["base"] = {"cached": True} if hit else base["timings"]

    cand = evaluate_model(model, tokenizer, inputs, cfg, name="candidate", progress=progress, reference=base)
    timings["candidate"] = cand["timings"]

    started = time.perf_counter()
    pop = evaluate_recommendations(popularity_scores(inputs), inputs, cfg.eval.ks)
    timings["popularity"] = time.perf_counter() - started

    started = time.perf_counter()
    evaluation = assemble(cfg, inputs, cand, base, pop)
    timings["bootstrap"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - t_start
    evaluation.timings = timings
    evaluation.base_cache = {"key": key, "path": str(path), "hit": hit}
    evaluation.info = {
        "adapter_dir": str(adapter_dir.resolve()),
        "base_model": base_name,
        "base_model_hash": base_hash,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "n_users": inputs.n_users,
        "n_candidates": int(sum(len(c) for c in inputs.candidates)),
        "hashes": inputs.hashes,
    }
    primary = cfg.gates.primary_metric
    drifts = ", ".join(f"{k} {v['drift']:+.2%}" for k, v in evaluation.comparisons.get("drift_panel", {}).items())
    logger.info(
        "evaluation done in %.1f s: %s candidate %.4f, base %.4f, popularity %.4f; drift by source: %s",
        timings["total"], primary, evaluation.metric("candidate", primary), evaluation.metric("base", primary),
        evaluation.metric("popularity", primary), drifts or "none measured",
    )
    return evaluation


def _base_results(
    model: Any, tokenizer: Any, inputs: EvalInputs, cfg: TetherConfig, key: str, path: Path, base_name: str,
    *, use_cache: bool, progress: bool, base_hash: str, device: str, dtype: str,
) -> tuple[dict[str, Any], bool]:
    """The base model's results from the on-disk cache, else computed (and cached): ``(result, hit)``."""
    from tether.eval.panel import draw_self_samples

    base = read_cache(path, key) if use_cache else None
    if base is not None:
        logger.info("base model: cached results %s (no re-scoring)", path)
        return base, True
    started = time.perf_counter()
    samples = draw_self_samples(model, tokenizer, inputs.panel, seed=cfg.seed, base_hash=base_hash,
                                cache_dir=cfg.model.resolved_cache_dir(), device=device, dtype=dtype)
    drawn = time.perf_counter() - started
    base = evaluate_model(model, tokenizer, inputs, cfg, name="base", progress=progress, samples=samples)
    base["timings"]["self_samples"] = drawn
    write_cache(path, key, base_name, base)
    return base, False


def expected_base_cache_key(cfg: TetherConfig, root: Path, base_model_hash: str) -> str:
    """The :func:`base_cache_key` an evaluation of ``cfg.model`` will use, without loading the model.

    Device and dtype are the ones :func:`tether.model.base.load_base_model` picks for ``cfg.model``.
    Cheap (reads and hashes the processed test data), so an orchestrator can key a cache on it.
    """
    from tether.model.base import _device_and_dtype

    device, dtype = _device_and_dtype(cfg.model, None, None)
    return base_cache_key(base_model_hash, load_eval_inputs(cfg, Path(root).resolve()), device=device, dtype=str(dtype))


def evaluate_base(cfg: TetherConfig, root: Path, *, base_cache: bool = True, progress: bool = True) -> dict[str, Any]:
    """The zero-shot base model alone, under the same protocol :func:`evaluate_run` uses.

    Its output can be handed to ``evaluate_run(..., base_result=...)``, which then scores only
    the candidate; the on-disk cache (:func:`base_cache_key`) is read and written as there.

    Args:
        cfg: the config (``cfg.model`` is the base model).
        root: the project root.
        base_cache: reuse cached base results when the key matches.
        progress: progress bars.

    Returns:
        ``key`` (:func:`base_cache_key`), ``base_model``, ``base_model_hash``, ``device``, ``dtype``,
        ``hit`` (the on-disk cache answered), ``seconds`` and ``result`` (the :func:`evaluate_model` dict).
    """
    from tether.model.train import load_model

    started = time.perf_counter()
    root = Path(root).resolve()
    inputs = load_eval_inputs(cfg, root)
    model, tokenizer, base_name, base_hash, device, dtype = load_model(cfg, None)
    model.eval()
    key = base_cache_key(base_hash, inputs, device=device, dtype=str(dtype))
    path = cache_path(cfg, key)
    result, hit = _base_results(model, tokenizer, inputs, cfg, key, path, base_name,
                                use_cache=base_cache, progress=progress, base_hash=base_hash, device=device,
                                dtype=str(dtype))
    return {
        "key": key, "base_model": base_name, "base_model_hash": base_hash, "device": device,
        "dtype": str(dtype).removeprefix("torch."), "hit": hit, "seconds": time.perf_counter() - started,
        "result": result,
    }

