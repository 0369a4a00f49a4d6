"""Read raw interaction logs and item catalogs in any supported layout into the canonical tables.

Supported layouts (``ingest.format``):

- ``movielens-100k``: ``u.data`` (tab-separated user, item, rating, timestamp; no header) and
  ``u.item`` (pipe-separated, latin-1: id | title | release date | video date | IMDb URL |
  19 genre flags); genre names from ``u.genre`` when present.
- ``movielens-latest``: ``ratings.csv`` (userId, movieId, rating, timestamp) and ``movies.csv``
  (movieId, title, genres ``A|B`` or ``(no genres listed)``, optional ``description``).
- ``generic``: any CSV / TSV / Parquet / JSONL pair, columns named through
  ``ingest.generic.columns``; timestamps as unix seconds or ISO-8601 strings.
- ``auto``: decided by :func:`detect_format` from the files present.

Loading never drops or repairs a row. A value that does not parse (a rating ``'abc'``, a
timestamp ``'yesterday'``) becomes NaN/NA in the canonical column and its original text is
kept in ``_raw_rating`` / ``_raw_timestamp`` so validation can quarantine the row with a reason.
Problems that make a whole file unusable raise :class:`~tether.data.errors.DataError`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tether.config import IngestConfig
from tether.data.errors import DataError

logger = logging.getLogger(__name__)

INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "rating", "source_row"]
ITEM_COLUMNS = ["item_id", "title", "genres", "description", "source_row"]
# Original text of values that did not parse (NaN where the value parsed, "" where it was missing).
RAW_TIMESTAMP = "_raw_timestamp"
RAW_RATING = "_raw_rating"

FORMATS = ("movielens-100k", "movielens-latest", "generic")
_SIGNATURES = {
    "movielens-100k": ("u.data", "u.item"),
    "movielens-latest": ("ratings.csv", "movies.csv"),
}
_GENERIC_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson")
_DEFAULT_GENERIC_STEMS = ("interactions", "items")

# The 19 genres of MovieLens 100k, in flag order (u.genre); "unknown" means no genre.
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
_ML100K_ITEM_FIELDS = 5 + len(ML100K_GENRES)
_NO_GENRES = "(no genres listed)"
_EPOCH = pd.Timestamp(0, tz="UTC")
# Unix seconds beyond this are not timestamps (and would overflow int64 nanoseconds).
_MAX_ABS_SECONDS = 1e12


@dataclass
class RawData:
    """Raw tables in the canonical schema (docs/CONVENTIONS.md), before validation.

    Attributes:
        interactions: ``user_id``, ``item_id`` (str, NaN when missing), ``timestamp``
            (nullable Int64 unix seconds, NA when missing or unparseable), ``rating``
            (float64, NaN when absent or unparseable), ``source_row`` (int64, 1-based record
            number, header not counted), ``_raw_timestamp`` / ``_raw_rating`` (the original
            text where the value did not parse, ``""`` for a missing timestamp, else NaN).
        items: ``item_id``, ``title`` (str, NaN when missing or blank), ``genres`` (``"A|B"``,
            ``""`` when none), ``description`` (``""`` when none), ``source_row``.
        format: the layout that was read (one of :data:`FORMATS`).
        interactions_path: the interactions file.
        items_path: the item catalog file.
        warnings: things worth knowing that did not stop the load (ignored columns, files).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    format: str
    interactions_path: Path
    items_path: Path
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- layout detection


def _listing(raw_dir: Path) -> list[str]:
    return sorted(
        p.name for p in raw_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".dvc")
    )


def _default_generic_files(files: list[str]) -> tuple[str | None, str | None]:
    """``interactions.<ext>`` and ``items.<ext>`` when exactly one of each is present."""
    found: list[str | None] = []
    for stem in _DEFAULT_GENERIC_STEMS:
        hits = [f for f in files if Path(f).stem == stem and Path(f).suffix.lower() in _GENERIC_SUFFIXES]
        found.append(hits[0] if len(hits) == 1 else None)
    return found[0], found[1]


