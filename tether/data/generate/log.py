"""The generated interaction log: users with favourite genres watching series in order.

:func:`generate_tables` simulates the log in memory; :func:`generate_sample_data` writes it
as MovieLens-latest ``ratings.csv`` and ``movies.csv``.
"""

from __future__ import annotations

import bisect
import csv
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tether.config import GenerateConfig
from tether.data.generate.catalog import GENRES, _build_catalog, _zipf_weights
from tether.data.generate.report import structure_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateSummary:
    """What :func:`generate_sample_data` wrote, with numbers describing the structure."""

    ratings_path: Path
    movies_path: Path
    n_users: int
    n_items: int
    n_interactions: int
    n_series: int
    structure: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratings_path"] = str(self.ratings_path)
        d["movies_path"] = str(self.movies_path)
        return d


@dataclass(frozen=True)
class SampleData:
    """The generated tables in canonical form, plus the ground truth behind them."""

    interactions: pd.DataFrame  # user_id, item_id, timestamp, rating, source_row
    items: pd.DataFrame  # item_id, title, genres, description, source_row
    favourite_genres: dict[str, tuple[str, ...]]  # user_id -> that user's favourite genres
    n_series: int



def generate_tables(cfg: GenerateConfig, seed: int) -> SampleData:
    """Generate the catalog and interaction log in memory (canonical table shapes).

    Args:
        cfg: generator settings (sizes, history bounds, structure strengths).
        seed: the only source of randomness.

    Returns:
        The tables plus each user's favourite genres (the ground truth tests check against).
    """
    rng = np.random.default_rng(seed)
    items, genre_matrix, next_part, is_entry = _build_catalog(rng, cfg.n_items, cfg.series_share)
    n_items, g = genre_matrix.shape

    weights = np.where(is_entry, _zipf_weights(rng, n_items, cfg.popularity_exponent), 0.0)
    entry_idx = np.flatnonzero(is_entry)
    pools: list[tuple[np.ndarray, np.ndarray]] = []  # per genre, then "all": (items, cdf)
    for k in list(range(g)) + [-1]:
        idx = entry_idx if k < 0 else entry_idx[genre_matrix[entry_idx, k]]
        cdf = np.cumsum(weights[idx])
        pools.append((idx, cdf / cdf[-1] if len(idx) else cdf))

    day0 = cfg.start_date
    start = int(datetime(day0.year, day0.month, day0.day, tzinfo=timezone.utc).timestamp())
    users: list[np.ndarray] = []
    item_col: list[np.ndarray] = []
    ts_col: list[np.ndarray] = []
    rating_col: list[np.ndarray] = []
    favourites: dict[str, tuple[str, ...]] = {}

    for u in range(cfg.n_users):
        n_fav = 1 if rng.random() < 0.5 else 2
        fav = rng.choice(g, size=n_fav, replace=False)
        fav_mask = np.zeros(g, dtype=bool)
        fav_mask[fav] = True
        # Skewed towards short histories (mean ~ min + 0.4 * span), like real logs.
        span = cfg.max_history - cfg.min_history
        length = cfg.min_history + int(np.floor((span + 1) * rng.random() ** 1.5))
        length = min(length, cfg.max_history)

        watched: set[int] = set()
        open_series: list[int] = []  # next part to watch, most recently started last
        seq: list[int] = []
        cont: list[bool] = []
        for _ in range(length):
            item = -1
            if open_series and rng.random() < cfg.continue_prob:
                item = open_series.pop()
                cont.append(True)
            else:
                genre_pick = int(fav[rng.integers(n_fav)]) if rng.random() < cfg.favourite_genre_prob else -1
                item = _pick_fresh(rng, pools[genre_pick], watched)
                if item < 0 and genre_pick >= 0:
                    item = _pick_fresh(rng, pools[-1], watched)
                if item < 0:
                    if not open_series:
                        break  # nothing left to watch: a shorter history
                    item = open_series.pop()
                    cont.append(True)
                else:
                    cont.append(False)
            watched.add(item)
            seq.append(item)
            if next_part[item] >= 0:
                open_series.append(int(next_part[item]))
        n = len(seq)
        arr = np.asarray(seq, dtype=np.int64)
        # Strictly increasing timestamps: a start within two years, then gaps of ~2 days.
        t0 = start + int(rng.integers(0, 730 * 86_400))
        gaps = 600 + np.floor(rng.exponential(2 * 86_400, size=n)).astype(np.int64)
        gaps[0] = 0
        fav_hit = genre_matrix[arr][:, fav_mask].any(axis=1)
        raw = 3.0 + 1.0 * fav_hit + 0.5 * np.asarray(cont, dtype=float) + rng.normal(0.0, 0.9, size=n)
        users.append(np.full(n, u + 1, dtype=np.int64))
        item_col.append(arr)
        ts_col.append(t0 + np.cumsum(gaps))
        rating_col.append(np.clip(np.round(raw * 2) / 2, 1.0, 5.0))
        favourites[str(u + 1)] = tuple(GENRES[k] for k in sorted(fav.tolist()))

    user_arr = np.concatenate(users)
    item_arr = np.concatenate(item_col)
    # MovieLens files are sorted by userId, then movieId (not by time).
    order = np.lexsort((item_arr + 1, user_arr))
    interactions = pd.DataFrame({
        "user_id": user_arr[order].astype(str),
        "item_id": (item_arr[order] + 1).astype(str),
        "timestamp": np.concatenate(ts_col)[order].astype(np.int64),
        "rating": np.concatenate(rating_col)[order].astype(np.float64),
    })
    interactions["source_row"] = np.arange(1, len(interactions) + 1, dtype=np.int64)
    items = items.copy()
    items["source_row"] = np.arange(1, len(items) + 1, dtype=np.int64)
    n_series = int((is_entry & (next_part >= 0)).sum())
    return SampleData(interactions=interactions, items=items, favourite_genres=favourites, n_series=n_series)


