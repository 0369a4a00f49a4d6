"""A deterministic sample-data generator: a movie catalog and an interaction log that a
small LLM can learn from.

The files are MovieLens-latest shaped (``ratings.csv``: ``userId,movieId,rating,timestamp``;
``movies.csv``: ``movieId,title,genres,description``, fields with commas quoted the way
MovieLens quotes them), so the ingest stage reads them with its ordinary MovieLens loader.

The same seed and settings give byte-for-byte identical files (one ``numpy`` Generator,
consumed in a fixed order; no set or dict iteration order reaches the output).

Structure the log carries (what a fine-tuned model can learn, beyond popularity):

* **Series watched in order.** ``series_share`` of the catalog belongs to series of 2-4
  parts titled ``"Harbor Lights, Part 1 (2008)"``, ``"Harbor Lights, Part 2 (2010)"``, ...
  (one part every two years, so a sequel's year follows from its predecessor's).
  A user never starts a series in the middle: only Part 1 is ever picked "fresh", and
  Part n+1 is only watched after Part n. While a user has a started, unfinished series,
  each next interaction is its next part with probability ``continue_prob`` (the most
  recently started series first). So continuations are frequent and mostly land within a
  few steps of the previous part, i.e. inside the prompt's history window: with the
  defaults over a third of the held-out last items are the next part of a series already
  in the user's history (see :func:`structure_report`; params.yaml defaults, seed 1234:
  36% of last items, 35% with the previous part among the last 5; 72% of interactions
  in a favourite genre vs 22% by chance; the top 10% of items get 38% of interactions).
* **Genre affinity.** Each item has 1-2 of ten genres (``"Crime|Drama"``); each user has
  1-2 favourite genres. A fresh pick comes from one of the user's favourite genres with
  probability ``favourite_genre_prob``, else from the whole catalog. Ratings are higher
  for favourite-genre items. Descriptions name the primary genre ("a tense thriller about
  ..."), so item text carries the genre too.
* **Popularity skew.** Fresh picks follow Zipf-like weights ``1 / rank ** popularity_exponent``
  over a random ranking of the items that can be picked fresh (standalone titles and
  Part 1s), so a few items are watched by many users and most by few.

Other properties: titles are unique readable English ``Title (Year)`` of 2-4 words (some
stored the MovieLens way, ``"Silent Harbor, The (2004)"``, which the cleaning stage turns
back into ``"The Silent Harbor (2004)"``); a user never watches an item twice; timestamps
strictly increase within a user, starting after ``start_date``; ratings are half-steps in
1..5. A user whose options run out (tiny catalogs) gets a shorter history.

:func:`make_large_log` builds a large, somewhat dirty log (duplicates, MovieLens article
titles, PII and odd Unicode in the text, a few short users) with vectorised numpy, in the
canonical table shape, for benchmarks of the cleaning stage.
"""

from __future__ import annotations

import bisect
import csv
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tether.config import GenerateConfig

logger = logging.getLogger(__name__)

SERIES_CADENCE = 2  # years between the parts of a series (first parts 1975-2010, so <= 2016)

GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Comedy", "Crime", "Drama",
    "Fantasy", "Horror", "Romance", "Sci-Fi", "Thriller",
)

# How each genre is named in a description ("a tense <noun> about ...").
_GENRE_NOUN = {
    "Action": "action film", "Adventure": "adventure", "Comedy": "comedy",
    "Crime": "crime story", "Drama": "drama", "Fantasy": "fantasy tale",
    "Horror": "horror film", "Romance": "romance", "Sci-Fi": "science-fiction film",
    "Thriller": "thriller",
}
_GENRE_TONE = {
    "Action": ("fast", "explosive", "relentless"),
    "Adventure": ("sweeping", "rousing", "sun-bleached"),
    "Comedy": ("warm", "absurd", "sharp"),
    "Crime": ("gritty", "cool", "twisting"),
    "Drama": ("quiet", "tender", "unflinching"),
    "Fantasy": ("enchanting", "strange", "luminous"),
    "Horror": ("creeping", "grim", "unsettling"),
    "Romance": ("bittersweet", "playful", "tender"),
    "Sci-Fi": ("cerebral", "eerie", "dazzling"),
    "Thriller": ("tense", "taut", "paranoid"),
}

