"""Settings of the evaluation: perplexity, the drift panel's sources, generation health, the protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tether.config.base import _Section


class PerplexityConfig(_Section):
    """How perplexity is measured on every text source of the drift panel (tether.eval.perplexity)."""

    window: int = Field(512, ge=8)
    stride: int = Field(256, ge=1)
    # Windows per forward pass; each keeps up to window x vocab logits, so keep it small on a CPU.
    batch_size: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _stride_le_window(self) -> "PerplexityConfig":
        if self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must be <= window ({self.window}): tokens would be skipped")
        return self


SOURCE_NAME = r"[a-z][a-z0-9_]{0,39}"


class DriftSourceConfig(_Section):
    """One source of the drift panel (tether.eval.sources): measured for base and candidate, gated on its own.

    ``source`` is a folder or file of UTF-8 text (relative to the project root; a DVC-tracked
    folder works, ``dvc pull`` it first), ``builtin:heldout-prose`` (the held-out half of the
    prose packaged with Tether, never used for replay), ``builtin:python-docs`` (the Python reference
    documentation of the running interpreter), ``builtin:package-docs`` (the descriptions of
    the installed packages Tether depends on), ``builtin:self-samples`` (the base model's own
    answers to general chat prompts: the candidate's NLL on them minus the base's estimates
    KL(base || candidate) in chat mode), or ``hf:DATASET[/CONFIG][:SPLIT]`` (a Hugging Face
    dataset, where the network allows; ``text_field`` names its text column).
    """

    name: str
    source: str
    max_tokens: int | None = Field(3072, ge=16)
    max_drift: float | None = Field(None, ge=0.0)
    text_field: str = "text"
    n_samples: int = Field(16, ge=1, le=1000)
    max_new_tokens: int = Field(128, ge=8, le=2048)

    @field_validator("name")
    @classmethod
    def _name_valid(cls, v: str) -> str:
        import re

        if not re.fullmatch(SOURCE_NAME, v):
            raise ValueError(f"source name {v!r}: use lower-case letters, digits and '_' (it becomes a metric name)")
        return v

    @field_validator("source")
    @classmethod
    def _source_valid(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("source is empty: give a folder, a file, builtin:<name> or hf:<dataset>")
        if v.startswith("builtin:") and v not in BUILTIN_SOURCES:
            raise ValueError(f"unknown built-in source {v!r}; known: {list(BUILTIN_SOURCES)}")
        if v.startswith("hf:") and not v[3:].split(":")[0].strip("/"):
            raise ValueError(f"{v!r}: expected hf:DATASET[/CONFIG][:SPLIT], e.g. hf:wikitext/wikitext-2-raw-v1:test")
        return v

    @property
    def kind(self) -> str:
        """``self_samples``, ``builtin``, ``hf`` or ``path``."""
        if self.source == "builtin:self-samples":
            return "self_samples"
        return "builtin" if self.source.startswith("builtin:") else "hf" if self.source.startswith("hf:") else "path"


BUILTIN_SOURCES = ("builtin:heldout-prose", "builtin:python-docs", "builtin:package-docs", "builtin:self-samples")


def _default_panel() -> list[DriftSourceConfig]:
    return [
        DriftSourceConfig(name="heldout_prose", source="builtin:heldout-prose"),
        DriftSourceConfig(name="python_docs", source="builtin:python-docs"),
        DriftSourceConfig(name="package_docs", source="builtin:package-docs"),
        DriftSourceConfig(name="self_samples", source="builtin:self-samples"),
    ]


class GenerationConfig(_Section):
    """Generation health on golden prompts and the valid-item rate (tether.eval.generation)."""

    prompts_file: Path | None = None
    n_prompts: int | None = Field(8, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(32, ge=1)
    valid_item_users: int = Field(30, ge=1)
    valid_item_max_new_tokens: int = Field(24, ge=1)


class EvalConfig(_Section):
    """Recommendation evaluation, pinned protocol (docs/architecture.md): leave-last-out on the test split."""

    n_users: int | None = Field(80, ge=1)
    candidates: Literal["sampled", "full"] = "sampled"
    n_negatives: int = Field(19, ge=1)
    score: Literal["mean", "sum"] = "mean"
    ks: list[int] = Field(default_factory=lambda: [5, 10], min_length=1)
    batch_size: int = Field(32, ge=1)
    head_share: float = Field(0.2, gt=0.0, lt=1.0)
    bootstrap_samples: int = Field(1000, ge=100)
    ci_level: float = Field(0.95, gt=0.5, lt=1.0)
    perplexity: PerplexityConfig = PerplexityConfig()
    drift_panel: list[DriftSourceConfig] = Field(default_factory=_default_panel, min_length=1)
    generation: GenerationConfig = GenerationConfig()

    @field_validator("drift_panel")
    @classmethod
    def _unique_sources(cls, v: list[DriftSourceConfig]) -> list[DriftSourceConfig]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"drift_panel: source names must be unique, repeated: {dupes}")
        return v
