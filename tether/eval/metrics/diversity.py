"""Diversity over all users' top-K lists: coverage, entropy, Gini, intra-list diversity, novelty,
genre vectors, and how far lists follow each user's genres (genre mutual information).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import chain

import numpy as np
import pandas as pd

from tether.eval.metrics.common import ItemId

logger = logging.getLogger(__name__)

# MovieLens writes this token for items without genres; it is not a genre shared by those items.
_NO_GENRES_TOKENS = frozenset({"(no genres listed)"})


def catalog_coverage(top_lists: Sequence[Sequence[ItemId]], n_catalog: int) -> float:
    """Catalog coverage@K.

    Pinned: "Catalog coverage@K: distinct items in all top-K lists / items in the catalog."
    """
    counts = _slot_counts(top_lists)
    _check_catalog(n_catalog, len(counts))
    return len(counts) / n_catalog


def shannon_entropy(top_lists: Sequence[Sequence[ItemId]]) -> float:
    """Shannon entropy@K, natural log.

    Pinned: "Shannon entropy@K: -sum p(i) ln p(i) over items' shares of all top-K slots."
    Uniform recommendations over n items give ln n; every slot the same item gives 0.
    (RecBole's ShannonEntropy additionally divides by the number of distinct items; the pinned
    definition does not, and neither does this function.)
    """
    counts = _slot_counts(top_lists)
    c = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    p = c / c.sum()
    # max(0.0, ...) turns the -0.0 of a single item into 0.0.
    return max(0.0, float(-np.sum(p * np.log(p))))


def gini_index(top_lists: Sequence[Sequence[ItemId]], n_catalog: int) -> float:
    """Gini index@K, RecBole's definition, with never-recommended catalog items counted as zero.

    Pinned: "Gini@K: RecBole's definition, never-recommended items counted as zero."
    RecBole ``GiniIndex``: with ``P(i)`` the recommendation counts of all ``n`` catalog items
    sorted non-decreasingly (i = 1..n),
    ``Gini = sum_i (2i - n - 1) P(i) / (n * sum_i P(i))``.
    Zero counts contribute nothing to the sum, but they shift the recommended items to the top
    indices ``n - m + 1 .. n``. 0 = perfectly even over the whole catalog; every slot the same
    item gives ``(n - 1) / n``.

    The denominator uses the number of slots actually filled (RecBole assumes a rectangular
    users x K matrix; the two agree when every list has length K).
    """
    counts = _slot_counts(top_lists)
    _check_catalog(n_catalog, len(counts))
    sorted_counts = np.sort(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
    m = sorted_counts.size
    idx = np.arange(n_catalog - m + 1, n_catalog + 1, dtype=np.float64)
    return float(np.sum((2.0 * idx - n_catalog - 1.0) * sorted_counts) / (sorted_counts.sum() * n_catalog))


def intra_list_diversity(
    top_lists: Sequence[Sequence[ItemId]],
    item_vectors: Mapping[ItemId, np.ndarray],
) -> float:
    """Intra-list diversity: mean over users of (1 - mean pairwise cosine similarity in the list).

    Pinned: "Intra-list diversity: mean over users of (1 - mean pairwise similarity in the
    list), similarity = cosine of genre vectors (or of text embeddings when configured)."
    Pairs are unordered pairs of distinct slots.

    Choices:
        * a list of length < 2 has no pairs, so no within-list diversity to measure: such users
          are left out of the mean (counting them as 0 or 1 would invent a number). If no user
          has a list of length >= 2 the result is NaN, and a warning is logged.
        * the cosine with an all-zero vector (an item without genres) is 0: it shares nothing.

    Args:
        top_lists: one list of item ids per user.
        item_vectors: item id -> 1-D feature vector (see :func:`genre_vectors`).

    Raises:
        KeyError: naming an item that has no vector.
    """
    by_length: dict[int, list[Sequence[ItemId]]] = {}
    for items in top_lists:
        if len(items) >= 2:
            by_length.setdefault(len(items), []).append(items)
    if not by_length:
        logger.warning("intra_list_diversity: no list has 2 or more items; returning NaN")
        return math.nan
    unit = _unit_vectors(item_vectors, {i for lists in by_length.values() for items in lists for i in items})
    total, n_users = 0.0, 0
    # Lists of equal length are stacked so each group is one batched Gram computation.
    for length, lists in by_length.items():
        v = np.stack([np.stack([unit[i] for i in items]) for items in lists])  # (users, L, d)
        gram = np.einsum("uld,umd->ulm", v, v)
        off_diagonal = gram.sum(axis=(1, 2)) - np.trace(gram, axis1=1, axis2=2)
        mean_sim = off_diagonal / (length * (length - 1))
        total += float(np.sum(1.0 - mean_sim))
        n_users += len(lists)
    return total / n_users


def novelty(
    top_lists: Sequence[Sequence[ItemId]],
    train_counts: Mapping[ItemId, int],
    n_train_interactions: int,
) -> float:
    """Novelty: mean self-information (bits) of the recommended items' train popularity.

    Pinned: "Novelty: mean over recommended slots of -log2(train count of item / train
    interactions)."

    Choice (zero counts): an item never seen in training (count 0, or absent from
    ``train_counts``) is scored as if seen once, ``log2(n_train_interactions)``: finite, the
    most novel a seen item can be, and every item that was seen keeps the exact pinned value
    (add-one smoothing of every count would shift all of them).

    Raises:
        ValueError: on a non-positive interaction total, a negative count, or a count above
            the total.
    """
    if n_train_interactions <= 0:
        raise ValueError(f"n_train_interactions must be > 0, got {n_train_interactions}")
    counts = _slot_counts(top_lists)
    c = np.array([train_counts.get(i, 0) for i in counts], dtype=np.float64)
    if (c < 0).any():
        raise ValueError("train_counts must be >= 0")
    if (c > n_train_interactions).any():
        raise ValueError(f"a train count exceeds n_train_interactions ({n_train_interactions})")
    info = -np.log2(np.maximum(c, 1.0) / n_train_interactions)
    slots = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    return float(np.sum(info * slots) / slots.sum())


def genre_vocabulary(items_df: pd.DataFrame) -> list[str]:
    """Sorted distinct genres of the ``genres`` column (``"A|B"``), the columns of :func:`genre_vectors`."""
    vocab: set[str] = set()
    for genres in items_df["genres"]:
        vocab.update(_split_genres(genres))
    return sorted(vocab)


def genre_vectors(items_df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Multi-hot genre vector per item from the canonical items table.

    Columns are :func:`genre_vocabulary` (sorted genre names). Tokens are stripped, empty
    tokens dropped; MovieLens's ``"(no genres listed)"`` counts as no genre, so items without
    genres get an all-zero vector (cosine 0 with everything in :func:`intra_list_diversity`)
    instead of looking identical to each other.

    Args:
        items_df: a table with ``item_id`` and ``genres`` columns.

    Returns:
        item id (as ``str``) -> float64 vector of length ``len(genre_vocabulary(items_df))``.
    """
    missing = {"item_id", "genres"} - set(items_df.columns)
    if missing:
        raise ValueError(f"items table lacks column(s) {sorted(missing)}")
    vocab = genre_vocabulary(items_df)
    col = {g: j for j, g in enumerate(vocab)}
    out: dict[str, np.ndarray] = {}
    for item_id, genres in zip(items_df["item_id"], items_df["genres"]):
        v = np.zeros(len(vocab), dtype=np.float64)
        for g in _split_genres(genres):
            v[col[g]] = 1.0
        out[str(item_id)] = v
    return out


