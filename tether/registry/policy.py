"""The promotion policy: whether a candidate becomes ``@champion``, as a pure function of plain data.

:func:`decide` reads no store and writes nothing: it takes the candidate and the champion as
:class:`VersionFacts` (what their tags record), the gates' outcome as :class:`GateSummary` and
the config, and returns a :class:`PolicyDecision` with its reasons. :func:`tether.registry.promote`
reads the facts inside the promotion lock, calls it, and only writes what it decided.

The rules, in order (the first that applies decides):

1. the candidate already is the champion: ``already_champion``;
2. a blocking gate failed: ``blocked`` (the gates' reasons);
3. the candidate's primary metric is not finite: ``blocked``;
4. there is no champion: ``champion`` (the first one);
5. the champion records another primary metric: ``blocked`` (not comparable; manual promotion);
6. the two were measured under different (or unknown) evaluation protocols: ``blocked`` with
   the settings that differ (:func:`tether.eval.gating.champion_protocol_mismatch`); when neither
   records a protocol (the registry API used without one) the numbers are compared;
7. the candidate must beat the champion's primary metric by ``gates.min_margin_vs_champion``
   (:func:`tether.eval.gates.beats_reference_gate`: a tie passes at margin 0, a non-finite
   champion value never passes): ``champion`` or ``blocked``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tether.config import TetherConfig
from tether.eval.gates import beats_reference_gate, summarize
from tether.eval.metrics import as_float
from tether.registry.store import TAG_PRIMARY, TAG_PRIMARY_VALUE, TAG_PROTOCOL, TAG_PROTOCOL_HASH, protocol_of

if TYPE_CHECKING:
    from tether.eval.gates import GateResult

Outcome = Literal["champion", "already_champion", "blocked"]


@dataclass(frozen=True)
class VersionFacts:
    """A registered version as the policy sees it.

    Attributes:
        version: its number.
        metric: its primary metric's value (NaN when unknown).
        metric_name: the primary metric it records (its ``primary_metric`` tag).
        protocol_hash: its ``eval_protocol_hash`` tag (None = registered without a protocol).
        protocol: its ``eval_protocol`` settings (None = not recorded).
    """

    version: str
    metric: float
    metric_name: str | None
    protocol_hash: str | None = None
    protocol: Mapping[str, Any] | None = None

    @classmethod
    def from_tags(cls, version: Any, tags: Mapping[str, str], metric: float | None = None) -> VersionFacts:
        """The facts a version's tags record.

        Args:
            version: its number.
            tags: its tags.
            metric: the primary metric's value to use (None = its ``primary_metric_value`` tag).

        Returns:
            The facts.
        """
        return cls(
            version=str(version),
            metric=as_float(tags.get(TAG_PRIMARY_VALUE) if metric is None else metric),
            metric_name=tags.get(TAG_PRIMARY),
            protocol_hash=tags.get(TAG_PROTOCOL_HASH),
            protocol=protocol_of(tags),
        )


@dataclass(frozen=True)
class GateSummary:
    """The gates' outcome for a candidate.

    Attributes:
        passed: every blocking gate passed.
        reasons: why blocking gates failed (each failure's reason); empty strings are ignored.
    """

    passed: bool
    reasons: tuple[str, ...] = ()

    @classmethod
    def of(cls, results: Sequence[GateResult]) -> GateSummary:
        """The summary of gate results (:func:`tether.eval.gates.summarize`).

        Args:
            results: every gate's result.

        Returns:
            Passed or not, with the blocking failures' reasons.
        """
        passed, failures = summarize(results)
        return cls(passed, tuple(g.reason for g in failures))


@dataclass(frozen=True)
class PolicyDecision:
    """What the policy decided.

    Attributes:
        outcome: ``champion`` (move ``@champion`` to the candidate), ``already_champion`` or ``blocked``.
        reasons: why, the gates' reasons first.
    """

    outcome: Outcome
    reasons: tuple[str, ...] = field(default=())

    @property
    def blocked(self) -> bool:
        """Whether the candidate is blocked."""
        return self.outcome == "blocked"


def protocol_mismatch(candidate: VersionFacts, champion: VersionFacts, metric: str) -> str | None:
    """Why the champion's numbers are not comparable with the candidate's (rule 6), or None.

    Args:
        candidate: the candidate.
        champion: the champion.
        metric: the metric that would be compared.

    Returns:
        None when comparable (equal fingerprints, or neither records one), else one sentence.
    """
    if candidate.protocol_hash is None and champion.protocol_hash is None:
        return None  # neither records a protocol (the API used without one): compared as before
    from tether.eval.gating import champion_protocol_mismatch

    return champion_protocol_mismatch(
        {TAG_PROTOCOL_HASH: champion.protocol_hash, TAG_PROTOCOL: champion.protocol, "version": champion.version},
        candidate.protocol, metric, candidate_hash=candidate.protocol_hash, candidate_version=candidate.version,
    )


def decide(
    candidate: VersionFacts, champion: VersionFacts | None, gate_results: GateSummary, cfg: TetherConfig
) -> PolicyDecision:
    """Whether the candidate becomes ``@champion`` (the rules of the module docstring, in order).

    Args:
        candidate: the candidate (its metric: the value being promoted).
        champion: the current champion, or None.
        gate_results: the candidate's gates.
        cfg: the config (``gates.primary_metric``, ``gates.min_margin_vs_champion``, ``registry.champion_alias``).

    Returns:
        The decision with its reasons.
    """
    primary, alias = cfg.gates.primary_metric, cfg.registry.champion_alias
    why = tuple(str(r) for r in gate_results.reasons if str(r).strip())
    value = candidate.metric

    def blocked(*reasons: str) -> PolicyDecision:
        return PolicyDecision("blocked", (*why, *reasons))

    if champion is not None and champion.version == candidate.version:
        return PolicyDecision("already_champion", (*why, f"version {candidate.version} is already @{alias}"))
    if not gate_results.passed:
        return PolicyDecision("blocked", why or ("a blocking gate failed",))
    if not math.isfinite(value):
        return blocked(f"{primary} is {value}: a candidate without a finite primary metric is never champion")
    if champion is None:
        return PolicyDecision("champion", (*why, f"first champion ({primary} {value:.4g})"))
    if champion.metric_name != primary:
        return blocked(
            f"champion version {champion.version} records {champion.metric_name!r}, not {primary!r}: not comparable; "
            "use manual_promote after a review"
        )
    if (mismatch := protocol_mismatch(candidate, champion, primary)) is not None:
        return blocked(mismatch)
    gate = beats_reference_gate(primary, value, champion.metric, "champion", cfg.gates.min_margin_vs_champion)
    return PolicyDecision("champion" if gate.passed else "blocked", (*why, f"champion version {champion.version}: {gate.reason}"))
