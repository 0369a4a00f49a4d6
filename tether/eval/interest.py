"""How much recommendation lists follow the user's interests: genre mutual information.

Coverage and entropy say how *spread* the recommendations are; neither says whether they are
spread the way users are. This metric asks: knowing a user's history, how much do we learn
about the genres of what is recommended to them?

For user ``u`` let ``p_u`` be the genre distribution of their history (each history item's
genre vector normalised to sum 1, averaged over the items) and, for a recommended item ``i``,
``q_i`` its genre vector normalised to sum 1. Every (user, recommended slot) pair contributes
``p_u ⊗ q_i`` to a joint distribution over (history genre ``h``, recommended genre ``r``):

    P(h, r) = (1 / Z) * sum_u sum_{i in top-K(u)} p_u(h) * q_i(r)

with ``Z`` the number of pairs, and

    MI@K = sum_{h, r} P(h, r) * ln( P(h, r) / (P(h) * P(r)) )      (nats)

It is 0 when every user gets the same genre mix whatever their history (popularity), and grows
as lists follow histories; it is at most ``min(H(h), H(r))``. Users whose history has no genre
and recommended items without a genre are left out (no distribution to contribute).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _distribution(vectors: Sequence[np.ndarray]) -> np.ndarray | None:
    rows = [v / v.sum() for v in vectors if v is not None and v.sum() > 0]
    return np.mean(rows, axis=0) if rows else None


def genre_mutual_information(
    histories: Sequence[Sequence[str]],
    lists: Sequence[Sequence[str]],
    item_vectors: Mapping[str, np.ndarray],
) -> float:
    """Mutual information (nats) between history genres and recommended genres (module docstring).

    Args:
        histories: per user, the item ids of their history.
        lists: per user, the recommended item ids (e.g. the top K), aligned with ``histories``.
        item_vectors: item id -> multi-hot genre vector (all of one length).

    Returns:
        ``MI@K`` in nats; NaN when no (user, item) pair has genres on both sides.
    """
    if len(histories) != len(lists):
        raise ValueError(f"{len(histories)} histories for {len(lists)} recommendation lists")
    joint: np.ndarray | None = None
    pairs = 0
    for history, recs in zip(histories, lists):
        p_u = _distribution([item_vectors.get(i) for i in history])
        if p_u is None:
            continue
        for item in recs:
            v = item_vectors.get(item)
            if v is None or v.sum() <= 0:
                continue
            outer = np.outer(p_u, v / v.sum())
            joint = outer if joint is None else joint + outer
            pairs += 1
    if joint is None:
        return float("nan")
    joint = joint / pairs
    ph, pr = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / np.outer(ph, pr)[nz])))
