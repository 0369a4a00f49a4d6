"""Settings of promotion: the gates' thresholds and the MLflow registry."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tether.config.base import _Section


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
