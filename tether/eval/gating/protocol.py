"""The evaluation protocol's fingerprint, and whether a champion's numbers compare with the candidate's.

A ranking number (NDCG, HR, MRR) compares with another only when both were measured the same
way: same ranking settings, test data, raw data, base model and :data:`PROTOCOL_VERSION`
(:func:`protocol_settings`). Their hash (:func:`protocol_fingerprint`) is recorded on every
registered version; :func:`champion_protocol_mismatch` says why a champion cannot be compared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.eval.evaluate import Evaluation

# Bump when the scoring or ranking-metric code changes what a number means (another score of a
# title, another candidate sampler): every champion measured before then stops being comparable.
PROTOCOL_VERSION = 1
# The ``evaluation.protocol`` settings that change a ranking number. Batch sizes, ``ks``,
# ``head_share`` and the perplexity / generation settings do not change NDCG, HR or MRR.
RANKING_PROTOCOL_KEYS = ("candidates", "n_negatives", "n_users", "score", "seed")
# Keys of the champion mapping (build_gates) and tag names of a registered version (tether.registry).
PROTOCOL_HASH_KEY = "eval_protocol_hash"
PROTOCOL_KEY = "eval_protocol"


def protocol_settings(evaluation: Evaluation, lineage: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that decides whether two ranking numbers (NDCG, HR, MRR) can be compared.

    The ranking settings of the evaluation protocol (:data:`RANKING_PROTOCOL_KEYS`;
    ``n_negatives`` is None with ``candidates: full``, where it plays no part), the processed
    test data the numbers were computed on (``evaluation.info["hashes"]["test_data"]``), the raw
    data version (``lineage["data_hash"]``, from ``data.dvc``), the base model's weights hash
    (the evaluation's, else the lineage's) and :data:`PROTOCOL_VERSION`.

    Args:
        evaluation: the evaluation (its ``protocol`` and ``info``).
        lineage: the run's lineage tags (:func:`tether.tracking.lineage_tags`).

    Returns:
        A flat, JSON-safe dict; :func:`protocol_hash` of it is the fingerprint.
    """
    protocol = evaluation.protocol or {}
    settings: dict[str, Any] = {k: protocol.get(k) for k in RANKING_PROTOCOL_KEYS}
    if settings["candidates"] == "full":
        settings["n_negatives"] = None
    info = evaluation.info or {}
    settings["test_data_sha256"] = (info.get("hashes") or {}).get("test_data")
    settings["data_hash"] = lineage.get("data_hash")
    settings["base_model_hash"] = info.get("base_model_hash") or lineage.get("base_model_hash")
    settings["protocol_version"] = PROTOCOL_VERSION
    return settings


def protocol_hash(settings: Mapping[str, Any]) -> str:
    """sha256 of the settings as sorted, compact JSON: the same settings give the same hash, whatever their order.

    Not :func:`tether.io.sha256_json` (other separators and escaping): registered versions record
    this exact digest, so it must not change.
    """
    text = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def protocol_fingerprint(evaluation: Evaluation, lineage: Mapping[str, Any]) -> str:
    """The protocol fingerprint of an evaluation: :func:`protocol_hash` of :func:`protocol_settings`.

    Two evaluations with the same fingerprint measured their ranking numbers the same way
    (same candidates, users, score rule, seed, test data and base model), so their numbers compare.
    It is recorded on every registered version as the ``eval_protocol_hash`` tag and in the gate
    report's lineage.
    """
    return protocol_hash(protocol_settings(evaluation, lineage))


def _show(value: Any) -> str:
    if value is None:
        return "none"
    text = str(value)
    # Content hashes: a prefix is enough to tell them apart.
    return text[:12] if len(text) > 16 and all(c in "0123456789abcdef." for c in text.lower()) else text


def protocol_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The settings that differ, as ``"n_negatives 19 -> 99"`` (hashes shortened), sorted by name."""
    keys = sorted(set(before) | set(after))
    return [f"{k} {_show(before.get(k))} -> {_show(after.get(k))}" for k in keys if before.get(k) != after.get(k)]


def champion_protocol_mismatch(
    champion: Mapping[str, Any],
    candidate_protocol: Mapping[str, Any] | None,
    metric: str,
    *,
    candidate_hash: str | None = None,
    candidate_version: str | None = None,
) -> str | None:
    """Why the champion's numbers cannot be compared with the candidate's, or None when they can.

    They can only when both were measured under the same protocol: equal fingerprints. A
    champion that records none (a version registered before fingerprints were recorded) has an
    unknown protocol and is not comparable either: the check fails closed.

    Args:
        champion: the champion as :func:`~tether.eval.gating.build_gates` takes it, with
            ``eval_protocol_hash`` (None or absent = unknown), ``eval_protocol`` (its settings, to
            name the differences; optional) and ``name`` or ``version``.
        candidate_protocol: the candidate's :func:`protocol_settings` (None = not known).
        metric: the metric that would be compared (named in the reason).
        candidate_hash: the candidate's fingerprint when already known (a registry tag);
            default :func:`protocol_hash` of ``candidate_protocol``.
        candidate_version: the candidate's registry version, for the manual-promotion command.

    Returns:
        None when comparable, else one sentence: what differs and what to do.
    """
    champion_hash = champion.get(PROTOCOL_HASH_KEY) or None
    if candidate_hash is None and candidate_protocol is not None:
        candidate_hash = protocol_hash(candidate_protocol)
    if champion_hash is not None and champion_hash == candidate_hash:
        return None
    name = champion.get("name") or (f"v{champion['version']}" if champion.get("version") is not None else "")
    who = f"champion {name}".rstrip()
    if champion_hash is None:
        head = f"{who} records no evaluation protocol (unknown protocol: registered before {PROTOCOL_HASH_KEY} was recorded)"
    elif candidate_hash is None:
        head = f"the candidate records no evaluation protocol (unknown protocol), {who} has {champion_hash[:12]}"
    else:
        before, after = champion.get(PROTOCOL_KEY), candidate_protocol
        diffs = protocol_differences(before, after) if isinstance(before, Mapping) and isinstance(after, Mapping) else []
        what = ", ".join(diffs) or "the champion's settings were not recorded"
        head = f"{who} was evaluated under a different protocol (hash {champion_hash[:12]} vs {candidate_hash[:12]}: {what})"
    return (
        f"{head}; its {metric} is not comparable with the candidate's, so the numbers were not compared: "
        "evaluate both under one protocol (`tether evaluate --adapter DIR` on the champion's adapter) and, "
        f"after a review, promote by hand with `tether promote {candidate_version or 'VERSION'} --reason \"...\"`"
    )
