"""Settings of the data path: paths, sample data, ingestion, validation, cleaning, examples."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tether.config.base import _Section
from tether.io import resolve


class PathsConfig(_Section):
    raw_dir: Path = Path("data/raw")
    validated_dir: Path = Path("data/validated")
    quarantine_dir: Path = Path("data/quarantine")
    processed_dir: Path = Path("data/processed")
    reports_dir: Path = Path("data/reports")

    def resolved(self, root: Path) -> "PathsConfig":
        """Return a copy with every relative path made absolute against ``root``."""
        return PathsConfig(**{k: resolve(root, v) for k, v in self.model_dump().items()})


class GenerateConfig(_Section):
    n_items: int = Field(300, ge=20, le=100_000)
    n_users: int = Field(600, ge=10, le=5_000_000)
    min_history: int = Field(8, ge=3)
    max_history: int = Field(40, ge=3)
    start_date: date = date(2019, 1, 1)
    # Learnable structure (see tether.data.generate): share of catalog items that are
    # parts of a numbered series, and how often a user with an unfinished series watches
    # its next part next. Series continuations are what a small model learns first.
    series_share: float = Field(0.5, ge=0.0, le=0.9)
    continue_prob: float = Field(0.7, ge=0.0, le=1.0)
    # How often a fresh pick comes from one of the user's 1-2 favourite genres.
    favourite_genre_prob: float = Field(0.7, ge=0.0, le=1.0)
    # Zipf exponent of item popularity (0 = uniform; ~1 = MovieLens-like skew).
    popularity_exponent: float = Field(1.0, ge=0.0, le=3.0)

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

    @field_validator("id_pattern")
    @classmethod
    def _pattern_compiles(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"id_pattern {v!r} is not a valid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _rating_range(self) -> "ValidationConfig":
        if self.rating_min > self.rating_max:
            raise ValueError(f"rating_min ({self.rating_min}) must be <= rating_max ({self.rating_max})")
        return self


class CleanConfig(_Section):
    redact_pii: bool = True
    k_core_users: int = Field(3, ge=1)
    k_core_items: int = Field(2, ge=1)
    # MovieLens stores "Matrix, The (1999)"; prompts and generations read "The Matrix (1999)".
    normalize_titles: bool = True
    # Trailing articles moved to the front; add foreign ones (La, Le, Les, Il, Der, Die, Das, El) for real MovieLens.
    title_articles: tuple[str, ...] = ("The", "A", "An")
    # Catalog items left with no interaction can never be a target and the popularity
    # baseline cannot rank them: drop them (recorded in the cleaning quarantine).
    drop_unused_items: bool = True


class ExamplesConfig(_Section):
    history_length: int = Field(5, ge=1, le=200)
    include_genres: bool = False
    system_prompt: str = (
        "You are a movie recommender. Given the movies a user watched, in order, "
        "reply with the title of the movie they will watch next."
    )
    max_train_examples_per_user: int | None = Field(None, ge=1)
    # The user message; "{history}" becomes one "- Title (Year)" line per history item.
    # Short on purpose: every prompt token costs training time on a CPU.
    prompt_template: str = "Movies the user watched, oldest first:\n{history}\nWhich movie will they watch next?"
    # stats.json lengths in tokens of the base model's chat template (loads its tokenizer);
    # false = whitespace word counts, for tests and machines without the model.
    token_stats: bool = True

    @field_validator("prompt_template")
    @classmethod
    def _template_has_history(cls, v: str) -> str:
        if "{history}" not in v:
            raise ValueError("prompt_template must contain the placeholder {history}")
        return v
