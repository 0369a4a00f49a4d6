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


class ModelConfig(_Section):
    base_model: str = "embedded:smollm2-135m-instruct"
    cache_dir: Path | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"device {v!r}: expected auto, cpu, cuda, cuda:<index> or mps")
        return v

    def resolved_cache_dir(self) -> Path:
        """The model cache: config value, else ``$TETHER_CACHE``, else ``~/.cache/tether``."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        return Path(os.environ.get("TETHER_CACHE", Path.home() / ".cache" / "tether")).expanduser()


class TrackingConfig(_Section):
    uri: str | None = None
    experiment: str = "tether"


class ReplayConfig(_Section):
    """Forgetting protection: general-text rows mixed into the fine-tuning set (tether.model.distill).

    ``mode: tokens`` trains replay rows on their own next tokens (plain language modelling);
    ``mode: distill`` trains them towards the base model's next-token distribution instead
    (Learning without Forgetting: KL(base || model) at every position, the base being the same
    model with the adapter disabled), so replay anchors the model to what it was rather than
    teaching it the replay text's style.
    """

    ratio: float = Field(0.25, ge=0.0, lt=1.0)
    corpus_dir: Path = Path("tether/resources/corpus/replay")
    chunk_tokens: int = Field(128, ge=8, le=8192)
    mode: Literal["tokens", "distill"] = "distill"
    distill_weight: float = Field(1.0, gt=0.0, le=100.0)
    # Chat-formatted replay rows: the base's own answers (sampled, fixed seed) to general prompts
    # that neither gate nor selection uses, distilled like text rows. Used with mode: distill only
    # (learning sampled text by its tokens would teach the base's own noise back to it).
    chat_samples: int = Field(24, ge=0, le=10_000)
    chat_max_new_tokens: int = Field(96, ge=8, le=2048)
    # Also distil the recommendation prompts' own tokens (the completion keeps its cross-entropy).
    distill_prompts: bool = False


class SelectionConfig(_Section):
    """Guarded selection over checkpoints x adapter scales (tether.selection).

    Every trial is scored on the validation split (ranking) and on the *selection* half of the
    drift panel, which shares no document or sample with the half the gate measures; the trial
    with the best primary metric among those whose every source stays within its drift limit
    is saved as the adapter.
    """

    enabled: bool = True
    scales: list[float] = Field(default_factory=lambda: [1.0, 0.75, 0.5], min_length=1)
    # evaluated = every checkpoint saved at an evaluation step, plus the final weights; last = the final only
    checkpoints: Literal["evaluated", "last"] = "last"
    n_users: int = Field(24, ge=1)
    n_negatives: int = Field(19, ge=1)
    panel_max_tokens: int = Field(1024, ge=16)
    n_samples: int | None = Field(8, ge=1)

    @field_validator("scales")
    @classmethod
    def _scales_valid(cls, v: list[float]) -> list[float]:
        if any(not (0.0 < s <= 2.0) for s in v) or len(set(v)) != len(v):
            raise ValueError(f"scales must be distinct numbers in (0, 2], got {v}")
        return v


class TrainConfig(_Section):
    """LoRA fine-tuning (tether.model.train). Defaults = the CPU demo (~3-4 min on 2 cores)."""

    lora_rank: int = Field(8, ge=1, le=1024)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )
    layers_to_transform: list[int] | Literal["upper_half", "all"] | None = "upper_half"
    learning_rate: float = Field(2e-3, gt=0, le=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    eval_batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(256, ge=16)
    max_steps: int | None = Field(75, ge=1)
    num_epochs: float = Field(1.0, gt=0)
    eval_every: int = Field(25, ge=1)
    eval_max_examples: int | None = Field(32, ge=1)
    save_every: int = Field(25, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    early_stopping_patience: int | None = Field(2, ge=1)
    group_by_length: bool = True
    seed: int | None = Field(None, ge=0)
    output_dir: Path = Path("outputs/train")
    replay: ReplayConfig = ReplayConfig()
    selection: SelectionConfig = SelectionConfig()

    @field_validator("layers_to_transform")
    @classmethod
    def _layers_valid(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("layers_to_transform: an empty list trains nothing; use null for all layers")
            if any(i < 0 for i in v) or len(set(v)) != len(v):
                raise ValueError("layers_to_transform: layer indices must be distinct and >= 0")
        return v

    @model_validator(mode="after")
    def _save_on_eval_steps(self) -> "TrainConfig":
        # Early stopping restores the best checkpoint, so a checkpoint must exist at every evaluation.
        if self.early_stopping_patience is not None and self.save_every % self.eval_every:
            raise ValueError(
                f"save_every ({self.save_every}) must be a multiple of eval_every ({self.eval_every}) "
                "when early_stopping_patience is set (the best checkpoint is restored at the end)"
            )
        return self


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
    """Recommendation evaluation, pinned protocol (DESIGN.md): leave-last-out on the test split."""

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


class GateConfig(_Section):
    """Thresholds that turn numbers into promotion verdicts (tether.eval.gates)."""

    primary_metric: str = "ndcg_at_10"
    max_ppl_drift: float = Field(0.05, ge=0.0)
    # Golden-prompt KL check: the candidate's mean per-token NLL on the base's own greedy answers to
    # the golden prompts minus the base's (nats per token, ~KL(base || candidate)).
    max_golden_kl: float = Field(0.10, ge=0.0)
    min_margin_vs_popularity: float = 0.0
    min_margin_vs_base: float = 0.0
    min_margin_vs_champion: float = 0.0
    # What the beats_* quality gates compare with the margin: the difference of the point
    # estimates, or the lower bound of its paired bootstrap CI (the lead must be established).
    decide_on: Literal["point", "ci_lower"] = "point"
    valid_item_rate_floor: float = Field(0.5, ge=0.0, le=1.0)
    health_tolerances: dict[str, float | tuple[float, float]] = Field(
        default_factory=lambda: {
            "distinct_1": 0.10,
            "distinct_2": 0.10,
            "repeated_4gram_rate": 0.10,
            "empty_rate": 0.05,
            "length_ratio": (0.5, 2.0),
        }
    )


class RegistryConfig(_Section):
    """The MLflow model registry (tether.registry). "Better" is ``gates.primary_metric``."""

    name: str = Field("tether-recommender", min_length=1, max_length=200)
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    # How promotions serialize: file = a lock file beside a local (sqlite/file) store; registry =
    # a lease held as a registered model (atomic create) for remote servers; auto picks by URI.
    lock: Literal["auto", "file", "registry"] = "auto"
    lock_timeout_s: float = Field(120.0, gt=0)

    @field_validator("champion_alias", "challenger_alias")
    @classmethod
    def _alias_valid(cls, v: str) -> str:
        import re

        # MLflow refuses aliases like "v3" / "latest" (they mean versions), and odd characters.
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,254}", v) or v.lower() == "latest" or re.fullmatch(r"[vV]\d+", v):
            raise ValueError(f"alias {v!r}: use letters, digits, '_' or '-', not 'latest' nor 'v<number>'")
        return v

    @model_validator(mode="after")
    def _aliases_differ(self) -> "RegistryConfig":
        if self.champion_alias == self.challenger_alias:
            raise ValueError(f"champion_alias and challenger_alias must differ (both {self.champion_alias!r})")
        return self


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


def profile_path(profile: str, profiles_dir: Path = PROFILES_DIR) -> Path:
    """The overlay file of a named profile; raises with the list of known profiles."""
    path = profiles_dir / f"{profile}.yaml"
    known = available_profiles(profiles_dir)
    # A profile is a name, never a path: "../params" or "/etc/x" must not read files outside profiles_dir.
    if profile not in known or not path.is_file():
        raise ConfigError(f"unknown profile {profile!r}: expected one of {known} (files in {profiles_dir})")
    return path


def available_profiles(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    """Profile names: ``cpu`` (params.yaml alone) plus every ``configs/*.yaml``."""
    return ["cpu"] + sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def is_params_yaml_run(profile: str | None, params: str | Path | None, root: str | Path) -> bool:
    """Whether a run uses ``<root>/params.yaml`` itself: no profile, no other params file.

    Only such a run may write and record the DVC stages' outputs: ``dvc.lock`` records
    params.yaml's values, so numbers made under other settings must not be recorded against them.
    """
    params_path = Path(params) if params else Path(root) / "params.yaml"
    return profile is None and params_path.resolve() == (Path(root) / "params.yaml").resolve()


def load_config(
    params: Path | str | None = None,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> TetherConfig:
    """Load ``params.yaml``, overlay a profile and explicit overrides, and validate.

    Args:
        params: the base params file (default: the repository's ``params.yaml``).
        profile: a profile name from ``configs/`` beside the params file (falling back to
            the repository's ``configs/``); ``cpu`` or None = the base file alone.
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
        local_profiles = base_path.resolve().parent / "configs"
        ppath = profile_path(profile, local_profiles if local_profiles.is_dir() else PROFILES_DIR)
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