def _layout_help(files: list[str], ingest: IngestConfig) -> str:
    lines = [f"files found: {files or 'none'}"]
    for name, sig in _SIGNATURES.items():
        present = [f for f in sig if f in files]
        missing = [f for f in sig if f not in files]
        lines.append(f"{name} expects {' + '.join(sig)} (present: {present or 'none'}; missing: {missing or 'none'})")
    g = ingest.generic
    lines.append(
        "generic expects ingest.generic.interactions_file + items_file "
        f"(now {g.interactions_file!r} + {g.items_file!r}) or interactions.<ext> + items.<ext>, "
        "<ext> one of csv, tsv, parquet, jsonl"
    )
    return "; ".join(lines)


def detect_format(raw_dir: Path, ingest_cfg: IngestConfig) -> str:
    """Decide which layout ``raw_dir`` holds.

    Args:
        raw_dir: the raw data directory.
        ingest_cfg: the ingest settings; an explicit ``format`` is returned as is.

    Returns:
        One of ``movielens-100k``, ``movielens-latest``, ``generic``.

    Raises:
        DataError: the directory is missing, or its files match no layout or more than one
            (the message lists the files found and what each layout expects).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(raw_dir, "raw_dir_exists", "directory not found: generate sample data or put your files there")
    if ingest_cfg.format != "auto":
        return ingest_cfg.format
    files = _listing(raw_dir)
    g = ingest_cfg.generic
    # Generic files named in the config are an explicit choice of layout.
    if g.interactions_file and g.items_file and (raw_dir / g.interactions_file).is_file() and (raw_dir / g.items_file).is_file():
        return "generic"
    complete = [name for name, sig in _SIGNATURES.items() if all(f in files for f in sig)]
    touched = [name for name, sig in _SIGNATURES.items() if any(f in files for f in sig)]
    inter, items = _default_generic_files(files)
    if inter or items:
        touched.append("generic")
        if inter and items:
            complete.append("generic")
    if len(complete) == 1 and len(touched) == 1:
        logger.info("detected raw data layout %s in %s", complete[0], raw_dir)
        return complete[0]
    if len(touched) > 1:
        why = f"files of more than one layout ({', '.join(touched)}): remove the stray files or set ingest.format"
    else:
        why = "the files match no known layout: add the missing files or set ingest.format and ingest.generic"
    raise DataError(raw_dir, "known_layout", f"{why}; {_layout_help(files, ingest_cfg)}")


# --------------------------------------------------------------------------- file reading


def _check_not_empty(path: Path, data: bytes) -> None:
    if not data.strip():
        raise DataError(path, "file_not_empty", "the file is empty (0 records): re-export it")


def _field_at(data: bytes, offset: int, sep: str | None, names: list[str] | None) -> str | None:
    """The column that holds byte ``offset``, found by splitting its line up to there."""
    if sep is None:
        return None
    start = data.rfind(b"\n", 0, offset) + 1
    prefix = data[start:offset].decode("latin-1")
    index = len(next(csv.reader([prefix], delimiter=sep), [""])) - 1
    if names is None:
        first = data.split(b"\n", 1)[0].decode("latin-1").lstrip("\ufeff\xef\xbb\xbf").rstrip("\r")
        names = [n.strip() for n in next(csv.reader([first], delimiter=sep), [])]
    return names[index] if 0 <= index < len(names) else f"field {index + 1}"


def _read_text(path: Path, sep: str | None = None, names: list[str] | None = None, encoding: str = "utf-8") -> str:
    """The file's text; raises DataError for an empty file or bytes that are not ``encoding``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file_exists", "file not found") from None
    _check_not_empty(path, data)
    if encoding != "utf-8":
        return data.decode(encoding)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = _field_at(data, exc.start, sep, names)
        snippet = data[max(0, exc.start - 20): exc.start + 10]
        raise DataError(
            path, "utf8_encoding",
            f"byte 0x{data[exc.start]:02x} at byte offset {exc.start} (line {line}) is not valid UTF-8 "
            f"({exc.reason}) near {snippet!r}: re-save the file as UTF-8",
            column=col,
        ) from None
    return text.removeprefix("\ufeff")


