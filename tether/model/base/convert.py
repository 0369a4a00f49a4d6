"""Convert a GGUF model once into the model cache: dequantize, save, verify, rename into place.

The conversion is crash- and race-safe: it writes into a temporary directory beside the target
and renames it into place only when the weights are saved, the logits are checked against the
GGUF-loaded model (:mod:`tether.model.base.verify`) and the manifest (``tether_model.json``) is
written; a lock (:func:`tether.locks.exclusive`) serializes concurrent converters. A cache
directory without a valid manifest, or whose weights no longer match the manifest's hashes,
is rebuilt with a warning.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tether.io import atomic_write_text, sha256_file, sha256_listing
from tether.locks import exclusive
from tether.model.base import verify
from tether.model.base.cache import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    _check_converted,
    _read_json,
    converted_dir,
    dir_size,
    gguf_sha256,
    record_hashes,
    weight_files,
)
from tether.model.base.errors import ModelConversionError
from tether.model.base.progress import _progress_bars, _say, _Steps

logger = logging.getLogger(__name__)

# A converter that holds the lock longer than this is presumed stuck.
LOCK_TIMEOUT_S = 1800.0


def _materialize_gguf(
    gguf: Path, key: str, cache_dir: Path, origin: dict[str, Any], *, progress: bool, rehash: bool
) -> tuple[Path, str]:
    """Return (directory, content hash) of the converted model, converting it if needed.

    Args:
        gguf: the GGUF file.
        key: the cache key (:func:`tether.model.base.cache.cache_name` of a file, or the embedded key).
        cache_dir: the model cache.
        origin: where the GGUF came from, recorded in the manifest (``spec`` names it in logs).
        progress: show the conversion's steps and progress bars.
        rehash: hash cached files again even where size and mtime match.

    Raises:
        ModelConversionError: the conversion failed its check, or another converter held the lock too long.
    """
    gguf_sha = gguf_sha256(gguf, cache_dir, rehash)
    target = converted_dir(cache_dir, key, gguf_sha)
    models_dir = target.parent

    problem = _check_converted(target, gguf_sha, cache_dir, rehash)
    if problem is None:
        manifest = _read_json(target / MANIFEST_NAME)
        logger.info("base model %s: cached at %s (weights %s)", origin["spec"], target, manifest["content_hash"][:12])
        return target, str(manifest["content_hash"])

    lock_path = models_dir / f".{target.name}.lock"
    with exclusive(
        lock_path,
        timeout_s=LOCK_TIMEOUT_S,
        on_timeout=lambda waited: ModelConversionError(
            f"another process has held {lock_path} for {waited:.0f} s while converting {target}; "
            "if no such process is running, delete the lock file and retry"
        ),
        waiting=f"another process converting {target}",
    ):
        # Another process may have finished the conversion while we waited for the lock.
        problem = _check_converted(target, gguf_sha, cache_dir, rehash)
        if problem is None:
            manifest = _read_json(target / MANIFEST_NAME)
            return target, str(manifest["content_hash"])
        _clear_for_rebuild(target, problem, gguf, origin)
        manifest = _convert_into_place(gguf, key, target, origin, gguf_sha, progress=progress)
    # Record the final paths so the next resolve does not re-hash 0.5 GB.
    record_hashes(target, {n: meta["sha256"] for n, meta in manifest["weight_files"].items()}, cache_dir)
    v = manifest["verification"]
    _say(
        progress,
        f"converted model ready: {target} ({dir_size(target) / 1e6:.0f} MB, max |logit diff| "
        f"{v['max_abs_logit_diff']:.3g} over {v['n_tokens']} tokens, total {manifest['timings_s']['total']:.1f} s)",
    )
    return target, str(manifest["content_hash"])


def _clear_for_rebuild(target: Path, problem: str, gguf: Path, origin: dict[str, Any]) -> None:
    """Remove crashed conversions' leftovers and a stale ``target`` (the caller holds the lock)."""
    models_dir = target.parent
    # Holding the lock, nobody else writes here: leftovers are from crashed runs.
    for leftover in models_dir.glob(f".{target.name}.*-*"):
        if leftover.is_dir():
            logger.warning("removing the leftover of an interrupted conversion: %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    if target.exists():
        logger.warning("rebuilding the cached model %s: %s", target, problem)
        trash = models_dir / f".{target.name}.stale-{uuid.uuid4().hex[:8]}"
        os.replace(target, trash)  # atomic: the target is never half-deleted
        shutil.rmtree(trash, ignore_errors=True)
    else:
        logger.info("converting %s (%s) into %s, once", gguf.name, origin["spec"], target)


def _convert_into_place(
    gguf: Path, key: str, target: Path, origin: dict[str, Any], gguf_sha: str, *, progress: bool
) -> dict[str, Any]:
    """Convert into a temporary directory beside ``target``, write the manifest, rename; the manifest."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        report = _convert_gguf(gguf, tmp, progress=progress)
        named = {p.name: sha256_file(p) for p in weight_files(tmp)}
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": key,
            "origin": origin,
            "gguf": {"file": str(gguf), "name": gguf.name, "size": gguf.stat().st_size, "sha256": gguf_sha},
            "content_hash": sha256_listing(named),
            "weight_files": {n: {"sha256": d, "size": (tmp / n).stat().st_size} for n, d in named.items()},
            "dtype": "float32",
            "model": report["model"],
            "verification": report["verification"],
            "timings_s": report["timings_s"],
            "versions": verify._versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(tmp, target)  # the target appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _convert_gguf(gguf: Path, out_dir: Path, *, progress: bool) -> dict[str, Any]:
    """Dequantize a GGUF model to fp32 safetensors in ``out_dir`` and check its logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = _Steps(total=5, progress=progress)
    with _progress_bars(progress):
        with steps("load_tokenizer", "load the tokenizer from the GGUF file"):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        size_mb = gguf.stat().st_size / 1e6
        with steps("load_gguf_model", f"load and dequantize the model from {gguf.name} ({size_mb:.0f} MB)"):
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            model.eval()
        with steps("reference_logits", "compute reference logits on a fixed prompt"):
            inputs = verify.prompt_inputs(tokenizer)
            reference = verify.prompt_logits(model, inputs)
        with steps("save", "save fp32 safetensors, tokenizer and chat template"):
            model_info = _save_dequantized(model, tokenizer, out_dir)
            del model
            gc.collect()
        with steps("reload_and_verify", "reload the saved model and compare logits"):
            reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, use_safetensors=True)
            reloaded.eval()
            verification = verify.compare(reloaded, AutoTokenizer.from_pretrained(out_dir), inputs, reference)
            del reloaded
            gc.collect()
    _say(progress, verify.summary(verification))
    verify.require_passed(verification, gguf)
    return {"verification": verification, "model": model_info, "timings_s": steps.timings()}


def _save_dequantized(model: Any, tokenizer: Any, out_dir: Path) -> dict[str, Any]:
    """Save the GGUF-loaded model as plain fp32 safetensors with its tokenizer; what the manifest says of it."""
    # The GGUF quantizer marks the model as quantized, which blocks save_pretrained and
    # would make the saved config ask for GGUF again; the tensors are already fp32.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > 10 * max_positions:
        tokenizer.model_max_length = int(max_positions)  # GGUF gives ~1e30
    model_info = {
        "architectures": list(getattr(model.config, "architectures", None) or [type(model).__name__]),
        "model_type": model.config.model_type,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
        "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
    }
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model_info
