"""One typed config tree, loaded from ``params.yaml`` plus an optional profile overlay.

The Prefect flows, the CLI and ``dvc.yaml`` all read settings through :func:`load_config`,
so a number means the same thing everywhere. Profiles (``configs/<name>.yaml``) hold only
the keys they change and are deep-merged over ``params.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = REPO_ROOT / "params.yaml"
PROFILES_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """A config file that cannot be used; the message says which file and what to fix."""


class _Section(BaseModel):
    # Unknown keys are almost always typos; refuse them instead of ignoring them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    raw_dir: Path = Path("data/raw")
    validated_dir: Path = Path("data/validated")
    quarantine_dir: Path = Path("data/quarantine")
    processed_dir: Path = Path("data/processed")
    reports_dir: Path = Path("data/reports")

    def resolved(self, root: Path) -> "PathsConfig":
        """Return a copy with every relative path made absolute against ``root``."""
        return PathsConfig(**{k: (v if v.is_absolute() else root / v) for k, v in self.model_dump().items()})


class GenerateConfig(_Section):
    n_items: int = Field(300, ge=20, le=100_000)
    n_users: int = Field(600, ge=10, le=5_000_000)
    min_history: int = Field(8, ge=3)
    max_history: int = Field(40, ge=3)
    start_date: date = date(2019, 1, 1)

    @model_validator(mode="after")
    def _history_bounds(self) -> "GenerateConfig":
        if self.min_history > self.max_history:
            raise ValueError(f"min_history ({self.min_history}) must be <= max_history ({self.max_history})")
        return self


class ColumnMapping(_Section):
    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = "rating"
    title: str = "title"
    genres: str | None = "genres"
    description: str | None = "description"


class GenericFormatConfig(_Section):
    interactions_file: str | None = None
    items_file: str | None = None
    columns: ColumnMapping = ColumnMapping()


class IngestConfig(_Section):
    format: Literal["auto", "movielens-100k", "movielens-latest", "generic"] = "auto"
    generic: GenericFormatConfig = GenericFormatConfig()


class ValidationConfig(_Section):
    rating_min: float = 0.5
    rating_max: float = 5.0
    min_timestamp: date = date(1990, 1, 1)
    max_future_seconds: int = Field(86_400, ge=0)
    min_history_length: int = Field(3, ge=1)
    max_title_length: int = Field(200, ge=1)
    id_pattern: str = r"^[A-Za-z0-9_.:-]{1,64}$"
    build_data_docs: bool = True

    @model_validator(mode="after")
    def _rating_range(self) -> "ValidationConfig":
        if self.rating_min > self.rating_max:
            raise ValueError(f"rating_min ({self.rating_min}) must be <= rating_max ({self.rating_max})")
        return self


class CleanConfig(_Section):
    redact_pii: bool = True
    k_core_users: int = Field(3, ge=1)
    k_core_items: int = Field(2, ge=1)


class ExamplesConfig(_Section):
    history_length: int = Field(5, ge=1, le=200)
    include_genres: bool = False
    system_prompt: str = (
        "You are a movie recommender. Given the movies a user watched, in order, "
        "reply with the title of the movie they will watch next."
    )
    max_train_examples_per_user: int | None = Field(None, ge=1)


class ModelConfig(_Section):
    base_model: str = "embedded:smollm2-135m-instruct"
    cache_dir: Path | None = None
    trust_remote_code: bool = False

    def resolved_cache_dir(self) -> Path:
        """The model cache: config value, else ``$TETHER_CACHE``, else ``~/.cache/tether``."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        return Path(os.environ.get("TETHER_CACHE", Path.home() / ".cache" / "tether")).expanduser()


class TrackingConfig(_Section):
    uri: str | None = None
    experiment: str = "tether"


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

    @field_validator("seed")
    @classmethod
    def _seed_non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("seed must be >= 0")
        return v

    def config_hash(self) -> str:
        """A short, stable hash of every setting (for lineage tags)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def profile_path(profile: str) -> Path:
    """The overlay file of a named profile; raises with the list of known profiles."""
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r}: expected one of {known} (files in {PROFILES_DIR})")
    return path


def available_profiles() -> list[str]:
    return ["cpu"] + sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_config(
    params: Path | str | None = None,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> TetherConfig:
    """Load ``params.yaml``, overlay a profile and explicit overrides, and validate.

    Args:
        params: the base params file (default: the repository's ``params.yaml``).
        profile: a profile name from ``configs/`` (``cpu`` or None = the base file alone).
        overrides: nested dict of settings applied last (tests, CLI flags).

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: naming the file and each bad setting with what to fix.
    """
    base_path = Path(params) if params is not None else DEFAULT_PARAMS
    data = _read_yaml(base_path)
    sources = [str(base_path)]
    if profile and profile != "cpu":
        ppath = profile_path(profile)
        data = _deep_merge(data, _read_yaml(ppath))
        sources.append(str(ppath))
    if overrides:
        data = _deep_merge(data, overrides)
        sources.append("overrides")
    try:
        return TetherConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (typo? see params.yaml for the known keys)"
            lines.append(f"  {where}: {msg} (got {err.get('input')!r})")
        raise ConfigError(f"invalid config from {' + '.join(sources)}:\n" + "\n".join(lines)) from None