def _read_delimited(path: Path, sep: str, *, header: bool, names: list[str] | None = None,
                    encoding: str = "utf-8", quoting: int = csv.QUOTE_MINIMAL) -> pd.DataFrame:
    """Every field as a string (ids like ``007`` stay ``007``); never drops a record."""
    text = _read_text(path, sep=sep, names=names, encoding=encoding)
    try:
        df = pd.read_csv(
            io.StringIO(text), sep=sep, header=0 if header else None, dtype=str,
            keep_default_na=False, na_filter=False, quoting=quoting, skip_blank_lines=True,
            index_col=False,
        )
    except (pd.errors.ParserError, csv.Error) as exc:
        raise DataError(path, "csv_structure", f"cannot be parsed as {sep!r}-separated text: {exc}") from None
    except pd.errors.EmptyDataError:
        raise DataError(path, "file_not_empty", "the file has no records") from None
    if header:
        df.columns = [str(c).strip() for c in df.columns]
        if df.empty:
            raise DataError(path, "has_data_rows", f"only a header ({list(df.columns)}), no data rows")
    return df.reset_index(drop=True)


def _scalar_to_str(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return np.nan
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _read_jsonl(path: Path) -> pd.DataFrame:
    text = _read_text(path)
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, "valid_json", f"line {lineno}: {exc.msg} (column {exc.colno})",
                            rows=[(lineno, line[:80])]) from None
        if not isinstance(obj, dict):
            raise DataError(path, "valid_json", f"line {lineno}: expected one JSON object per line, got {type(obj).__name__}",
                            rows=[(lineno, line[:80])])
        records.append(obj)
    if not records:
        raise DataError(path, "file_not_empty", "no JSON records")
    return pd.DataFrame.from_records(records)


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "file_exists", "file not found")
    _check_not_empty(path, path.read_bytes()[:64])
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(path, "parquet_readable", f"cannot be read as Parquet: {exc}") from None
    if df.empty:
        raise DataError(path, "has_data_rows", f"no data rows (columns {list(df.columns)})")
    return df.reset_index(drop=True)


