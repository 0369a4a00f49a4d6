"""Model tasks: materialize the base model, fine-tune it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from tether.config import TetherConfig
from tether.console import format_step
from tether.model.base import ResolvedModel, resolve_base_model
from tether.model.train import TrainResult, train


def _stat(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def model_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of the materialized base model: the model settings + its source files.

    The source is the embedded GGUF (or a .gguf / model directory given as a path), fingerprinted
    by name, size and mtime of its files; the converted copies in ``<cache>/models`` are listed too,
    so deleting the model cache invalidates the Prefect cache instead of returning a dead path.
    """
    from tether.model.base import EMBEDDED_MODELS, EMBEDDED_PREFIX, weight_files

    mc = parameters["cfg"].model
    spec = str(mc.base_model).strip()
    cache_dir = mc.resolved_cache_dir()
    source: list[Any] = []
    if spec.startswith(EMBEDDED_PREFIX) and spec[len(EMBEDDED_PREFIX):] in EMBEDDED_MODELS:
        source = _stat(EMBEDDED_MODELS[spec[len(EMBEDDED_PREFIX):]].gguf_path())
    elif Path(spec).expanduser().is_dir():
        source = [_stat(p) for p in weight_files(Path(spec).expanduser())]
    elif Path(spec).expanduser().is_file():
        source = _stat(Path(spec).expanduser())
    converts = spec.startswith(EMBEDDED_PREFIX) or spec.lower().endswith(".gguf")
    converted = sorted([m.parent.name, m.stat().st_mtime_ns] for m in (cache_dir / "models").glob("*/tether_model.json")) \
        if converts else []
    blob = {"model": mc.model_dump(mode="json"), "cache_dir": str(cache_dir), "source": source, "converted": converted}
    return "base-model-" + hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


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
        from mlflow import MlflowClient

        from tether.tracking import tracking_uri

        MlflowClient(tracking_uri(cfg, root)).set_tag(result.mlflow_run_id, "prefect_flow_run_id", str(flow_run.id))
    logger.info(
        "adapter %s: validation loss %.4f (base %.4f), %.0f tokens/s",
        result.adapter_dir, result.eval_loss, result.base_eval_loss, result.tokens_per_second,
    )
    return result
