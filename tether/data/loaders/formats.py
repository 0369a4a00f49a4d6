"""The supported layouts (MovieLens 100k, MovieLens latest, generic files) and :func:`load_raw`."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pandas as pd

from tether.config import IngestConfig
from tether.data.errors import DataError
from tether.data.loaders.files import _read_delimited, _read_generic, _require_columns
from tether.data.loaders.layout import _SIGNATURES, _default_generic_files, _layout_help, _listing, detect_format
from tether.data.loaders.schema import RawData
from tether.data.loaders.values import _interactions, _items

logger = logging.getLogger(__name__)

# The 19 genres of MovieLens 100k, in flag order (u.genre); "unknown" means no genre.
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
_ML100K_ITEM_FIELDS = 5 + len(ML100K_GENRES)
_NO_GENRES = "(no genres listed)"


def _load_ml100k(raw_dir: Path, warnings: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, Path, Path]:
    data_path, item_path = raw_dir / "u.data", raw_dir / "u.item"
    names = ["user id", "item id", "rating", "timestamp"]
    ratings = _read_delimited(data_path, "\t", header=False, names=names)
    if ratings.shape[1] < 4:
        raise DataError(
            data_path, "required_columns",
            f"expected 4 tab-separated fields (user id, item id, rating, timestamp), found {ratings.shape[1]} "
            f"in the first record {list(ratings.iloc[0])}: is the file tab-separated?",
            column=names[ratings.shape[1]],
        )
    if ratings.shape[1] > 4:
        warnings.append(f"u.data: ignored {ratings.shape[1] - 4} extra field(s) after the 4th")
    inter = _interactions(ratings[0], ratings[1], ratings[3], ratings[2])

    # QUOTE_NONE: titles contain literal double quotes.
    items = _read_delimited(item_path, "|", header=False, encoding="latin-1", quoting=csv.QUOTE_NONE)
    if items.shape[1] < 2:
        raise DataError(item_path, "required_columns",
                        f"expected {_ML100K_ITEM_FIELDS} pipe-separated fields (movie id | title | ...), found {items.shape[1]}",
                        column="title")
    genre_names = _ml100k_genres(raw_dir / "u.genre", warnings)
    flag_cols = list(items.columns[5:5 + len(genre_names)])
    if len(flag_cols) < len(genre_names):
        warnings.append(f"u.item: {len(flag_cols)} genre flag fields instead of {len(genre_names)}; missing flags read as 0")
    genres = pd.Series("", index=items.index, dtype="object")
    for col, name in zip(flag_cols, genre_names):
        if name.lower() == "unknown":
            continue  # the "unknown" genre means: no genre
        on = items[col].str.strip() == "1"
        genres[on] = genres[on].map(lambda g, n=name: f"{g}|{n}" if g else n)
    return inter, _items(items[0], items[1], genres.astype("str"), None), data_path, item_path


def _ml100k_genres(path: Path, warnings: list[str]) -> list[str]:
    if not path.is_file():
        return list(ML100K_GENRES)
    pairs = []
    for line in path.read_bytes().decode("latin-1").splitlines():
        if "|" in line:
            name, _, idx = line.partition("|")
            if idx.strip().isdigit():
                pairs.append((int(idx), name.strip()))
    if not pairs:
        warnings.append("u.genre: no 'name|index' lines; using the standard 19 genre names")
        return list(ML100K_GENRES)
    return [name for _, name in sorted(pairs)]


def _load_ml_latest(raw_dir: Path, warnings: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, Path, Path]:
    ratings_path, movies_path = raw_dir / "ratings.csv", raw_dir / "movies.csv"
    hint = "MovieLens-latest headers are userId,movieId,rating,timestamp and movieId,title,genres[,description]"
    ratings = _read_delimited(ratings_path, ",", header=True)
    warnings += _require_columns(ratings_path, ratings, ["userId", "movieId", "rating", "timestamp"], [], hint)
    inter = _interactions(ratings["userId"], ratings["movieId"], ratings["timestamp"], ratings["rating"])
    movies = _read_delimited(movies_path, ",", header=True)
    warnings += _require_columns(movies_path, movies, ["movieId", "title"], ["genres", "description"], hint)
    if "genres" not in movies.columns:
        warnings.append("movies.csv: no 'genres' column; items have no genres")
        genres = None
    else:
        genres = movies["genres"].where(movies["genres"].str.strip() != _NO_GENRES, "")
    items = _items(movies["movieId"], movies["title"], genres, movies.get("description"))
    return inter, items, ratings_path, movies_path


def _load_generic(raw_dir: Path, ingest: IngestConfig, warnings: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, Path, Path]:
    g = ingest.generic
    inter_name, items_name = g.interactions_file, g.items_file
    if not (inter_name and items_name):
        default_inter, default_items = _default_generic_files(_listing(raw_dir))
        inter_name, items_name = inter_name or default_inter, items_name or default_items
    if not (inter_name and items_name):
        raise DataError(raw_dir, "known_layout",
                        "format generic needs ingest.generic.interactions_file and items_file; "
                        + _layout_help(_listing(raw_dir), ingest))
    inter_path, items_path = raw_dir / inter_name, raw_dir / items_name
    for p in (inter_path, items_path):
        if not p.is_file():
            raise DataError(p, "file_exists", f"file not found; files in {raw_dir}: {_listing(raw_dir)}")
    m = g.columns
    hint = "map them in ingest.generic.columns"

    frame = _read_generic(inter_path)
    warnings += _require_columns(inter_path, frame, [m.user_id, m.item_id, m.timestamp], [c for c in [m.rating] if c], hint)
    rating = None
    if m.rating:
        if m.rating in frame.columns:
            rating = frame[m.rating]
        else:
            warnings.append(f"{inter_path.name}: rating column {m.rating!r} not found; ratings treated as absent")
    inter = _interactions(frame[m.user_id], frame[m.item_id], frame[m.timestamp], rating)

    frame = _read_generic(items_path)
    optional = [c for c in (m.genres, m.description) if c]
    warnings += _require_columns(items_path, frame, [m.item_id, m.title], optional, hint)
    items = _items(
        frame[m.item_id], frame[m.title],
        frame[m.genres] if m.genres and m.genres in frame.columns else None,
        frame[m.description] if m.description and m.description in frame.columns else None,
    )
    return inter, items, inter_path, items_path


def load_raw(raw_dir: Path, ingest: IngestConfig) -> RawData:
    """Read the raw files into the canonical tables without dropping a row.

    Args:
        raw_dir: the directory holding the raw files.
        ingest: the ingest settings (format and, for generic files, the column mapping).

    Returns:
        The raw tables plus the format, the paths read and warnings.

    Raises:
        DataError: a file is missing, empty, header-only, not UTF-8 (where UTF-8 is expected),
            structurally unparseable, or lacks a required column; or the layout is unknown.
    """
    raw_dir = Path(raw_dir)
    fmt = detect_format(raw_dir, ingest)
    warnings: list[str] = []
    if fmt == "movielens-100k":
        inter, items, ipath, cpath = _load_ml100k(raw_dir, warnings)
    elif fmt == "movielens-latest":
        inter, items, ipath, cpath = _load_ml_latest(raw_dir, warnings)
    else:
        inter, items, ipath, cpath = _load_generic(raw_dir, ingest, warnings)
    # Files of another layout lying beside the chosen one are probably a mistake: say so.
    files = _listing(raw_dir)
    for name, sig in _SIGNATURES.items():
        if name != fmt and any(f in files for f in sig):
            warnings.append(f"ignored {[f for f in sig if f in files]} ({name} files) while reading {fmt}")
    for w in warnings:
        logger.warning("%s", w)
    logger.info("loaded %d interactions from %s and %d items from %s (%s)", len(inter), ipath, len(items), cpath, fmt)
    return RawData(inter, items, fmt, ipath, cpath, warnings)
