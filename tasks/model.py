"""Model tasks: materialize the base model, fine-tune it."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from tether.config import TetherConfig
from tether.model.base import ResolvedModel, resolve_base_model
from tether.model.train import TrainResult, train


@task(name="fetch-base-model")
def fetch_model_task(cfg: TetherConfig) -> ResolvedModel:
    """Resolve the base model; the embedded GGUF is converted once into the model cache."""
    resolved = resolve_base_model(cfg.model)
    get_run_logger().info("base model %s at %s (hash %s)", resolved.name, resolved.path, resolved.short_hash)
    return resolved


@task(name="fine-tune")
def train_task(cfg: TetherConfig, root: Path, resume: bool = False) -> TrainResult:
    """LoRA fine-tuning on data/processed/train.jsonl, tracked in MLflow."""
    logger = get_run_logger()
    result = train(cfg, root, resume=resume, on_log=lambda step, m: logger.info("step %d: %s", step, m))
    logger.info(
        "adapter %s: validation loss %.4f (base %.4f), %.0f tokens/s",
        result.adapter_dir, result.eval_loss, result.base_eval_loss, result.tokens_per_second,
    )
    return result
