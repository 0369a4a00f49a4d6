"""The base model's evaluation cache: a key derived from what the base's numbers depend on, and its files.

The base model's results depend on the base weights, the data, the drift panel, the golden
prompts, the protocol, the device/dtype, and the code that computes them. The first six are hashed
as content (:attr:`EvalInputs.hashes`, :attr:`EvalInputs.protocol`); the code is hashed as the
bytes of the modules that compute the numbers (:data:`BASE_EVAL_MODULES`, :func:`code_digest`).
So a change to scoring, perplexity, generation, the metrics, ... invalidates every cached base
result by itself; no format number has to be bumped by hand (and cannot be forgotten).

The price: any edit of those files, a comment included, re-evaluates the base once (minutes on
the CPU). That errs on the safe side: a stale base would silently skew every comparison.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.io import atomic_write_text, sha256_file, sha256_json

if TYPE_CHECKING:
    from tether.config import TetherConfig
    from tether.eval.evaluate.inputs import EvalInputs

logger = logging.getLogger(__name__)

EVAL_CACHE_SUBDIR = "eval-cache"
# The modules (or whole packages) whose code computes the base's cached results: the inputs'
# candidates, scoring and ranking, free generation and valid items, the drift panel and its
# self-samples, the golden prompts' NLL, the metrics, and the chat encoding and device placement
# under all of them. Loading data that is hashed as content (the panel's sources, the golden
# prompts file) is not listed: its output is in the key already.
BASE_EVAL_MODULES: tuple[str, ...] = (
    "tether.chat",
    "tether.model.device",
    "tether.model.prefix",  # the prompt prefix scoring runs once (common_prefix)
    "tether.eval.evaluate.inputs",
    "tether.eval.evaluate.recommendations",
    "tether.eval.evaluate.model",
    "tether.eval.scoring",
    "tether.eval.perplexity",
    "tether.eval.generation",
    "tether.eval.panel",
    "tether.eval.selfsamples",
    "tether.eval.interest",
    "tether.eval.metrics",
    "tether.eval.systems",  # which of the base's metrics are kept (is_ranking_metric)
)


def source_files(modules: tuple[str, ...] = BASE_EVAL_MODULES) -> dict[str, Path]:
    """The source files of ``modules``: a module's file, or every ``.py`` file of a package.

    Args:
        modules: dotted module or package names.

    Returns:
        A label (``tether.eval.perplexity``, ``tether.eval.metrics/ranking.py``) -> the file, in a
        fixed order (modules as given, a package's files sorted).

    Raises:
        ImportError: a module is not found or has no source file (a name in the list went stale).
    """
    files: dict[str, Path] = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise ImportError(f"base-evaluation cache key: module {name!r} has no source file; "
                              "fix tether.eval.evaluate.cache.BASE_EVAL_MODULES")
        if spec.submodule_search_locations:  # a package: all of its files
            for location in spec.submodule_search_locations:
                for path in sorted(Path(location).rglob("*.py")):
                    files[f"{name}/{path.relative_to(location).as_posix()}"] = path
        else:
            files[name] = Path(spec.origin)
    return files


@functools.cache
def code_digest(modules: tuple[str, ...] = BASE_EVAL_MODULES) -> str:
    """sha256 over the source files of ``modules`` (labels and each file's sha256), once per process."""
    return sha256_json([[label, sha256_file(path)] for label, path in source_files(modules).items()])


def base_cache_key(
    base_model_hash: str, inputs: EvalInputs, *, device: str = "cpu", dtype: str = "float32"
) -> str:
    """The base-results cache key: sha256 of everything the base model's numbers depend on.

    Base weights, the drift panel, the golden prompts, the processed test data (test examples,
    catalog, split interactions), the protocol settings (seed included), device and dtype (bf16
    on a GPU gives other numbers than fp32 on a CPU), and the code that computes the numbers
    (:func:`code_digest`).
    """
    return sha256_json(
        {
            "code": code_digest(),
            "base_model": base_model_hash,
            "hashes": inputs.hashes,
            "protocol": inputs.protocol,
            "device": str(device).split(":")[0],
            "dtype": str(dtype).removeprefix("torch."),
        }
    )


def cache_path(cfg: TetherConfig, key: str) -> Path:
    """Where the base results for ``key`` live: ``<model cache>/eval-cache/<key>.json``."""
    return cfg.model.resolved_cache_dir() / EVAL_CACHE_SUBDIR / f"{key}.json"


def read_cache(path: Path, key: str) -> dict[str, Any] | None:
    """The cached base results at ``path`` if they are for ``key``, else None (unreadable files are ignored)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable base-evaluation cache %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        logger.warning("ignoring base-evaluation cache %s: key mismatch", path)
        return None
    return data.get("result")


def write_cache(path: Path, key: str, base_name: str, result: dict[str, Any]) -> None:
    """Store the base results for ``key`` at ``path`` (atomically); a read-only cache only logs a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            path,
            json.dumps({"key": key, "code": code_digest(), "base_model": base_name, "result": result}, allow_nan=False),
        )
    except OSError as exc:  # a read-only cache must not fail the evaluation
        logger.warning("could not write the base-evaluation cache %s: %s", path, exc)
