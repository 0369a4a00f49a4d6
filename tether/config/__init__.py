"""One typed config tree, loaded from ``params.yaml`` plus an optional profile overlay.

The Prefect flows, the CLI and ``dvc.yaml`` all read settings through :func:`load_config`,
so a number means the same thing everywhere. Profiles (``configs/<name>.yaml``) hold only
the keys they change and are deep-merged over ``params.yaml``.

=====================  =============================================================
``data.py``            paths, sample data, ingestion, validation, cleaning, examples
``training.py``        base model, tracking, replay, guarded selection, fine-tuning
``evaluation.py``      perplexity, drift-panel sources, generation health, protocol
``promotion.py``       gate thresholds, the MLflow registry
``tree.py``            :class:`TetherConfig`, the whole tree
``loading.py``         :func:`load_config`, profiles, ``REPO_ROOT``
``errors.py``          :class:`ConfigError`
=====================  =============================================================

A new setting goes into its section's class (and ``params.yaml``, with a comment).
"""

from tether.config.base import _Section
from tether.config.data import (
    CleanConfig,
    ColumnMapping,
    ExamplesConfig,
    GenerateConfig,
    GenericFormatConfig,
    IngestConfig,
    PathsConfig,
    ValidationConfig,
)
from tether.config.errors import ConfigError
from tether.config.evaluation import (
    BUILTIN_SOURCES,
    SOURCE_NAME,
    DriftSourceConfig,
    EvalConfig,
    GenerationConfig,
    PerplexityConfig,
    _default_panel,
)
from tether.config.loading import (
    DEFAULT_PARAMS,
    PROFILES_DIR,
    REPO_ROOT,
    _deep_merge,
    _read_yaml,
    available_profiles,
    is_params_yaml_run,
    load_config,
    profile_path,
)
from tether.config.promotion import GateConfig, RegistryConfig
from tether.config.training import ModelConfig, ReplayConfig, SelectionConfig, TrackingConfig, TrainConfig
from tether.config.tree import TetherConfig

__all__ = [
    "BUILTIN_SOURCES", "DEFAULT_PARAMS", "PROFILES_DIR", "REPO_ROOT", "SOURCE_NAME",
    "CleanConfig", "ColumnMapping", "ConfigError", "DriftSourceConfig", "EvalConfig", "ExamplesConfig",
    "GateConfig", "GenerateConfig", "GenerationConfig", "GenericFormatConfig", "IngestConfig", "ModelConfig",
    "PathsConfig", "PerplexityConfig", "RegistryConfig", "ReplayConfig", "SelectionConfig", "TetherConfig",
    "TrackingConfig", "TrainConfig", "ValidationConfig",
    "available_profiles", "is_params_yaml_run", "load_config", "profile_path",
    "_Section", "_deep_merge", "_default_panel", "_read_yaml",
]