def _distribution(vectors: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Mean of the vectors normalised to sum 1 (missing and all-zero ones left out); None if none is left."""
    rows = [v / v.sum() for v in vectors if v is not None and v.sum() > 0]
    return np.mean(rows, axis=0) if rows else None


def genre_mutual_information(
    histories: Sequence[Sequence[str]],
    lists: Sequence[Sequence[str]],
    item_vectors: Mapping[str, np.ndarray],
) -> float:
    """Mutual information (nats) between history genres and recommended genres.

    Coverage and entropy say how *spread* the recommendations are; neither says whether they
    are spread the way users are. This asks: knowing a user's history, how much do we learn
    about the genres of what is recommended to them?

    For user ``u`` let ``p_u`` be the genre distribution of their history (each history item's
    genre vector normalised to sum 1, averaged over the items) and, for a recommended item
    ``i``, ``q_i`` its genre vector normalised to sum 1. Every (user, recommended slot) pair
    contributes ``p_u ⊗ q_i`` to a joint distribution over (history genre ``h``, recommended
    genre ``r``)::

        P(h, r) = (1 / Z) * sum_u sum_{i in top-K(u)} p_u(h) * q_i(r)

    with ``Z`` the number of pairs, and::

        MI@K = sum_{h, r} P(h, r) * ln( P(h, r) / (P(h) * P(r)) )      (nats)

    It is 0 when every user gets the same genre mix whatever their history (popularity), and
    grows as lists follow histories; it is at most ``min(H(h), H(r))``. Users whose history has
    no genre and recommended items without a genre are left out (no distribution to contribute).

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


def _check_catalog(n_catalog: int, n_distinct: int) -> None:
    if n_catalog < 1:
        raise ValueError(f"n_catalog must be >= 1, got {n_catalog}")
    if n_distinct > n_catalog:
        raise ValueError(f"{n_distinct} distinct items recommended but the catalog has only {n_catalog}")


def _slot_counts(top_lists: Sequence[Sequence[ItemId]]) -> Counter:
    counts = Counter(chain.from_iterable(top_lists))
    if not counts:
        raise ValueError("no recommended items: every top list is empty")
    return counts


def _split_genres(genres: object) -> list[str]:
    if not isinstance(genres, str):  # NaN / None from a lenient source
        return []
    return [g for g in (t.strip() for t in genres.split("|")) if g and g not in _NO_GENRES_TOKENS]


def _unit_vectors(item_vectors: Mapping[ItemId, np.ndarray], items: set[ItemId]) -> dict[ItemId, np.ndarray]:
    missing = [i for i in items if i not in item_vectors]
    if missing:
        raise KeyError(f"no feature vector for {len(missing)} recommended item(s), e.g. {sorted(map(str, missing))[:5]}")
    out = {}
    for i in items:
        v = np.asarray(item_vectors[i], dtype=np.float64)
        norm = np.linalg.norm(v)
        # A zero vector stays zero, so its cosine with anything is 0.
        out[i] = v / norm if norm > 0 else v
    return out
