"""Pure metric functions: ranking quality, diversity, generation health, bootstrap intervals.

Every function follows a pinned definition of ``DESIGN.md`` (quoted in its docstring) so that
numbers compare across tools. Where the pinned definitions are silent, the choice made here is
stated in the docstring under "Choice:" and covered by a test in ``tests/test_metrics.py``.

Conventions:
    * ranks are 1-based integers (rank 1 = the model's top item);
    * a "top list" is one user's recommended item ids, best first; ``top_lists`` is one per user;
    * empty inputs to an average raise ``ValueError`` (an evaluation over nobody is a bug upstream,
      not a score), except in :func:`slice_metrics`, where an empty slice reports count 0 and NaN;
    * metric names returned in dicts use ``_at_`` instead of ``@`` because MLflow rejects ``@``
      in metric names (``hr_at_10``, ``ndcg_at_10``).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

ItemId = Hashable
Stat = Callable[..., float]

# Bootstrap work is done in chunks of at most this many resampled values, so that 1000
# resamples of 100k units never materialise a 10^8-element index matrix at once.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000

# MovieLens writes this token for items without genres; it is not a genre shared by those items.
_NO_GENRES_TOKENS = frozenset({"(no genres listed)"})


# --------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------



def as_float(x: Any) -> float:
    """``float(x)``, or NaN for None and non-numbers, so a later finiteness check fails it."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


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


# --------------------------------------------------------------------------------------------
# Diversity over the top-K lists of all users
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Generation health
# --------------------------------------------------------------------------------------------

# Quotes and sentence punctuation that models wrap titles in; brackets are kept because
# catalog titles end in "(1995)".
_TITLE_STRIP = "".join(
    [
        " ",
        "\"'`",
        "\u201c\u201d\u201e\u201f\u2018\u2019\u201a\u201b\u00ab\u00bb\u2039\u203a",  # curly and angle quotes
        ".,;:!?*_",
        "-\u2013\u2014",  # hyphen, en dash, em dash
    ]
)


def normalize_title(s: str) -> str:
    """Normalise a title for exact matching (valid-item rate).

    Steps: Unicode NFKC, casefold (NFKC again, since casefolding can denormalise), drop
    invisible format/control characters (zero-width spaces, BOM), collapse runs of whitespace
    (newlines and tabs included) to one space, then strip surrounding quotes, sentence
    punctuation (``.,;:!?``), markdown emphasis (``*``, ``_``), dashes and spaces.
    Brackets are kept: ``'"Heat (1995)."'`` -> ``'heat (1995)'``.
    """
    s = unicodedata.normalize("NFKC", s)
    s = unicodedata.normalize("NFKC", s.casefold())
    s = "".join(ch for ch in s if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))
    s = " ".join(s.split())
    return s.strip(_TITLE_STRIP)


_YEAR = re.compile(r"\s*\((\d{4})\)$")


class CatalogIndex:
    """Resolve free generations to catalog items: by exact title, else by unambiguous name.

    Pinned: "Valid-item rate: share of free generations that map exactly (after
    normalization) to a catalog title." Normalisation is :func:`normalize_title` on both
    sides, plus one rule for MovieLens-style titles: the trailing ``(YYYY)`` is disambiguation
    metadata, so a generation whose name, without its year, equals the name of exactly one
    catalog title maps to that title ("Tide to Lisbon, Part 4 (1980)" -> "... (1981)" when no
    other "Tide to Lisbon, Part 4" exists). A name shared by several titles (remakes) still
    needs the right year. An empty generation never maps. :meth:`exact` is the strict rate's
    test (title and year), reported beside the valid-item rate.
    """

    def __init__(self, catalog_titles: Iterable[str]) -> None:
        self.titles: dict[str, str] = {}
        by_name: dict[str, list[str]] = {}
        for title in catalog_titles:
            norm = normalize_title(title)
            if not norm:
                continue
            self.titles.setdefault(norm, title)
            by_name.setdefault(_YEAR.sub("", norm), []).append(title)
        self.unique_names = {name: titles[0] for name, titles in by_name.items() if len(titles) == 1}

    def exact(self, generation: str) -> bool:
        """The generation is a catalog title, year included."""
        norm = normalize_title(generation)
        return bool(norm) and norm in self.titles

    def resolve(self, generation: str) -> str | None:
        """The catalog title the generation names, or None."""
        norm = normalize_title(generation)
        if not norm:
            return None
        if norm in self.titles:
            return self.titles[norm]
        return self.unique_names.get(_YEAR.sub("", norm))


def valid_item_rate(generations: Sequence[str], catalog_titles: Iterable[str] | CatalogIndex) -> float:
    """Share of free generations that map to a catalog title (:class:`CatalogIndex`)."""
    if len(generations) == 0:
        raise ValueError("valid_item_rate: no generations")
    index = catalog_titles if isinstance(catalog_titles, CatalogIndex) else CatalogIndex(catalog_titles)
    return sum(1 for g in generations if index.resolve(g) is not None) / len(generations)