def _read_generic(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_delimited(path, ",", header=True)
    if suffix == ".tsv":
        return _read_delimited(path, "\t", header=True)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    raise DataError(path, "known_file_type", f"unsupported extension {suffix!r}: use .csv, .tsv, .parquet or .jsonl")


def _require_columns(path: Path, df: pd.DataFrame, required: list[str], optional: list[str], hint: str) -> list[str]:
    """Raise naming missing and unexpected columns; return warnings for ignored extras."""
    cols = [str(c) for c in df.columns]
    known = set(required) | set(optional)
    unexpected = [c for c in cols if c not in known]
    missing = [c for c in required if c not in cols]
    if missing:
        renamed = f"unexpected column(s) found: {unexpected} (renamed? {hint})" if unexpected else "no other columns found"
        raise DataError(
            path, "required_columns",
            f"missing expected column(s) {missing}; {renamed}; columns found: {cols}",
            column=missing[0],
        )
    if unexpected:
        return [f"{path.name}: ignored extra column(s) {unexpected}"]
    return []


# --------------------------------------------------------------------------- value parsing


def _ids(values: pd.Series) -> pd.Series:
    """Ids as strings, surrounding whitespace removed; missing or blank -> NaN."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
        out = values.astype(object).map(_scalar_to_str)
    elif pd.api.types.is_string_dtype(values) and not pd.api.types.is_object_dtype(values):
        out = values
    else:
        out = values.map(_scalar_to_str)
    out = pd.Series(out, dtype="str").str.strip()
    return out.where(out != "", np.nan)


def _texts(values: pd.Series) -> pd.Series:
    """Free text as strings; missing -> NaN (not stripped: cleaning normalises later)."""
    if pd.api.types.is_string_dtype(values) and not pd.api.types.is_object_dtype(values):
        return values.astype("str")
    return pd.Series(values.map(lambda v: np.nan if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)), dtype="str")


def _numbers(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(float64 values, raw text where a non-empty value did not parse else NaN)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        num = values.astype("float64")
        return num, pd.Series(np.nan, index=values.index, dtype="str")
    text = _texts(values).str.strip()
    num = pd.to_numeric(text, errors="coerce").astype("float64")
    bad = num.isna() & text.notna() & (text != "")
    raw = text.where(bad, np.nan)
    return num, raw


def _timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(nullable Int64 unix seconds, raw text where it did not parse; "" when missing)."""
    idx = values.index
    if pd.api.types.is_datetime64_any_dtype(values):
        dt = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        secs = ((dt - _EPOCH) // pd.Timedelta(seconds=1)).astype("float64")
        raw = pd.Series(np.nan, index=idx, dtype="str").where(dt.notna(), "")
        return secs.round().astype("Int64"), raw
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        num = values.astype("float64")
        missing = num.isna()
        ok = num.notna() & np.isfinite(num) & (num.abs() < _MAX_ABS_SECONDS)
        raw = values.astype(str).where(~ok, np.nan).where(~missing, "")
        secs = num.where(ok)
    else:
        text = _texts(values).str.strip()
        missing = text.isna() | (text == "")
        num = pd.to_numeric(text, errors="coerce").astype("float64")
        ok = num.notna() & np.isfinite(num) & (num.abs() < _MAX_ABS_SECONDS)
        secs = num.where(ok)
        rest = ~ok & ~missing
        if rest.any():
            parsed = pd.to_datetime(text[rest], utc=True, errors="coerce", format="ISO8601")
            iso = ((parsed - _EPOCH) // pd.Timedelta(seconds=1)).astype("float64")
            secs.loc[rest] = iso
            ok = ok | (rest & iso.reindex(idx).notna())
        raw = text.where(~ok, np.nan).where(~missing, "")
    return np.floor(secs).astype("Int64"), pd.Series(raw, index=idx, dtype="str")


def _interactions(user: pd.Series, item: pd.Series, ts: pd.Series, rating: pd.Series | None) -> pd.DataFrame:
    n = len(user)
    timestamp, raw_ts = _timestamps(ts)
    if rating is None:
        rating_num = pd.Series(np.nan, index=user.index, dtype="float64")
        raw_rating = pd.Series(np.nan, index=user.index, dtype="str")
    else:
        rating_num, raw_rating = _numbers(rating)
    return pd.DataFrame({
        "user_id": _ids(user),
        "item_id": _ids(item),
        "timestamp": timestamp,
        "rating": rating_num,
        "source_row": np.arange(1, n + 1, dtype="int64"),
        RAW_TIMESTAMP: raw_ts,
        RAW_RATING: raw_rating,
    })


def _items(item: pd.Series, title: pd.Series, genres: pd.Series | None, description: pd.Series | None) -> pd.DataFrame:
    n = len(item)
    title_s = _texts(title)
    title_s = title_s.where(title_s.str.strip() != "", np.nan)

    def text_or_empty(s: pd.Series | None) -> pd.Series:
        if s is None:
            return pd.Series("", index=item.index, dtype="str")
        return _texts(s).fillna("")

    return pd.DataFrame({
        "item_id": _ids(item),
        "title": title_s,
        "genres": text_or_empty(genres),
        "description": text_or_empty(description),
        "source_row": np.arange(1, n + 1, dtype="int64"),
    })


# --------------------------------------------------------------------------- formats


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
