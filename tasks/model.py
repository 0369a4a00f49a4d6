"""Model tasks: materialize the base model, fine-tune it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from tether.cache_keys import base_model_cache_key
from tether.config import TetherConfig
from tether.console import format_step
from tether.model.base import ResolvedModel, resolve_base_model
from tether.model.train import TrainResult, train
from tether.tracking import tag_run


def model_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of the materialized base model (:func:`tether.cache_keys.base_model_cache_key`)."""
    return base_model_cache_key(parameters["cfg"].model)


@task(
    name="fetch-base-model",
    cache_policy=CacheKeyFnPolicy(cache_key_fn=model_cache_key) + TASK_SOURCE,
    persist_result=True,
)
def fetch_model_task(cfg: TetherConfig) -> ResolvedModel:
    """Resolve the base model; the embedded GGUF is converted once into the model cache."""
    resolved = resolve_base_model(cfg.model)
    get_run_logger().info("base model %s at %s (hash %s)", resolved.name, resolved.path, resolved.short_hash)
    return resolved


@task(name="fine-tune")
def train_task(cfg: TetherConfig, root: Path, resume: bool = False) -> TrainResult:
    """LoRA fine-tuning on data/processed/train.jsonl, tracked in MLflow."""
    logger = get_run_logger()
    result = train(cfg, root, resume=resume, on_log=lambda step, m: logger.info("%s", format_step(step, m)))
    if result.mlflow_run_id and flow_run.id:
        # One MLflow run per flow run: gate and registry log into this one; the tag finds it.
        tag_run(cfg, root, result.mlflow_run_id, {"prefect_flow_run_id": str(flow_run.id)})
    logger.info(
        "adapter %s: validation loss %.4f (base %.4f), %.0f tokens/s",
        result.adapter_dir, result.eval_loss, result.base_eval_loss, result.tokens_per_second,
    )
    return result