def exact_title_rate(generations: Sequence[str], catalog_titles: Iterable[str] | CatalogIndex) -> float:
    """Share of free generations that are a catalog title with its year (the strict rate)."""
    if len(generations) == 0:
        raise ValueError("exact_title_rate: no generations")
    index = catalog_titles if isinstance(catalog_titles, CatalogIndex) else CatalogIndex(catalog_titles)
    return sum(1 for g in generations if index.exact(g)) / len(generations)


def _tokens(text: str) -> list[str]:
    return text.lower().split()


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n))))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n over a set of generations.

    Pinned: "Distinct-n: unique n-grams / total n-grams over a set of generations."
    Tokens are whitespace tokens, lower-cased; n-grams do not cross text boundaries; uniqueness
    is over the whole set.

    Choice: a set with no n-gram at all (every text shorter than n tokens) returns 0.0 - it
    shows no diversity - so an all-empty candidate cannot pass a "not lower than base" check.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for t in texts for g in _ngrams(_tokens(t), n)]
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)


def repeated_ngram_rate(texts: Sequence[str], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same text, pooled over texts.

    Degenerate looping ("the end of the end of the end of ...") drives this up. Tokens as in
    :func:`distinct_n`. Pooled: total repeats / total n-grams over all texts.

    Choice: no n-gram at all returns 0.0 (nothing repeats); emptiness is measured by
    :func:`empty_rate`.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    repeats = total = 0
    for t in texts:
        seen: set[tuple[str, ...]] = set()
        for g in _ngrams(_tokens(t), n):
            total += 1
            if g in seen:
                repeats += 1
            else:
                seen.add(g)
    return repeats / total if total else 0.0


def empty_rate(texts: Sequence[str]) -> float:
    """Share of generations with no letter or digit.

    Choice: whitespace-only and punctuation-only outputs (``""``, ``"\\n"``, ``"..."``) all
    count as empty: none of them answers anything.
    """
    if len(texts) == 0:
        raise ValueError("empty_rate: no texts")
    return sum(1 for t in texts if not any(ch.isalnum() for ch in t)) / len(texts)


def length_ratio(cand_texts: Sequence[str], base_texts: Sequence[str]) -> float:
    """Mean token length of the candidate's generations over the base model's, same prompts.

    Choice: the ratio of the mean lengths (= total candidate tokens / total base tokens),
    not the mean of per-prompt ratios, which explodes when the base gives a one-word answer.
    Tokens as in :func:`distinct_n`. Returns NaN when the base produced no token at all
    (the ratio is undefined, and a gate fails on NaN).

    Raises:
        ValueError: if the two lists differ in length (they must answer the same prompts).
    """
    if len(cand_texts) != len(base_texts):
        raise ValueError(f"length_ratio: {len(cand_texts)} candidate vs {len(base_texts)} base texts")
    if len(cand_texts) == 0:
        raise ValueError("length_ratio: no texts")
    cand = sum(len(_tokens(t)) for t in cand_texts)
    base = sum(len(_tokens(t)) for t in base_texts)
    if base == 0:
        logger.warning("length_ratio: the base generations have no tokens; returning NaN")
        return math.nan
    return cand / base


# --------------------------------------------------------------------------------------------
# Perplexity and bootstrap intervals
# --------------------------------------------------------------------------------------------


def perplexity(nll_sums: np.ndarray, n_tokens: np.ndarray) -> float:
    """Corpus perplexity from per-document sums.

    Pinned: "Perplexity: exp of the mean token negative log-likelihood over the reference
    corpus" - ``exp(sum nll / sum tokens)``, every token weighted equally (not every document).
    """
    nll, tok = _nll_tokens(nll_sums, n_tokens, "perplexity")
    return float(np.exp(nll.sum() / tok.sum()))


def perplexity_drift(
    cand_nll: np.ndarray, cand_tokens: np.ndarray, base_nll: np.ndarray, base_tokens: np.ndarray
) -> float:
    """Point drift ``ppl_candidate / ppl_base - 1`` (computed in log space, no overflow)."""
    cn, ct = _nll_tokens(cand_nll, cand_tokens, "candidate")
    bn, bt = _nll_tokens(base_nll, base_tokens, "base")
    return float(np.expm1(cn.sum() / ct.sum() - bn.sum() / bt.sum()))


def bootstrap_ci(
    values: np.ndarray | Sequence[float],
    stat: Stat = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat`` over independent units.

    Units (users, documents, prompts) are resampled with replacement ``n_boot`` times;
    the interval is the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled statistic.
    Deterministic for a given ``seed``. Non-finite values propagate (NaN in, NaN interval out).

    Args:
        values: one value per unit.
        stat: statistic of a 1-D sample; if it accepts ``axis=`` it is applied batched.
        n_boot: number of resamples.
        alpha: 1 - confidence level.
        seed: random seed.

    Returns:
        ``(low, high)``.
    """
    v = np.asarray(values, dtype=np.float64)
    _check_bootstrap(v.size, n_boot, alpha)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    boots = np.concatenate([_apply_stat(stat, v[idx]) for idx in _resample(v.size, n_boot, seed)])
    return _quantiles(boots, alpha)


def paired_bootstrap_ci(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    stat: Stat = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of ``stat(a) - stat(b)`` (candidate - reference) over the same units.

    Each resample draws the same units for both systems, so the per-unit pairing (same user,
    same prompt) cancels the between-unit variance that an unpaired comparison would carry.

    Args:
        a: candidate value per unit.
        b: reference value per unit, aligned with ``a``.
        stat, n_boot, alpha, seed: as in :func:`bootstrap_ci`.
    """
    av = np.asarray(a, dtype=np.float64)
    bv = np.asarray(b, dtype=np.float64)
    if av.shape != bv.shape or av.ndim != 1:
        raise ValueError(f"a and b must be aligned 1-D arrays, got shapes {av.shape} and {bv.shape}")
    _check_bootstrap(av.size, n_boot, alpha)
    boots = np.concatenate(
        [_apply_stat(stat, av[idx]) - _apply_stat(stat, bv[idx]) for idx in _resample(av.size, n_boot, seed)]
    )
    return _quantiles(boots, alpha)


def ppl_drift_ci(
    cand_nll: np.ndarray,
    cand_tokens: np.ndarray,
    base_nll: np.ndarray,
    base_tokens: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of the perplexity drift ``ppl_c / ppl_b - 1`` over documents.

    Each resample draws documents with replacement (the same documents for both models) and
    recomputes ``exp(sum nll / sum tokens)`` for each model, as :func:`perplexity` does.

    Args:
        cand_nll: candidate's summed token NLL per document.
        cand_tokens: tokens scored per document for the candidate.
        base_nll: base model's summed token NLL per document.
        base_tokens: tokens scored per document for the base (the pinned protocol uses
            identical tokenization, so these equal ``cand_tokens``; a mismatch is logged).
        n_boot, alpha, seed: as in :func:`bootstrap_ci`.

    Returns:
        ``(low, high)`` of the drift; NaN if a resample scored no token.
    """
    cn, ct = _nll_tokens(cand_nll, cand_tokens, "candidate")
    bn, bt = _nll_tokens(base_nll, base_tokens, "base")
    if cn.shape != bn.shape:
        raise ValueError(f"candidate and base must cover the same documents: {cn.size} vs {bn.size}")
    if not np.array_equal(ct, bt):
        logger.warning("ppl_drift_ci: token counts differ between candidate and base; tokenization should be identical")
    _check_bootstrap(cn.size, n_boot, alpha)
    chunks = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for idx in _resample(cn.size, n_boot, seed):
            log_c = cn[idx].sum(axis=1) / ct[idx].sum(axis=1)
            log_b = bn[idx].sum(axis=1) / bt[idx].sum(axis=1)
            chunks.append(np.expm1(log_c - log_b))
    return _quantiles(np.concatenate(chunks), alpha)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


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


def _nll_tokens(nll: np.ndarray, tokens: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(nll, dtype=np.float64)
    t = np.asarray(tokens, dtype=np.float64)
    if n.ndim != 1 or n.shape != t.shape or n.size == 0:
        raise ValueError(f"{what}: nll sums and token counts must be aligned non-empty 1-D arrays")
    if np.any(t < 0) or t.sum() <= 0:
        raise ValueError(f"{what}: token counts must be >= 0 with a positive total")
    return n, t


def _check_bootstrap(n_units: int, n_boot: int, alpha: float) -> None:
    if n_units == 0:
        raise ValueError("bootstrap: no units to resample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _resample(n_units: int, n_boot: int, seed: int) -> Iterable[np.ndarray]:
    """Yield ``(chunk, n_units)`` index matrices, ``n_boot`` rows in all, from one seeded stream."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _BOOTSTRAP_CHUNK_ELEMENTS // n_units))
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        yield rng.integers(0, n_units, size=(size, n_units))
        done += size


def _apply_stat(stat: Stat, samples: np.ndarray) -> np.ndarray:
    """``stat`` of every row of ``samples``: batched through ``axis=1`` when ``stat`` supports it."""
    try:
        out = np.asarray(stat(samples, axis=1), dtype=np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([stat(row) for row in samples], dtype=np.float64)


def _quantiles(boots: np.ndarray, alpha: float) -> tuple[float, float]:
    if np.isnan(boots).any():
        return (math.nan, math.nan)
    low, high = np.quantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return (float(low), float(high))
