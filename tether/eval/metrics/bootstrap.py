"""Perplexity, its drift against the base, and percentile bootstrap intervals (plain and paired)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

Stat = Callable[..., float]

# Bootstrap work is done in chunks of at most this many resampled values, so that 1000
# resamples of 100k units never materialise a 10^8-element index matrix at once.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


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
