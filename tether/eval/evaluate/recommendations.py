"""Recommendation metrics of one system: ranks, ranking and diversity metrics, slices, per-user values.

The models and the popularity baseline (:func:`popularity_scores`) all go through
:func:`evaluate_recommendations`, so every system's numbers come from one code path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tether.eval import metrics
from tether.eval.evaluate.inputs import EvalInputs
from tether.eval.interest import genre_mutual_information
from tether.io import jsonable


@dataclass
class RecEval:
    """Ranking quality and diversity of one system on the evaluation users.

    Attributes:
        ranks: 1-based rank of each user's held-out item.
        metrics: ``count``, ``mrr``, ``hr_at_K``, ``ndcg_at_K`` and, per K, ``coverage_at_K``,
            ``entropy_at_K``, ``gini_at_K``, ``ild_at_K``, ``novelty_at_K``, ``genre_mi_at_K``.
        slices: slice name (``short_history``, ``long_history``, ``head_item``, ``tail_item``)
            -> ranking metrics of those users.
        per_user: metric -> one value per user (``mrr`` = 1/rank, ``hr_at_K``, ``ndcg_at_K``),
            kept for (paired) bootstrap intervals.
        top_lists: each user's top ``max(ks)`` item ids.
    """

    ranks: np.ndarray
    metrics: dict[str, float]
    slices: dict[str, dict[str, float]]
    per_user: dict[str, np.ndarray]
    top_lists: list[list[str]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (arrays as lists, non-finite numbers as None)."""
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecEval:
        return cls(
            ranks=np.asarray(d["ranks"], dtype=np.int64),
            metrics={k: metrics.as_float(v) for k, v in d["metrics"].items()},
            slices={s: {k: metrics.as_float(v) for k, v in m.items()} for s, m in d["slices"].items()},
            per_user={k: np.asarray(v, dtype=np.float64) for k, v in d["per_user"].items()},
            top_lists=[list(t) for t in d["top_lists"]],
        )


def evaluate_recommendations(scores_per_user: Sequence[np.ndarray], inputs: EvalInputs, ks: Sequence[int]) -> RecEval:
    """Ranks, ranking and diversity metrics, slices and per-user values from candidate scores.

    Args:
        scores_per_user: one array per user, aligned with ``inputs.candidates`` (higher = better).
        inputs: the evaluation inputs.
        ks: cut-offs.

    Returns:
        The :class:`RecEval`.

    Raises:
        ValueError: if the scores do not align with the candidates.
    """
    if len(scores_per_user) != inputs.n_users:
        raise ValueError(f"{len(scores_per_user)} score arrays for {inputs.n_users} users")
    ks = sorted({int(k) for k in ks})
    ranks = np.empty(inputs.n_users, dtype=np.int64)
    top_lists: list[list[str]] = []
    for u, (scores, cands) in enumerate(zip(scores_per_user, inputs.candidates)):
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != (len(cands),):
            raise ValueError(f"user {inputs.user_ids[u]!r}: {s.shape} scores for {len(cands)} candidates")
        ranks[u] = metrics.rank_of_positive(s, int(inputs.positives[u]))
        top_lists.append(metrics.top_k(s, cands, ks[-1]))

    out = metrics.ranking_metrics(ranks, ks)
    n_catalog = len(inputs.catalog)
    n_train = max(inputs.n_train_interactions, 1)
    for k in ks:
        lists = [t[:k] for t in top_lists]
        out[f"coverage_at_{k}"] = metrics.catalog_coverage(lists, n_catalog)
        out[f"entropy_at_{k}"] = metrics.shannon_entropy(lists)
        out[f"gini_at_{k}"] = metrics.gini_index(lists, n_catalog)
        out[f"ild_at_{k}"] = metrics.intra_list_diversity(lists, inputs.item_vectors)
        out[f"novelty_at_{k}"] = metrics.novelty(lists, inputs.train_counts, n_train)
        out[f"genre_mi_at_{k}"] = genre_mutual_information(inputs.histories, lists, inputs.item_vectors) \
            if inputs.histories else float("nan")

    r = ranks.astype(np.float64)
    per_user: dict[str, np.ndarray] = {"mrr": 1.0 / r}
    for k in ks:
        per_user[f"hr_at_{k}"] = (r <= k).astype(np.float64)
        per_user[f"ndcg_at_{k}"] = np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    slices = metrics.slice_metrics(ranks, inputs.slice_masks(), ks)
    return RecEval(ranks=ranks, metrics=out, slices=slices, per_user=per_user, top_lists=top_lists)


def popularity_scores(inputs: EvalInputs) -> list[np.ndarray]:
    """The popularity baseline: each candidate scored by its train count (same candidates as the models)."""
    return [np.array([inputs.train_counts.get(i, 0) for i in c], dtype=np.float64) for c in inputs.candidates]