_ADJECTIVES = (
    "Silent", "Crimson", "Hidden", "Broken", "Golden", "Distant", "Frozen", "Burning",
    "Quiet", "Wild", "Hollow", "Midnight", "Scarlet", "Silver", "Forgotten", "Restless",
    "Lonely", "Bright", "Shattered", "Secret", "Savage", "Gentle", "Velvet", "Northern",
    "Southern", "Last", "Lost", "Falling", "Rising", "Wandering", "Sleeping", "Stolen",
    "Painted", "Crooked", "Hungry", "Fearless", "Bitter", "Lucky", "Strange", "Dark",
    "Pale", "Neon", "Salt", "Stone", "Glass", "Copper", "Winter", "Summer", "Little",
    "Grand", "Narrow", "Brave", "Wicked", "Tender", "Reckless", "Sudden", "Crystal",
    "Paper", "Iron", "Electric", "Emerald", "Amber", "Ancient", "Endless", "Open",
)
_VOWEL_ADJECTIVES = tuple(a for a in _ADJECTIVES if a[0] in "AEIOU")
_NOUNS = (
    "Harbor", "River", "Garden", "Mountain", "Valley", "Kingdom", "Empire", "Shadow",
    "Mirror", "Signal", "Station", "Horizon", "Island", "Forest", "Desert", "Ocean",
    "Harvest", "Promise", "Letter", "Voyage", "Journey", "Bridge", "Tower", "Castle",
    "Engine", "Orchard", "Lantern", "Compass", "Anchor", "Crown", "Dagger", "Feather",
    "Frontier", "Highway", "Lighthouse", "Meadow", "Canyon", "Circus", "Carnival",
    "Parade", "Echo", "Thunder", "Storm", "Tide", "Ember", "Comet", "Planet", "Orbit",
    "Stranger", "Detective", "Witness", "Outlaw", "Soldier", "Pilot", "Sailor", "Dancer",
    "Painter", "Gambler", "Hunter", "Wolf", "Raven", "Falcon", "Tiger", "Fox", "Serpent",
    "Dragon", "Ghost", "Phantom", "Heart", "Dream", "Night", "Morning", "Sky", "Road",
    "City", "Village", "Street", "Window", "Door", "Key", "Clock", "Song", "Melody",
)
_NAMES = (
    "Maria", "Jonah", "Ellie", "Victor", "Nora", "Felix", "Iris", "Oscar", "Clara", "Hugo",
    "Ada", "Leo", "Mabel", "Silas", "Greta", "Tobias", "Vera", "Arthur", "June", "Rufus",
)
_PLACES = (
    "Paris", "Tokyo", "Lisbon", "Cairo", "Havana", "Vienna", "Oslo", "Brooklyn", "Texas",
    "Alaska", "Marseille", "Montana", "Sicily", "Berlin", "Dublin", "Rio", "Shanghai",
    "Prague", "Nairobi", "Memphis",
)
_WHO = (
    "a retired pilot", "an estranged sister", "a young detective", "a stubborn farmer",
    "an exiled prince", "a small-town teacher", "a runaway teenager", "a weary soldier",
    "an ambitious chef", "a lonely astronomer", "a disgraced surgeon", "a reluctant heir",
    "a nervous bank clerk", "a travelling magician", "a widowed fisherman", "a rookie reporter",
)
_DOES = (
    "uncovers a family secret", "must win back a stolen fortune", "races against time",
    "falls for an unlikely rival", "searches for a missing friend", "faces an ancient curse",
    "plans one last job", "tries to save a failing theatre", "gets a second chance",
    "is hunted by a ruthless stranger", "starts over with nothing", "breaks a promise",
)
_WHERE = (
    "in a coastal town", "on a distant planet", "in 1970s Paris", "across a frozen wasteland",
    "in a city that never sleeps", "on a crumbling estate", "aboard a night train",
    "in the desert, far from home", "in a village with no name", "beneath a flooded city",
)

_TITLE_PART_RE = re.compile(r"^(?P<base>.+), Part (?P<part>\d+) \(\d{4}\)$")


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


# --------------------------------------------------------------------------- catalog


