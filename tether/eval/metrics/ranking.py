"""Ranking quality: the rank of the held-out item, top-K lists, HR@K, NDCG@K, MRR, slices.

Ranks are 1-based integers (rank 1 = the model's top item).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tether.eval.metrics.common import ItemId


def rank_of_positive(scores: np.ndarray, positive: int) -> int:
    """1-based rank of the held-out item among one user's candidates.

    Pinned: "an item's score is the mean log-likelihood per token of its title given the
    prompt"; higher scores rank first.

    Choice (ties, silent in the pinned definitions): ties count against the positive,
    ``rank = 1 + #(other candidates with score >= score[positive])``, so a model that scores
    every candidate equally ranks the positive last and earns no credit. A NaN score is
    treated as a failure of the model, also against the positive: a NaN positive ranks last,
    and a NaN on another candidate counts as beating the positive.

    Args:
        scores: 1-D scores of all candidates of one user (the positive among them).
        positive: index of the held-out item in ``scores``.

    Returns:
        The rank, between 1 and ``len(scores)``.

    Raises:
        ValueError: if ``scores`` is not a non-empty 1-D array or ``positive`` is out of range.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    return int(ranks_of_positives(s[None, :], np.asarray([positive]))[0])


def ranks_of_positives(score_matrix: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Vectorised :func:`rank_of_positive` for users who share a candidate count (sampled protocol).

    Same tie and NaN rules as :func:`rank_of_positive`.

    Args:
        score_matrix: ``(n_users, n_candidates)`` scores.
        positives: ``(n_users,)`` column index of each user's held-out item.

    Returns:
        ``(n_users,)`` int64 ranks, 1-based.

    Raises:
        ValueError: on a shape mismatch or a positive index out of range.
    """
    s = np.asarray(score_matrix, dtype=np.float64)
    pos = np.asarray(positives)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"score_matrix must be 2-D with at least one candidate, got shape {s.shape}")
    if pos.shape != (s.shape[0],):
        raise ValueError(f"positives must have shape ({s.shape[0]},), got {pos.shape}")
    if not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"positives must be integer indices, got dtype {pos.dtype}")
    n_cand = s.shape[1]
    if pos.size and (pos.min() < 0 or pos.max() >= n_cand):
        raise ValueError(f"positive index out of range [0, {n_cand}): min {pos.min()}, max {pos.max()}")
    rows = np.arange(s.shape[0])
    pos_scores = s[rows, pos]
    # Every candidate at or above the positive (NaN counts against it), minus the positive itself.
    against = (s >= pos_scores[:, None]) | np.isnan(s)
    against[rows, pos] = False
    ranks = 1 + against.sum(axis=1)
    ranks[np.isnan(pos_scores)] = n_cand
    return ranks.astype(np.int64)


def top_k(scores: np.ndarray, item_ids: Sequence[ItemId], k: int) -> list[ItemId]:
    """The ``k`` best-scored item ids, best first.

    Choice: ties keep the order of ``item_ids`` (stable sort), so the list is deterministic;
    NaN scores sort after every number. ``k`` larger than the list returns the whole list.

    Args:
        scores: 1-D scores, aligned with ``item_ids``.
        item_ids: the candidate ids.
        k: list length, >= 1.

    Returns:
        Up to ``k`` item ids.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(item_ids) != s.size:
        raise ValueError(f"scores (shape {s.shape}) and item_ids (length {len(item_ids)}) must align")
    _check_k(k)
    # -NaN is NaN, and argsort puts NaN last; "stable" keeps catalog order among ties.
    order = np.argsort(-s, kind="stable")[:k]
    return [item_ids[i] for i in order]


def hit_rate_at_k(ranks: Iterable[int] | np.ndarray, k: int) -> float:
    """HR@K.

    Pinned: "HR@K: share of test users whose held-out item is in the top K."
    K larger than a candidate list is fine: every rank within the list is a hit.
    """
    r = _as_ranks(ranks)
    _check_k(k)
    return float(np.mean(r <= k))


def ndcg_at_k(ranks: Iterable[int] | np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item per user.

    Pinned: "NDCG@K (one relevant item): 1/log2(rank+1) if rank <= K else 0, averaged."
    A user with no hit in the top K contributes 0.
    """
    r = _as_ranks(ranks)
    _check_k(k)
    gains = np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: Iterable[int] | np.ndarray) -> float:
    """Mean reciprocal rank.

    Pinned: "MRR: mean of 1/rank." Not truncated at any K: a user whose item is at rank 50
    contributes 1/50.
    """
    r = _as_ranks(ranks)
    return float(np.mean(1.0 / r))


def ranking_metrics(ranks: Iterable[int] | np.ndarray, ks: Iterable[int]) -> dict[str, float]:
    """HR@K and NDCG@K for every K, plus MRR and the user count, in one dict.

    Keys: ``count``, ``mrr``, ``hr_at_{k}``, ``ndcg_at_{k}`` (MLflow-safe names).
    """
    r = _as_ranks(ranks)
    out: dict[str, float] = {"count": int(r.size), "mrr": mrr(r)}
    for k in ks:
        out[f"hr_at_{k}"] = hit_rate_at_k(r, k)
        out[f"ndcg_at_{k}"] = ndcg_at_k(r, k)
    return out


def slice_metrics(
    ranks: Iterable[int] | np.ndarray,
    mask_dict: Mapping[str, np.ndarray],
    ks: Iterable[int],
) -> dict[str, dict[str, float]]:
    """Ranking metrics per slice of users (e.g. cold vs warm users, popular vs tail items).

    Args:
        ranks: one rank per user.
        mask_dict: slice name -> boolean mask over the same users.
        ks: cut-offs for HR and NDCG.

    Returns:
        slice name -> :func:`ranking_metrics` dict. Choice: an empty slice reports
        ``count`` 0 and NaN for every metric rather than raising, so one empty slice does not
        hide the others.

    Raises:
        ValueError: if a mask is not boolean or not aligned with ``ranks``.
    """
    r = _as_ranks(ranks)
    ks = list(ks)
    out: dict[str, dict[str, float]] = {}
    for name, mask in mask_dict.items():
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise ValueError(f"slice {name!r}: mask must be boolean (an integer array would index), got {m.dtype}")
        if m.shape != r.shape:
            raise ValueError(f"slice {name!r}: mask shape {m.shape} does not match ranks shape {r.shape}")
        if not m.any():
            out[name] = {"count": 0, "mrr": math.nan}
            for k in ks:
                out[name][f"hr_at_{k}"] = math.nan
                out[name][f"ndcg_at_{k}"] = math.nan
            continue
        out[name] = ranking_metrics(r[m], ks)
    return out


def _as_ranks(ranks: Iterable[int] | np.ndarray) -> np.ndarray:
    r = np.asarray(list(ranks) if not isinstance(ranks, np.ndarray) else ranks)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D sequence, got shape {r.shape}")
    if not np.issubdtype(r.dtype, np.number):
        raise ValueError(f"ranks must be numbers, got dtype {r.dtype}")
    r = r.astype(np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 1) or np.any(r != np.floor(r)):
        raise ValueError("ranks must be finite integers >= 1 (ranks are 1-based)")
    return r


def _check_k(k: int) -> None:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
