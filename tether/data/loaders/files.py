"""Reading one raw file (CSV / TSV / Parquet / JSONL) into string columns, with clear errors.

Every field is read as text and no record is dropped; an empty, header-only, non-UTF-8 or
structurally broken file raises :class:`~tether.data.errors.DataError` naming the file, and
for encoding errors the line and the column.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from tether.data.errors import DataError


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