def _pick_fresh(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], watched: set[int]) -> int:
    """Draw an unwatched item by popularity from a pool; -1 when the pool is exhausted."""
    idx, cdf = pool
    if len(idx) == 0:
        return -1
    # Rejection sampling is cheap while most of the pool is unwatched.
    for _ in range(32):
        j = bisect.bisect_right(cdf, rng.random() * cdf[-1])
        item = int(idx[min(j, len(idx) - 1)])
        if item not in watched:
            return item
    left = np.fromiter((i for i in idx.tolist() if i not in watched), dtype=np.int64)
    if len(left) == 0:
        return -1
    # Fall back to an exact draw among the unwatched items (same popularity weights).
    w = np.diff(np.concatenate([[0.0], cdf]))[np.isin(idx, left)]
    return int(left[rng.choice(len(left), p=w / w.sum())])


def generate_sample_data(cfg: GenerateConfig, seed: int, out_dir: Path) -> GenerateSummary:
    """Write ``ratings.csv`` and ``movies.csv`` (MovieLens-latest format) into ``out_dir``.

    Args:
        cfg: generator settings.
        seed: same seed and settings -> byte-identical files.
        out_dir: the raw-data directory (created if missing).

    Returns:
        Paths, sizes and :func:`structure_report` numbers of what was written.
    """
    data = generate_tables(cfg, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ratings_path = out_dir / "ratings.csv"
    movies_path = out_dir / "movies.csv"

    ratings = data.interactions.rename(columns={"user_id": "userId", "item_id": "movieId"})
    ratings = ratings[["userId", "movieId", "rating", "timestamp"]]
    ratings.to_csv(ratings_path, index=False, float_format="%.1f", lineterminator="\n")
    movies = data.items.rename(columns={"item_id": "movieId"})[["movieId", "title", "genres", "description"]]
    # QUOTE_MINIMAL is what MovieLens does: only fields with a comma or a quote are quoted.
    movies.to_csv(movies_path, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")

    structure = structure_report(data.interactions, data.items, data.favourite_genres)
    logger.info(
        "wrote %d interactions of %d users over %d items (%d series) to %s",
        len(data.interactions), cfg.n_users, cfg.n_items, data.n_series, out_dir,
    )
    return GenerateSummary(
        ratings_path=ratings_path,
        movies_path=movies_path,
        n_users=int(data.interactions["user_id"].nunique()),
        n_items=len(data.items),
        n_interactions=len(data.interactions),
        n_series=data.n_series,
        structure=structure,
    )

