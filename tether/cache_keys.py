"""Cache keys of the pipeline's expensive, repeatable steps: the base model and its evaluation.

The Prefect tasks (tasks/model.py, tasks/evaluate.py) use them as their cache keys, so a task
is skipped exactly while these inputs are unchanged. They live here, not in the tasks, because
they encode where the model cache keeps its files and what the base evaluation depends on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tether.config import ModelConfig, TetherConfig
from tether.io import sha256_json


def _stat(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def base_model_cache_key(mc: ModelConfig) -> str:
    """Cache key of the materialized base model: the model settings + its source files.

    The source is the embedded GGUF (or a .gguf / model directory given as a path), fingerprinted
    by name, size and mtime of its files; the converted copies in ``<cache>/models`` are listed too,
    so deleting the model cache invalidates the key instead of returning a dead path.

    Args:
        mc: the ``model`` config section.

    Returns:
        ``base-model-<sha256>``.
    """
    from tether.model.base import EMBEDDED_MODELS, EMBEDDED_PREFIX, weight_files

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
    return "base-model-" + sha256_json(blob)


def base_eval_cache_key(cfg: TetherConfig, root: Path, base_model_hash: str) -> str:
    """Cache key of the zero-shot base model's evaluation: tether.eval's own on-disk cache key.

    That key hashes the base weights, the test data, the drift panel, the golden prompts, the
    protocol, device/dtype and the cache format, so the Prefect cache and the on-disk cache agree.

    Returns:
        ``base-eval-<key>``.
    """
    from tether.eval.evaluate import expected_base_cache_key

    return "base-eval-" + expected_base_cache_key(cfg, root, base_model_hash)
