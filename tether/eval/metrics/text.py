"""Generation health over plain text: distinct-n, repeated n-grams, empty outputs, length ratio.

Tokens are whitespace tokens, lower-cased.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

logger = logging.getLogger(__name__)


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
