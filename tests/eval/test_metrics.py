"""Metric functions against hand-computed cases (tether.eval.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tether.eval import metrics as M

# ---------------------------------------------------------------------------- ranking


def test_rank_of_positive_strictly_best_and_middle() -> None:
    assert M.rank_of_positive(np.array([0.9, 0.1, 0.5]), 0) == 1
    assert M.rank_of_positive(np.array([0.9, 0.1, 0.5]), 2) == 2
    assert M.rank_of_positive(np.array([0.9, 0.1, 0.5]), 1) == 3


def test_rank_of_positive_ties_count_against_the_positive() -> None:
    # All equal: the positive is last, so a constant scorer earns no credit.
    assert M.rank_of_positive(np.zeros(5), 2) == 5
    # One tie with the positive, one better: rank = 1 + 2.
    assert M.rank_of_positive(np.array([-1.0, -2.0, -1.0, -0.5]), 0) == 3
    # Ties at -inf (impossible titles) also count against.
    assert M.rank_of_positive(np.array([-np.inf, -np.inf, -3.0]), 1) == 3


def test_rank_of_positive_nan_is_a_model_failure() -> None:
    assert M.rank_of_positive(np.array([np.nan, 1.0, 2.0]), 0) == 3
    # A NaN on another candidate counts as beating the positive.
    assert M.rank_of_positive(np.array([5.0, np.nan, 2.0]), 0) == 2


def test_rank_of_positive_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        M.rank_of_positive(np.array([]), 0)
    with pytest.raises(ValueError):
        M.rank_of_positive(np.array([1.0, 2.0]), 2)


def test_ranks_of_positives_matches_single_version() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(0, 3, size=(50, 7)).astype(float)  # many ties
    s[3, 2] = np.nan
    pos = rng.integers(0, 7, size=50)
    expected = [M.rank_of_positive(s[u], int(pos[u])) for u in range(50)]
    assert M.ranks_of_positives(s, pos).tolist() == expected


def test_top_k_stable_tie_break_and_nan_last() -> None:
    scores = np.array([1.0, 3.0, 3.0, np.nan, 2.0])
    assert M.top_k(scores, ["a", "b", "c", "d", "e"], 3) == ["b", "c", "e"]
    # Ties keep catalog order, NaN after every number, k beyond the list returns it all.
    assert M.top_k(np.array([0.0, np.nan, 0.0]), ["x", "y", "z"], 10) == ["x", "z", "y"]


def test_top_k_ties_keep_catalog_order_on_long_lists() -> None:
    # Long enough that an unstable sort (quicksort, SIMD sorts) would shuffle the ties.
    ids = [f"i{j}" for j in range(500)]
    scores = np.zeros(500)
    scores[[7, 300]] = 1.0
    assert M.top_k(scores, ids, 5) == ["i7", "i300", "i0", "i1", "i2"]
    assert M.top_k(scores, ids, 500)[2:] == [i for i in ids if i not in ("i7", "i300")]


def test_hr_ndcg_mrr_by_hand() -> None:
    ranks = [1, 2, 4, 11]
    assert M.hit_rate_at_k(ranks, 1) == pytest.approx(1 / 4)
    assert M.hit_rate_at_k(ranks, 10) == pytest.approx(3 / 4)
    # 1/log2(2) = 1, 1/log2(3), 1/log2(5), and 0 for rank 11 > 10.
    assert M.ndcg_at_k(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5) + 0) / 4)
    assert M.mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 11) / 4)


def test_user_with_no_hit_scores_zero_ndcg_but_keeps_reciprocal_rank() -> None:
    assert M.ndcg_at_k([20], 10) == 0.0
    assert M.hit_rate_at_k([20], 10) == 0.0
    assert M.mrr([20]) == pytest.approx(1 / 20)


def test_k_larger_than_the_candidate_list() -> None:
    # Three candidates per user: every rank is within K = 10, so every user hits.
    ranks = [M.rank_of_positive(np.array(s), 0) for s in ([0.0, 1.0, 2.0], [2.0, 1.0, 0.0])]
    assert ranks == [3, 1]
    assert M.hit_rate_at_k(ranks, 10) == 1.0
    assert M.ndcg_at_k(ranks, 10) == pytest.approx((1 / math.log2(4) + 1) / 2)


def test_ranking_metrics_reject_bad_ranks_and_k() -> None:
    for bad in ([], [0, 1], [1.5], [np.nan]):
        with pytest.raises(ValueError):
            M.mrr(bad)
    with pytest.raises(ValueError):
        M.hit_rate_at_k([1, 2], 0)


def test_slice_metrics_per_slice_and_empty_slice() -> None:
    ranks = np.array([1, 3, 20, 2])
    cold = np.array([True, False, True, False])
    out = M.slice_metrics(ranks, {"cold": cold, "warm": ~cold, "none": np.zeros(4, bool)}, ks=[2, 10])
    assert out["cold"]["count"] == 2
    assert out["cold"]["hr_at_10"] == pytest.approx(0.5)
    assert out["cold"]["mrr"] == pytest.approx((1 + 1 / 20) / 2)
    assert out["warm"]["hr_at_2"] == pytest.approx(0.5)
    assert out["warm"]["ndcg_at_10"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3)) / 2)
    assert out["none"]["count"] == 0 and math.isnan(out["none"]["ndcg_at_10"])
    with pytest.raises(ValueError, match="boolean"):
        M.slice_metrics(ranks, {"idx": np.array([0, 1, 0, 1])}, ks=[10])


# ---------------------------------------------------------------------------- diversity


def test_catalog_coverage() -> None:
    assert M.catalog_coverage([["a", "b"], ["a", "c"]], 10) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        M.catalog_coverage([["a", "b"]], 1)


def test_entropy_uniform_vs_concentrated() -> None:
    assert M.shannon_entropy([["a", "b"], ["c", "d"]]) == pytest.approx(math.log(4))
    assert M.shannon_entropy([["a"], ["a"], ["a"]]) == 0.0
    # Shares 1/2, 1/4, 1/4.
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert M.shannon_entropy([["a", "b"], ["a", "c"]]) == pytest.approx(expected)


def test_gini_even_over_whole_catalog_is_zero() -> None:
    assert M.gini_index([["a", "b"], ["c", "d"], ["a", "b"], ["c", "d"]], 4) == pytest.approx(0.0)


def test_gini_single_item_in_big_catalog_is_close_to_one() -> None:
    # RecBole: one item at index n: (2n - n - 1) * U / (U * n) = (n - 1) / n.
    assert M.gini_index([["a"]] * 50, 1000) == pytest.approx(999 / 1000)


def test_gini_by_hand_with_never_recommended_items() -> None:
    # Counts a=2, b=1, c=1 over 3 items: sorted [1, 1, 2] at i=1..3.
    # sum (2i - 4) P = -2 + 0 + 4 = 2; / (n=3 * total=4) = 1/6.
    assert M.gini_index([["a", "b"], ["a", "c"]], 3) == pytest.approx(1 / 6)
    # Counts a=2, b=1 in a 4-item catalog: two zeros take i=1,2; [1, 2] sit at i=3,4.
    # (6 - 5) * 1 + (8 - 5) * 2 = 7; / (4 * 3) = 7/12.
    assert M.gini_index([["a"], ["a"], ["b"]], 4) == pytest.approx(7 / 12)


def test_intra_list_diversity_by_hand() -> None:
    vecs = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 1.0]), "c": np.array([0.0, 1.0])}
    # [a, b, c]: cos(a,b) = cos(b,c) = 1/sqrt2, cos(a,c) = 0 -> mean sqrt2/3.
    # [a, c]: cos 0 -> diversity 1.
    expected = ((1 - math.sqrt(2) / 3) + 1.0) / 2
    assert M.intra_list_diversity([["a", "b", "c"], ["a", "c"]], vecs) == pytest.approx(expected)


def test_intra_list_diversity_short_lists_and_zero_vectors() -> None:
    vecs = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0]), "z": np.zeros(2)}
    # Identical items: diversity 0; the single-item list is left out of the mean, not counted as 0 or 1.
    assert M.intra_list_diversity([["a", "b"], ["a"]], vecs) == pytest.approx(0.0)
    # An item without genres shares nothing: cosine 0.
    assert M.intra_list_diversity([["a", "z"]], vecs) == pytest.approx(1.0)
    assert math.isnan(M.intra_list_diversity([["a"], ["b"]], vecs))
    with pytest.raises(KeyError, match="missing"):
        M.intra_list_diversity([["a", "missing"]], vecs)


def test_novelty_by_hand_and_unseen_item() -> None:
    counts = {"a": 6, "b": 2}
    # a: -log2(6/8); b: -log2(2/8) = 2 (twice); z unseen -> treated as seen once: -log2(1/8) = 3.
    expected = (-math.log2(6 / 8) + 2 + 2 + 3) / 4
    assert M.novelty([["a", "b"], ["b", "z"]], counts, 8) == pytest.approx(expected)
    # An explicit zero count is the same as absent.
    assert M.novelty([["z"]], {"z": 0}, 8) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        M.novelty([["a"]], {"a": 9}, 8)


def test_genre_vectors_multi_hot() -> None:
    items = pd.DataFrame(
        {"item_id": ["1", "2", "3"], "genres": ["Drama|Comedy", "", "(no genres listed)"], "title": ["x", "y", "z"]}
    )
    assert M.genre_vocabulary(items) == ["Comedy", "Drama"]
    vecs = M.genre_vectors(items)
    assert vecs["1"].tolist() == [1.0, 1.0]
    assert vecs["2"].tolist() == [0.0, 0.0]
    assert vecs["3"].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------- generation


def test_normalize_title() -> None:
    assert M.normalize_title('  "Heat   (1995)." ') == "heat (1995)"
    assert M.normalize_title("\u201c**The  Matrix**\u201d\n") == "the matrix"
    # NFKC (full-width letters), casefold (ß -> ss), zero-width space dropped; brackets kept.
    assert M.normalize_title("\uff28eat\u200b (1995)") == "heat (1995)"
    assert M.normalize_title("STRASSE") == M.normalize_title("straße")


def test_valid_item_rate() -> None:
    catalog = ["Heat (1995)", "Toy Story (1995)", "Solaris (1972)", "Solaris (2002)"]
    gens = ["heat (1995).", '"Toy Story (1995)"', "Toy Story (1999)", "Heat", "Solaris (1990)", "Solaris", "Up (2009)", ""]
    # Exact (after normalisation): the first two. By unambiguous name: a wrong or missing year of
    # Toy Story / Heat. Solaris names two titles, so only its right year would count; Up is no item.
    assert M.valid_item_rate(gens, catalog) == pytest.approx(4 / 8)
    assert M.exact_title_rate(gens, catalog) == pytest.approx(2 / 8)
    index = M.CatalogIndex(catalog)
    assert index.resolve("toy story (1999)") == "Toy Story (1995)"
    assert index.resolve("Solaris (2002)") == "Solaris (2002)" and index.resolve("Solaris (1990)") is None
    assert index.resolve("   ") is None
    with pytest.raises(ValueError):
        M.valid_item_rate([], catalog)


def test_distinct_n_by_hand() -> None:
    texts = ["the cat the cat", "The dog"]
    # unigrams: the, cat, the, cat, the, dog -> 3 unique / 6.
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams: (the cat) (cat the) (the cat) | (the dog) -> 3 unique / 4 (none across texts).
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert M.distinct_n(["one"], 2) == 0.0


def test_repeated_ngram_rate_by_hand() -> None:
    # "a b a b a b": bigrams ab ba ab ba ab -> 3 repeat an earlier one of 5.
    # "a b" in another text: its bigram is new within that text.
    assert M.repeated_ngram_rate(["a b a b a b", "a b"], n=2) == pytest.approx(3 / 6)
    assert M.repeated_ngram_rate(["x y z w x y z w"], n=4) == pytest.approx(1 / 5)
    assert M.repeated_ngram_rate(["short"], n=4) == 0.0


def test_empty_rate_and_length_ratio() -> None:
    assert M.empty_rate(["ok", "", "  \n", "...", "A"]) == pytest.approx(3 / 5)
    assert M.length_ratio(["a b c", "d"], ["a b", "c d"]) == pytest.approx(4 / 4)
    assert M.length_ratio(["a b c d", "e f"], ["a", "b c"]) == pytest.approx(6 / 3)
    assert math.isnan(M.length_ratio(["a"], [""]))
    with pytest.raises(ValueError):
        M.length_ratio(["a"], ["a", "b"])


# ---------------------------------------------------------------------------- statistics


def test_bootstrap_ci_contains_mean_and_is_seeded() -> None:
    rng = np.random.default_rng(42)
    values = rng.normal(0.3, 0.1, size=200)
    low, high = M.bootstrap_ci(values, seed=7)
    assert low < values.mean() < high
    assert M.bootstrap_ci(values, seed=7) == (low, high)
    assert M.bootstrap_ci(values, seed=8) != (low, high)


def test_bootstrap_ci_narrower_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(size=50)
    big = rng.normal(size=5000)
    ws = np.subtract(*M.bootstrap_ci(small)[::-1])
    wb = np.subtract(*M.bootstrap_ci(big)[::-1])
    assert wb < ws / 3  # ~sqrt(100) = 10x narrower in expectation


def test_bootstrap_ci_with_a_stat_without_axis() -> None:
    values = np.arange(30.0)
    fast = M.bootstrap_ci(values, stat=np.median, n_boot=200)
    slow = M.bootstrap_ci(values, stat=lambda x: float(np.median(x)), n_boot=200)
    assert fast == pytest.approx(slow)


def test_bootstrap_degenerate_and_invalid() -> None:
    assert M.bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    with pytest.raises(ValueError):
        M.bootstrap_ci([])
    with pytest.raises(ValueError):
        M.bootstrap_ci([1.0, 2.0], alpha=1.5)


def test_paired_bootstrap_ci_of_a_constant_shift_is_the_shift() -> None:
    rng = np.random.default_rng(1)
    b = rng.uniform(size=100)
    assert M.paired_bootstrap_ci(b + 0.1, b) == pytest.approx((0.1, 0.1))
    low, high = M.paired_bootstrap_ci(b + rng.normal(0.05, 0.02, 100), b)
    assert 0.0 < low < 0.05 < high
    with pytest.raises(ValueError):
        M.paired_bootstrap_ci([1.0, 2.0], [1.0])


def test_perplexity_and_drift_point_values() -> None:
    nll = np.array([10.0, 20.0])
    tok = np.array([10, 10])
    # Token-weighted: exp(30 / 20).
    assert M.perplexity(nll, tok) == pytest.approx(math.exp(1.5))
    assert M.perplexity_drift(nll + 2.0, tok, nll, tok) == pytest.approx(math.exp(4 / 20) - 1)


def test_ppl_drift_ci_brackets_point_drift_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    tok = rng.integers(50, 300, size=80).astype(float)
    base = tok * rng.uniform(2.5, 3.5, size=80)
    cand = base + tok * rng.normal(0.05, 0.03, size=80)
    point = M.perplexity_drift(cand, tok, base, tok)
    low, high = M.ppl_drift_ci(cand, tok, base, tok, seed=5)
    assert low < point < high
    assert M.ppl_drift_ci(cand, tok, base, tok, seed=5) == (low, high)
    # Same model twice: zero drift, zero width.
    assert M.ppl_drift_ci(base, tok, base, tok) == pytest.approx((0.0, 0.0))
