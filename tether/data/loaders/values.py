"""Parsing raw values into the canonical columns, keeping the text of what did not parse.

A value that does not parse becomes NaN/NA in the canonical column and its original text goes
to ``_raw_timestamp`` / ``_raw_rating``, so validation can quarantine the row with a reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tether.data.loaders.schema import RAW_RATING, RAW_TIMESTAMP

_EPOCH = pd.Timestamp(0, tz="UTC")
# Unix seconds beyond this are not timestamps (and would overflow int64 nanoseconds).
_MAX_ABS_SECONDS = 1e12


def _scalar_to_str(value: Any) -> Any:
    """A scalar as text (``3.0`` -> ``"3"``, as ids are written); None / NaN -> NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return np.nan
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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