def _base_name(rng: np.random.Generator, allow_article: bool) -> tuple[str, str]:
    """Draw a 2-4 word name; returns (key without article, MovieLens-stored form)."""
    # Series names stay short (2-3 words): ", Part n" is appended to them.
    pattern = int(rng.integers(0, 8 if allow_article else 4))
    adj = _ADJECTIVES[rng.integers(len(_ADJECTIVES))]
    noun = _NOUNS[rng.integers(len(_NOUNS))]
    place = _PLACES[rng.integers(len(_PLACES))]
    name = _NAMES[rng.integers(len(_NAMES))]
    if pattern == 0:
        key = f"{adj} {noun}"
        return key, key
    if pattern == 1:
        key = f"{noun} of {place}"
        return key, key
    if pattern == 2:
        key = f"{name}'s {noun}"
        return key, key
    if pattern == 3:
        key = f"{noun} to {place}"
        return key, key
    if pattern == 4:
        key = f"{adj} {noun} of {place}"
        return key, key
    # MovieLens stores leading articles at the end: "Silent Harbor, The".
    if pattern in (5, 6):
        key = f"{adj} {noun}"
        return key, f"{key}, The"
    if pattern == 7 and rng.random() < 0.5:
        key = f"{noun} in {place}"
        return key, f"{key}, {'An' if noun[0] in 'AEIOU' else 'A'}"
    vadj = _VOWEL_ADJECTIVES[rng.integers(len(_VOWEL_ADJECTIVES))]
    key = f"{vadj} {noun}"
    return key, f"{key}, An"


def _description(rng: np.random.Generator, genre: str, series: tuple[str, int] | None) -> str:
    tone = _GENRE_TONE[genre][rng.integers(3)]
    article = "an" if tone[0] in "aeiou" else "a"
    who = _WHO[rng.integers(len(_WHO))]
    does = _DOES[rng.integers(len(_DOES))]
    where = _WHERE[rng.integers(len(_WHERE))]
    body = f"{article} {tone} {_GENRE_NOUN[genre]} about {who} who {does} {where}."
    if series is None:
        return body[0].upper() + body[1:]
    base, part = series
    return f"{base}, part {part}: {body}"


