"""The whole config tree: one section per stage, plus the seed."""

from __future__ import annotations

import hashlib
import json

from pydantic import field_validator

from tether.config.base import _Section
from tether.config.data import (
    CleanConfig,
    ExamplesConfig,
    GenerateConfig,
    IngestConfig,
    PathsConfig,
    ValidationConfig,
)
from tether.config.evaluation import EvalConfig
from tether.config.promotion import GateConfig, RegistryConfig
from tether.config.training import ModelConfig, TrackingConfig, TrainConfig


class TetherConfig(_Section):
    seed: int = 1234
    paths: PathsConfig = PathsConfig()
    generate: GenerateConfig = GenerateConfig()
    ingest: IngestConfig = IngestConfig()
    validation: ValidationConfig = ValidationConfig()
    clean: CleanConfig = CleanConfig()
    examples: ExamplesConfig = ExamplesConfig()
    model: ModelConfig = ModelConfig()
    tracking: TrackingConfig = TrackingConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gates: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()

    @field_validator("seed")
    @classmethod
    def _seed_non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("seed must be >= 0")
        return v

    def config_hash(self) -> str:
        """A short, stable hash of every setting (for lineage tags)."""
        # Not tether.io.sha256_json: that one keeps non-ASCII text as is (ensure_ascii=False), which
        # would change the hash of a config with such text and so every recorded config_hash.
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
