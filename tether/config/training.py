"""Settings of the model and its fine-tuning: base model, tracking, replay, guarded selection, training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tether.config.base import _Section


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
    """LoRA fine-tuning (tether.model.train). Defaults = the CPU demo (~8 min on 2 cores with cpu-bf16)."""

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
    max_steps: int | None = Field(150, ge=1)
    num_epochs: float = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=1)
    eval_max_examples: int | None = Field(32, ge=1)
    save_every: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    early_stopping_patience: int | None = Field(2, ge=1)
    group_by_length: bool = True
    share_prompt_prefix: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"
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