def _build_catalog(
    rng: np.random.Generator, n_items: int, series_share: float
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Build the catalog.

    Returns:
        items (movieId order = row order), genre matrix (n_items x n_genres, bool),
        next_part (index of the next part or -1), is_entry (standalone or Part 1).
    """
    n_series_items_target = int(round(n_items * series_share))
    # Series lengths 2-4 until the series budget is spent.
    lengths: list[int] = []
    while sum(lengths) < n_series_items_target:
        remaining = n_series_items_target - sum(lengths)
        length = int(rng.choice([2, 3, 4], p=[0.35, 0.4, 0.25]))
        if remaining < 2:
            break
        lengths.append(min(length, remaining))
    n_standalone = n_items - sum(lengths)

    used_keys: set[str] = set()
    used_titles: set[str] = set()

    def fresh_name(allow_article: bool, year: int) -> tuple[str, str]:
        for attempt in range(200):
            key, stored = _base_name(rng, allow_article)
            # Prefer a name never used; on huge catalogs accept a reuse in another year.
            if key not in used_keys or (attempt >= 50 and f"{stored} ({year})" not in used_titles):
                used_keys.add(key)
                return key, stored
        raise RuntimeError("could not draw a unique title; the word lists are exhausted")

    rows: list[dict[str, Any]] = []
    g = len(GENRES)
    for length in lengths:
        genres = _draw_genres(rng, g)
        year = int(rng.integers(1975, 2011))
        key, _ = fresh_name(False, year)
        for part in range(1, length + 1):
            title = f"{key}, Part {part} ({year})"
            used_titles.add(title)
            rows.append({
                # "next": the row (construction order) of the following part, -1 for the last.
                "title": title, "genres": genres, "part": part, "next": len(rows) + 1 if part < length else -1,
                "description": _description(rng, GENRES[genres[0]], (key, part)),
            })
            # A regular cadence, one part every SERIES_CADENCE years: the next part's year follows
            # from the previous part's, which is in the user's history. With random gaps (the
            # first version) no model could name a sequel's year without memorising it, and free
            # generations were near-misses ("Tide to Lisbon, Part 4 (1981)" for 1982). The draw
            # stays, so every other draw, hence every name and interaction, is unchanged.
            rng.integers(1, 5)
            year += SERIES_CADENCE
    for _ in range(n_standalone):
        genres = _draw_genres(rng, g)
        year = int(rng.integers(1970, 2019))
        _, stored = fresh_name(True, year)
        title = f"{stored} ({year})"
        used_titles.add(title)
        rows.append({
            "title": title, "genres": genres, "part": 0, "next": -1,
            "description": _description(rng, GENRES[genres[0]], None),
        })

    # Random movieId order, so ids carry no series or genre information.
    order = rng.permutation(n_items)
    rows = [rows[i] for i in order]
    pos_of_old = np.empty(n_items, dtype=np.int64)
    pos_of_old[order] = np.arange(n_items)

    genre_matrix = np.zeros((n_items, g), dtype=bool)
    next_part = np.full(n_items, -1, dtype=np.int64)
    is_entry = np.zeros(n_items, dtype=bool)
    for new_idx, row in enumerate(rows):
        genre_matrix[new_idx, list(row["genres"])] = True
        is_entry[new_idx] = row["part"] <= 1
        if row["next"] >= 0:
            next_part[new_idx] = pos_of_old[row["next"]]

    items = pd.DataFrame({
        "item_id": [str(i + 1) for i in range(n_items)],
        "title": [r["title"] for r in rows],
        "genres": ["|".join(sorted(GENRES[k] for k in r["genres"])) for r in rows],
        "description": [r["description"] for r in rows],
    })
    return items, genre_matrix, next_part, is_entry


def _draw_genres(rng: np.random.Generator, g: int) -> tuple[int, ...]:
    """One primary genre, and a second one half of the time (primary first)."""
    primary = int(rng.integers(g))
    if rng.random() < 0.5:
        second = int(rng.integers(g - 1))
        second += second >= primary
        return (primary, second)
    return (primary,)


def _zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    ranks = rng.permutation(n) + 1
    return 1.0 / ranks.astype(np.float64) ** exponent


# --------------------------------------------------------------------------- log


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


# --------------------------------------------------------------------------- report


def structure_report(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    favourite_genres: dict[str, tuple[str, ...]] | None = None,
    history_length: int = 5,
) -> dict[str, float]:
    """Numbers that say how learnable a log is (works on any canonical tables).

    Args:
        interactions: canonical interactions (``user_id``, ``item_id``, ``timestamp``).
        items: canonical items (``item_id``, ``title``, ``genres``).
        favourite_genres: each user's favourite genres, when known (the generator's truth).
        history_length: the prompt window used for the "previous part in the window" share.

    Returns:
        ``series_continuation_share`` (all interactions and ``last_item_*`` for each user's
        last item: Part n>1 whose Part n-1 the user watched before; ``_in_window``: within
        the last ``history_length`` items), ``top10pct_item_share`` of interactions,
        ``favourite_genre_share`` and its ``_chance`` level (when favourites are given),
        ``mean_history_length``.
    """
    df = interactions[["user_id", "item_id", "timestamp"]].copy()
    if "source_row" in interactions:
        df["source_row"] = interactions["source_row"].to_numpy()
    else:
        df["source_row"] = np.arange(len(df))
    df = df.sort_values(["user_id", "timestamp", "source_row"], kind="stable").reset_index(drop=True)
    parts = items["title"].str.extract(_TITLE_PART_RE)
    base_of = dict(zip(items["item_id"], parts["base"]))
    part_of = dict(zip(items["item_id"], pd.to_numeric(parts["part"]).fillna(0).astype(int)))
    key = [(base_of.get(i), part_of.get(i, 0)) for i in df["item_id"]]

    users = df["user_id"].to_numpy()
    cont = np.zeros(len(df), dtype=bool)
    cont_window = np.zeros(len(df), dtype=bool)
    seen: dict[tuple[Any, int], int] = {}
    prev_user = None
    for i, (u, k) in enumerate(zip(users, key)):
        if u != prev_user:
            seen = {}
            prev_user = u
        base, part = k
        if isinstance(base, str) and part > 1 and (base, part - 1) in seen:
            cont[i] = True
            cont_window[i] = i - seen[(base, part - 1)] <= history_length
        if isinstance(base, str):
            seen[(base, part)] = i
    last = np.r_[users[1:] != users[:-1], True] if len(users) else np.zeros(0, dtype=bool)

    counts = df["item_id"].value_counts().to_numpy()
    top = max(1, int(np.ceil(0.1 * len(items))))
    out: dict[str, float] = {
        "n_interactions": float(len(df)),
        "mean_history_length": float(len(df) / max(1, df["user_id"].nunique())),
        "series_continuation_share": float(cont.mean()) if len(df) else 0.0,
        "last_item_series_continuation_share": float(cont[last].mean()) if last.any() else 0.0,
        "last_item_series_continuation_in_window_share": float(cont_window[last].mean()) if last.any() else 0.0,
        "top10pct_item_share": float(np.sort(counts)[::-1][:top].sum() / max(1, counts.sum())),
    }
    if favourite_genres is not None:
        # Genre membership as bit masks: one integer per interaction and per user.
        bit = {gname: 1 << k for k, gname in enumerate(GENRES)}
        item_bits = {
            i: sum(bit.get(gname, 0) for gname in set(str(gs).split("|")))
            for i, gs in zip(items["item_id"], items["genres"].fillna(""))
        }
        row_bits = df["item_id"].map(item_bits).fillna(0).to_numpy(dtype=np.int64)
        user_bits = {u: sum(bit.get(gname, 0) for gname in set(favs)) for u, favs in favourite_genres.items()}
        fav_bits = df["user_id"].map(user_bits).fillna(0).to_numpy(dtype=np.int64)
        out["favourite_genre_share"] = float(((row_bits & fav_bits) != 0).mean()) if len(df) else 0.0
        # Chance: how often an interaction drawn from the whole log hits the user's favourites.
        bits_count = pd.Series(row_bits).value_counts()
        chance_of: dict[int, float] = {}
        for b in set(user_bits.values()):
            chance_of[b] = float(bits_count[(bits_count.index.to_numpy() & b) != 0].sum() / max(1, len(df)))
        out["favourite_genre_share_chance"] = (
            float(np.mean([chance_of[b] for b in user_bits.values()])) if user_bits else 0.0
        )
    return out


# --------------------------------------------------------------------------- large log


def make_large_log(
    n_interactions: int,
    seed: int,
    n_items: int | None = None,
    dirty: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A large log in canonical table form, fast (vectorised numpy), for benchmarks.

    Same ingredients as :func:`generate_tables` (Zipf popularity, favourite genres, series
    continuations) approximated without a per-user loop; users may re-watch items (the
    cleaning stage drops those duplicates). With ``dirty`` some item text carries MovieLens
    article titles, full-width letters, control characters, emails, phone numbers and URLs,
    ties in timestamps exist, and a few users have fewer than 3 interactions.

    Args:
        n_interactions: exact number of interaction rows.
        seed: randomness source.
        n_items: catalog size (default ``max(500, n_interactions // 200)``).
        dirty: inject the text problems listed above.

    Returns:
        ``(interactions, items)`` with the canonical columns, rows ordered by user then item
        (like MovieLens files, so chronological order is the cleaner's job).
    """
    rng = np.random.default_rng(seed)
    n_items = n_items or max(500, n_interactions // 200)
    items, genre_matrix, next_part, is_entry = _build_catalog(rng, n_items, 0.35)
    g = genre_matrix.shape[1]

    # Users: history lengths ~ 3 + geometric(mean ~20); the last user takes the remainder.
    lengths = 3 + rng.geometric(1 / 18, size=n_interactions // 10 + 10)
    csum = np.cumsum(lengths)
    n_users = int(np.searchsorted(csum, n_interactions) + 1)
    lengths = lengths[:n_users]
    lengths[-1] -= int(csum[n_users - 1] - n_interactions)
    if dirty:  # a few short users for k-core filtering to remove
        short = rng.choice(n_users - 1, size=max(1, n_users // 200), replace=False)
        moved = lengths[short] - 2
        lengths[short] = 2
        lengths[-1] += int(moved.sum())
    user = np.repeat(np.arange(n_users), lengths)
    fav = rng.integers(g, size=n_users)[user]

    weights = np.where(is_entry, _zipf_weights(rng, n_items, 1.0), 0.0)
    item = np.empty(n_interactions, dtype=np.int64)
    from_fav = rng.random(n_interactions) < 0.7
    u01 = rng.random(n_interactions)
    entry = np.flatnonzero(is_entry)
    cdf_all = np.cumsum(weights[entry])
    pick = ~from_fav
    item[pick] = entry[np.minimum(np.searchsorted(cdf_all / cdf_all[-1], u01[pick]), len(entry) - 1)]
    for k in range(g):
        rows = np.flatnonzero(from_fav & (fav == k))
        idx = entry[genre_matrix[entry, k]]
        cdf = np.cumsum(weights[idx])
        item[rows] = idx[np.minimum(np.searchsorted(cdf / cdf[-1], u01[rows]), len(idx) - 1)]
    # Sampling with replacement repeats popular items within a user: redraw those a few
    # times from the whole catalog, so duplicates stay a small, realistic share.
    for _ in range(8):
        dup = pd.Series(user * n_items + item).duplicated().to_numpy()
        if not dup.any():
            break
        redraw = np.searchsorted(cdf_all / cdf_all[-1], rng.random(int(dup.sum())))
        item[dup] = entry[np.minimum(redraw, len(entry) - 1)]
    # One pass of series continuations: after Part n, often Part n+1.
    same_user = np.r_[False, user[1:] == user[:-1]]
    prev_next = np.r_[-1, next_part[item[:-1]]]
    cont = same_user & (prev_next >= 0) & (rng.random(n_interactions) < 0.6)
    item[cont] = prev_next[cont]
    if dirty:  # explicit re-watches: the cleaner keeps the earliest
        rewatch = np.flatnonzero(same_user & (rng.random(n_interactions) < 0.01))
        item[rewatch] = item[rewatch - 1]

    start = 1_546_300_800  # 2019-01-01 UTC
    gaps = np.floor(rng.exponential(2 * 86_400, size=n_interactions)).astype(np.int64)
    if dirty:
        gaps[rng.random(n_interactions) < 0.01] = 0  # ties: the cleaner breaks them by source_row
    first = np.r_[True, ~same_user[1:]]
    gaps[first] = rng.integers(0, 730 * 86_400, size=int(first.sum()))
    csum = np.cumsum(gaps)
    user_base = np.r_[0, csum[:-1]][first]  # cumsum before each user's first row
    ts = csum - np.repeat(user_base, lengths) + start
    rating = np.clip(np.round((3.5 + rng.normal(0, 1.0, n_interactions)) * 2) / 2, 0.5, 5.0)

    order = np.lexsort((item, user))
    interactions = pd.DataFrame({
        "user_id": (user[order] + 1).astype(str),
        "item_id": (item[order] + 1).astype(str),
        "timestamp": ts[order].astype(np.int64),
        "rating": rating[order].astype(np.float64),
    })
    interactions["source_row"] = np.arange(1, n_interactions + 1, dtype=np.int64)

    if dirty:
        titles = items["title"].to_numpy(dtype=object).copy()
        desc = items["description"].to_numpy(dtype=object).copy()
        r = rng.random(n_items)
        for i in np.flatnonzero(r < 0.01):
            titles[i] = titles[i].replace("a", "\uff41")  # full-width 'a', NFKC maps it back
        for i in np.flatnonzero((r >= 0.01) & (r < 0.02)):
            titles[i] = titles[i].replace(" ", "  \t", 1) + "\u200b"
        for i in np.flatnonzero((r >= 0.02) & (r < 0.03)):
            desc[i] = desc[i] + " Contact press@example.com for screeners."
        for i in np.flatnonzero((r >= 0.03) & (r < 0.04)):
            desc[i] = desc[i] + " Tickets: +1 555-123-4567."
        for i in np.flatnonzero((r >= 0.04) & (r < 0.05)):
            desc[i] = desc[i] + " More at https://example.com/films?id=" + str(i) + "."
        items = items.assign(title=titles, description=desc)
        items["title"] = items["title"].astype(str)
        items["description"] = items["description"].astype(str)
    items = items.copy()
    items["source_row"] = np.arange(1, n_items + 1, dtype=np.int64)
    return interactions, items
