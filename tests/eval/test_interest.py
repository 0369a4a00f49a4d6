"""Genre mutual information between users' histories and their recommendations, computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tether.eval.interest import genre_mutual_information

# Two genres: item "a" is genre 0, "b" genre 1, "ab" both.
VEC = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "ab": np.array([1.0, 1.0]), "none": np.zeros(2)}


def test_lists_that_follow_each_users_genre_carry_ln2() -> None:
    # User 1 watched genre 0 and gets genre 0; user 2 the same for genre 1: P(h, r) = diag(1/2, 1/2).
    mi = genre_mutual_information([["a"], ["b"]], [["a"], ["b"]], VEC)
    assert mi == pytest.approx(math.log(2))


def test_the_same_list_for_everyone_carries_nothing() -> None:
    assert genre_mutual_information([["a"], ["b"]], [["a", "b"], ["a", "b"]], VEC) == pytest.approx(0.0, abs=1e-12)


def test_a_hand_computed_mixed_case() -> None:
    # User 1: history {a, ab} -> p = (0.75, 0.25); gets [a]     -> q = (1, 0)
    # User 2: history {b}     -> p = (0, 1);       gets [ab, b] -> q = (0.5, 0.5), (0, 1)
    # Joint over 3 pairs: [[0.75, 0], [0.25, 0]] + [[0, 0], [0.5, 0.5]] + [[0, 0], [0, 1]], / 3
    joint = np.array([[0.75, 0.0], [0.75, 1.5]]) / 3
    ph, pr = joint.sum(1), joint.sum(0)
    expected = sum(joint[i, j] * math.log(joint[i, j] / (ph[i] * pr[j])) for i in range(2) for j in range(2) if joint[i, j])
    got = genre_mutual_information([["a", "ab"], ["b"]], [["a"], ["ab", "b"]], VEC)
    assert got == pytest.approx(expected) and 0 < got < math.log(2)


def test_items_and_users_without_genres_are_left_out() -> None:
    with_none = genre_mutual_information([["a"], ["b"], ["none"]], [["a", "none"], ["b"], ["a"]], VEC)
    assert with_none == pytest.approx(math.log(2))
    assert math.isnan(genre_mutual_information([["none"]], [["a"]], VEC))
    with pytest.raises(ValueError, match="2 histories for 1"):
        genre_mutual_information([["a"], ["b"]], [["a"]], VEC)
