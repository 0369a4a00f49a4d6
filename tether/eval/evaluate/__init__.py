"""The evaluate stage: candidate adapter, zero-shot base model and popularity, one protocol.

Pinned protocol: leave-last-out on the test split; per user the candidates are
the full catalog minus every item already in the user's history (train + validation items,
which include the prompt's items), or, with ``eval.candidates: sampled``, the positive plus
``eval.n_negatives`` items drawn from those with a fixed seed; an item's score is the mean
log-likelihood per token of its title given the prompt (``eval.score: sum`` switches to the
sum; the other rule is always reported too, as ``<metric>_<rule>``); the popularity baseline
ranks the same candidates by train counts.

Modules, each usable on its own:

* :mod:`~tether.eval.evaluate.inputs`: :func:`load_eval_inputs` reads the processed data, samples
  the users and builds the candidates, the slices, the popularity counts, the genre vectors, the
  drift panel's gate half (:mod:`tether.eval.panel`) and the golden prompts (:class:`EvalInputs`);
* :mod:`~tether.eval.evaluate.recommendations`: :func:`evaluate_recommendations` turns one score
  array per user into ranks, ranking and diversity metrics, slices and per-user values
  (:class:`RecEval`); the popularity baseline (:func:`popularity_scores`) and the models go
  through this same function;
* :mod:`~tether.eval.evaluate.model`: :func:`evaluate_model` scores one model (a peft model, or
  one inside ``disable_adapter()``): ranking, valid-item rate, the drift panel, golden-prompt
  generations and the NLL of the base's golden answers;
* :mod:`~tether.eval.evaluate.evaluation`: the :class:`Evaluation` (saved and loaded as JSON);
  :mod:`~tether.eval.evaluate.assemble` builds it from the systems' results (intervals, drift per
  panel source, golden-prompt KL);
* :mod:`~tether.eval.evaluate.run`: :func:`evaluate_run` loads the base model once, puts the
  adapter on it and evaluates the base (adapter disabled; cached on disk), the candidate (on the
  base's very token ids: its self-samples and golden answers) and popularity;
  :func:`evaluate_base` evaluates the base model alone (same protocol, same on-disk cache), so an
  orchestrator can cache it as its own step and hand it to ``evaluate_run(..., base_result=...)``;
  :func:`expected_base_cache_key` gives its key without loading the model;
* :mod:`~tether.eval.evaluate.cache`: the base results are cached under
  ``<model cache>/eval-cache/<key>.json`` with a key that hashes the base weights, the data, the
  drift panel, the golden prompts, the protocol, device/dtype and the source of the modules that
  compute the numbers (:func:`base_cache_key`, :func:`code_digest`).
"""

from tether.eval.evaluate.assemble import assemble
from tether.eval.evaluate.cache import (
    BASE_EVAL_MODULES,
    EVAL_CACHE_SUBDIR,
    base_cache_key,
    code_digest,
    source_files,
)
from tether.eval.evaluate.evaluation import Evaluation
from tether.eval.evaluate.inputs import SLICES, EvalInputs, load_eval_inputs
from tether.eval.evaluate.model import evaluate_model
from tether.eval.evaluate.recommendations import RecEval, evaluate_recommendations, popularity_scores
from tether.eval.evaluate.run import evaluate_base, evaluate_run, expected_base_cache_key
from tether.eval.scoring import rank_users
from tether.eval.systems import EVALUATED_SYSTEMS as SYSTEMS

__all__ = [
    "BASE_EVAL_MODULES",
    "EVAL_CACHE_SUBDIR",
    "SLICES",
    "SYSTEMS",
    "EvalInputs",
    "Evaluation",
    "RecEval",
    "assemble",
    "base_cache_key",
    "code_digest",
    "evaluate_base",
    "evaluate_model",
    "evaluate_recommendations",
    "evaluate_run",
    "expected_base_cache_key",
    "load_eval_inputs",
    "popularity_scores",
    "rank_users",
    "source_files",
]
