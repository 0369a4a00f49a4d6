"""The model cache on disk: its layout, the weights' content hash, and whether a conversion is sound.

Layout under ``model.cache_dir``::

    models/<key>-<gguf sha256[:12]>/   one converted GGUF model: fp32 safetensors, tokenizer,
                                       chat template and the manifest (tether_model.json)
    models/.<target>.lock              serializes converters of that target
    models/.<target>.tmp-*/            a conversion in progress (renamed into place when done)
    file-hashes.json                   sha256 of files keyed by (path, size, mtime)

Every resolved model carries a ``content_hash``: sha256 over the sha256sum-style listing
(``"<sha256>  <file name>\\n"``, sorted by name) of its ``*.safetensors`` files, so the same
weights give the same hash wherever they live. File hashes are cached by (path, size, mtime) in
``file-hashes.json``, so resolving again costs milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from tether.io import atomic_write_text, sha256_file, sha256_listing

logger = logging.getLogger(__name__)

MANIFEST_NAME = "tether_model.json"
MANIFEST_FORMAT = 1
HASH_CACHE_NAME = "file-hashes.json"


def cache_name(stem: str) -> str:
    """A file-name-safe cache key for a model file's stem.

    The key becomes a directory name under ``<cache_dir>/models/``, so it holds only
    ``[a-z0-9._-]``, never starts or ends with ``.`` or ``-`` (no ``..``, no hidden or
    option-like names) and is never empty.
    """
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "model"


def converted_dir(cache_dir: Path, key: str, gguf_sha: str) -> Path:
    """Where the conversion of the GGUF file with sha256 ``gguf_sha`` under cache key ``key`` lives."""
    return Path(cache_dir) / "models" / f"{key}-{gguf_sha[:12]}"


def weight_files(directory: Path) -> list[Path]:
    """The ``*.safetensors`` weight files of a model directory, sorted by name."""
    return sorted(p for p in Path(directory).glob("*.safetensors") if p.is_file())


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
        digest = sha256_file(real)
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
            atomic_write_text(self.file, json.dumps(live, indent=1, sort_keys=True))
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
    named = {p.name: (cache.sha256(p) if cache else sha256_file(p)) for p in files}
    if cache:
        cache.save()
    return sha256_listing(named)


def gguf_sha256(gguf: Path, cache_dir: Path, rehash: bool) -> str:
    """The GGUF file's sha256, through the hash cache (0.1 GB are not re-read on every resolve)."""
    hashes = _HashCache(cache_dir, rehash)
    digest = hashes.sha256(gguf)
    hashes.save()
    return digest


def record_hashes(directory: Path, named_digests: dict[str, str], cache_dir: Path) -> None:
    """Remember the sha256 of files just written in ``directory``, so the next resolve does not re-hash them."""
    hashes = _HashCache(cache_dir)
    for name, digest in named_digests.items():
        hashes.record(directory / name, digest)
    hashes.save()


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
    if sha256_listing({name: str(meta.get("sha256")) for name, meta in recorded.items()}) != manifest.get("content_hash"):
        return "the manifest's content_hash does not match its weight files"
    cache = _HashCache(cache_dir, rehash)
    for name, meta in recorded.items():
        if cache.sha256(target / name) != meta.get("sha256"):
            cache.save()
            return f"{name} does not match its sha256 in the manifest (modified or corrupted)"
    cache.save()
    return None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object read from ``path`` (a manifest, a config.json); ValueError when it is not an object."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def dir_size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
