"""Turn ``model.base_model`` into a plain Hugging Face directory: which form it is, and its checks.

``model.base_model`` accepts three forms (:data:`~tether.model.base.specs.ACCEPTED_FORMS`):
``embedded:<name>`` or a ``.gguf`` file (converted once into the model cache by
:mod:`tether.model.base.convert`), a local Hugging Face directory (used as is), or a hub id
``org/name`` (downloaded unless ``HF_HUB_OFFLINE`` is set, then only a cached copy is used).

Pickle weights (``.bin``, ``.pt``, ...) are refused: unpickling can run arbitrary code.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from tether.config import ModelConfig
from tether.model.base.cache import _read_json, cache_name, content_hash_of, weight_files
from tether.model.base.convert import _materialize_gguf
from tether.model.base.errors import ModelResolutionError
from tether.model.base.specs import (
    ACCEPTED_FORMS,
    EMBEDDED_MODELS,
    EMBEDDED_PREFIX,
    ResolvedModel,
    Source,
    installed_version,
)

logger = logging.getLogger(__name__)

# Suffixes of pickle-based weight files (torch.save / pickle); never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# A hub repository id: "org/name" (the only form the hub resolves without redirects).
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def resolve_base_model(model_cfg: ModelConfig, progress: bool = True, *, rehash: bool = False) -> ResolvedModel:
    """Turn ``model_cfg.base_model`` into a loadable Hugging Face directory.

    Args:
        model_cfg: the ``model`` section of the config.
        progress: show the conversion's steps and progress bars (first use of a GGUF model).
        rehash: hash every weight file again even where its size and mtime match the
            cached hash (slower; catches edits that preserved the mtime).

    Returns:
        The resolved model: directory, canonical name, source and content hash.

    Raises:
        ModelResolutionError: the spec is malformed, missing, offline-only, or pickle-only.
        ModelConversionError: converting a GGUF model failed its logit check.
    """
    spec = str(model_cfg.base_model).strip()
    cache_dir = model_cfg.resolved_cache_dir()
    if not spec:
        raise ModelResolutionError(f"model.base_model is empty; accepted forms:\n{ACCEPTED_FORMS}")

    if spec.startswith(EMBEDDED_PREFIX):
        key = spec[len(EMBEDDED_PREFIX) :]
        if key not in EMBEDDED_MODELS:
            raise ModelResolutionError(
                f"unknown embedded model {spec!r}; known: "
                f"{', '.join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)}. Accepted forms:\n{ACCEPTED_FORMS}"
            )
        embedded = EMBEDDED_MODELS[key]
        gguf = embedded.gguf_path()
        origin = {
            "kind": "embedded",
            "spec": spec,
            "distribution": embedded.distribution,
            "distribution_version": installed_version(embedded.distribution),
            "title": embedded.title,
        }
        path, content_hash = _materialize_gguf(gguf, key, cache_dir, origin, progress=progress, rehash=rehash)
        return ResolvedModel(path=path, name=spec, source="embedded", content_hash=content_hash)

    local = Path(spec).expanduser()
    if local.exists():
        local = local.resolve()
        if local.is_dir():
            return _resolve_directory(local, name=str(local), source="local", cache_dir=cache_dir, rehash=rehash)
        if local.suffix.lower() == ".gguf":
            origin = {"kind": "gguf-file", "spec": str(local)}
            path, content_hash = _materialize_gguf(local, cache_name(local.stem), cache_dir, origin, progress=progress, rehash=rehash)
            return ResolvedModel(path=path, name=str(local), source="local", content_hash=content_hash)
        raise ModelResolutionError(
            f"model.base_model {spec!r} is a file, not a model directory or a .gguf file. "
            f"Accepted forms:\n{ACCEPTED_FORMS}"
        )
    looks_like_path = spec.startswith(("/", ".", "~")) or "\\" in spec or spec.lower().endswith(".gguf")
    if looks_like_path:
        raise ModelResolutionError(
            f"model.base_model {spec!r}: no such file or directory ({local.absolute()}). "
            f"Accepted forms:\n{ACCEPTED_FORMS}"
        )
    if _HUB_ID_RE.fullmatch(spec) and ".." not in spec and "--" not in spec:
        return _resolve_hub(spec, model_cfg, cache_dir=cache_dir, rehash=rehash)
    raise ModelResolutionError(f"model.base_model {spec!r} is not a model reference. Accepted forms:\n{ACCEPTED_FORMS}")


def _resolve_directory(path: Path, *, name: str, source: Source, cache_dir: Path, rehash: bool) -> ResolvedModel:
    """Check a Hugging Face model directory (safetensors only) and hash its weights."""
    if not (path / "config.json").is_file():
        adapter_cfg = path / "adapter_config.json"
        if adapter_cfg.is_file():
            base = _read_json(adapter_cfg).get("base_model_name_or_path", "?")
            raise ModelResolutionError(
                f"{path} is a LoRA adapter (adapter_config.json), not a base model; set model.base_model "
                f"to its base model instead (the adapter names {base!r})."
            )
        raise ModelResolutionError(
            f"{path} is not a Hugging Face model directory: it has no config.json. "
            f"Accepted forms:\n{ACCEPTED_FORMS}"
        )
    weights = weight_files(path)
    if not weights:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ModelResolutionError(
                f"{path} holds only pickle weights ({', '.join(pickles)}). Tether loads safetensors only, "
                "because unpickling a file can run arbitrary code. Convert it once, in an environment you "
                "trust:\n"
                f"  python -c \"from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; "
                f"p='{path}'; M.from_pretrained(p).save_pretrained(p + '-safetensors'); "
                f"T.from_pretrained(p).save_pretrained(p + '-safetensors')\"\n"
                f"then set model.base_model to {path}-safetensors."
            )
        raise ModelResolutionError(f"{path} has a config.json but no *.safetensors weight files.")
    content_hash = content_hash_of(weights, cache_dir=cache_dir, rehash=rehash)
    logger.info("base model %s (%s): %s, weights sha256 %s", name, source, path, content_hash[:12])
    return ResolvedModel(path=path, name=name, source=source, content_hash=content_hash)


def _hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for cached hub copies only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _resolve_hub(repo_id: str, model_cfg: ModelConfig, *, cache_dir: Path, rehash: bool) -> ResolvedModel:
    """Use the hub snapshot of ``repo_id`` (cached only when offline); safetensors only."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = _hub_offline()
    # Never fetch pickle weights; code only when the user trusts it.
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
    if model_cfg.trust_remote_code:
        patterns.append("*.py")
    try:
        snapshot = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        # Online, huggingface_hub raises the same error when the hub is unreachable.
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached (no network?)"
        raise ModelResolutionError(
            f"model.base_model {repo_id!r} is a hub id, but {why} and the Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}) has no copy of it. Either:\n"
            f"  - download it where the network allows (`hf download {repo_id}`) and copy the directory "
            "here, then set model.base_model to that local directory;\n"
            "  - or unset HF_HUB_OFFLINE (export HF_HUB_OFFLINE=0) on a machine with network access;\n"
            f"  - or use the embedded default: {EMBEDDED_PREFIX}smollm2-135m-instruct.\n"
            f"(If you meant a local directory, it does not exist: {Path(repo_id).absolute()}.) [{type(exc).__name__}]"
        ) from None
    except Exception as exc:  # network errors, unknown repo, gated repo: all end here
        raise ModelResolutionError(f"could not fetch {repo_id!r} from the Hugging Face hub: {exc}") from exc
    path = Path(snapshot)
    if not weight_files(path):
        raise ModelResolutionError(
            f"hub model {repo_id!r} has no safetensors weights (Tether refuses pickle .bin weights). "
            "Pick a repository that publishes *.safetensors, or convert it into a local directory."
        )
    return _resolve_directory(path, name=repo_id, source="hub", cache_dir=cache_dir, rehash=rehash)
