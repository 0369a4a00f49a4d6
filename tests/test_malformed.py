"""Malformed inputs, one case each: a clear DataError (file, column, rule in the message) or
a quarantine with the right reason; and never a lost row (rows in == kept + quarantined)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tether.config import IngestConfig, ValidationConfig
from tether.data.errors import DataError
from tether.data.loaders import load_raw
from tether.data.validate import validate

pytestmark = pytest.mark.integration

NOW = datetime(2024, 1, 1, tzinfo=UTC)
T0 = 1_600_000_000
RATINGS_HEADER = "userId,movieId,rating,timestamp"
MOVIES_HEADER = "movieId,title,genres"
# 3 users x 4 items: removing one interaction still leaves each user >= min_history_length (3).
GOOD_RATINGS = [f"{u},{i},4.0,{T0 + 60 * (10 * u + i)}" for u in (1, 2, 3) for i in (1, 2, 3, 4)]
GOOD_MOVIES = ["1,Alpha (1990),Drama", "2,Beta (1991),Comedy", "3,Gamma (1992),War", "4,Delta (1993),"]


@dataclass
class Raise:
    """Expect a DataError naming this file, column and rule (and these words)."""

    file: str
    column: str | None
    rule: str
    words: tuple[str, ...] = ()


@dataclass
class Quarantine:
    """Expect these source rows of ``table`` quarantined by ``rule`` with ``words`` in the reason."""

    table: str
    rows: list[int]
    rule: str
    words: tuple[str, ...] = ()


def lines(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode("utf-8")


def latest(ratings: bytes | None = None, movies: bytes | None = None) -> dict[str, bytes]:
    return {
        "ratings.csv": ratings if ratings is not None else lines(RATINGS_HEADER, *GOOD_RATINGS),
        "movies.csv": movies if movies is not None else lines(MOVIES_HEADER, *GOOD_MOVIES),
    }


CASES = {
    "missing_column": (
        latest(ratings=lines("userId,movieId,rating", "1,1,4.0")),
        Raise("ratings.csv", "timestamp", "required_columns", ("missing expected column(s) ['timestamp']",)),
    ),
    "renamed_column": (
        latest(ratings=lines("userId,movieId,score,timestamp", f"1,1,4.0,{T0}")),
        Raise("ratings.csv", "rating", "required_columns", ("['rating']", "unexpected column(s) found: ['score']")),
    ),
    "extra_column": (
        latest(ratings=lines(RATINGS_HEADER + ",device", *(r + ",tv" for r in GOOD_RATINGS))),
        None,  # kept, with a warning naming the column (asserted below)
    ),
    "rating_not_a_number": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, f"1,2,abc,{T0 + 1}")),
        Quarantine("interactions", [13], "rating_is_number", ("rating 'abc' is not a number",)),
    ),
    "timestamp_not_a_time": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, "1,2,4.0,yesterday")),
        Quarantine("interactions", [13], "timestamp_parseable", ("'yesterday'", "neither unix seconds nor ISO-8601")),
    ),
    "null_ids": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, f",2,4.0,{T0 + 1}")),
        Quarantine("interactions", [13], "user_id_not_null", ("user_id is missing",)),
    ),
    "null_item_id_in_catalog": (
        latest(movies=lines(MOVIES_HEADER, *GOOD_MOVIES, ",Orphan (2000),Drama")),
        Quarantine("items", [5], "item_id_not_null", ("item_id is missing",)),
    ),
    "rating_out_of_range": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, f"1,2,7.5,{T0 + 1}", f"1,3,0,{T0 + 2}")),
        Quarantine("interactions", [13, 14], "rating_in_range", ("is outside [0.5, 5.0]",)),
    ),
    "future_timestamp": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, f"1,2,4.0,{int(NOW.timestamp()) + 7 * 86_400}")),
        Quarantine("interactions", [13], "timestamp_not_future", ("in the future", "2024-01-08")),
    ),
    "zero_timestamp": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, "1,2,4.0,0")),
        Quarantine("interactions", [13], "timestamp_not_before_min", ("1970-01-01", "before min_timestamp 1990-01-01")),
    ),
    "unknown_item": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, f"1,999,4.0,{T0 + 1}")),
        Quarantine("interactions", [13], "item_in_catalog", ("item '999' is not in the item catalog 'movies.csv'",)),
    ),
    "duplicate_rows": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, GOOD_RATINGS[0], GOOD_RATINGS[0])),
        Quarantine("interactions", [13, 14], "interaction_unique", ("duplicate of row 1",)),
    ),
    "duplicate_item_ids": (
        latest(movies=lines(MOVIES_HEADER, *GOOD_MOVIES, "2,Beta Again (1999),Drama")),
        Quarantine("items", [5], "item_id_unique", ("duplicate item_id '2': first seen at row 2",)),
    ),
    "empty_file": (
        latest(ratings=b""),
        Raise("ratings.csv", None, "file_not_empty", ("empty",)),
    ),
    "header_only": (
        latest(movies=lines(MOVIES_HEADER)),
        Raise("movies.csv", None, "has_data_rows", ("no data rows",)),
    ),
    "non_utf8_bytes": (
        latest(movies=lines(MOVIES_HEADER, *GOOD_MOVIES[:2]) + b"3,Caf\xe9 Noir (1992),War\n"),
        Raise("movies.csv", "title", "utf8_encoding", ("0xe9", "line 4", "byte offset")),
    ),
    "very_long_title": (
        latest(movies=lines(MOVIES_HEADER, *GOOD_MOVIES, "5," + "x" * 10_000 + ",Drama")),
        Quarantine("items", [5], "title_length", ("10000 characters, more than max_title_length 200",)),
    ),
    "blank_title": (
        latest(movies=lines(MOVIES_HEADER, *GOOD_MOVIES, '5,"   ",Drama')),
        Quarantine("items", [5], "title_not_null", ("title is missing",)),
    ),
    "path_separator_ids": (
        latest(movies=lines(MOVIES_HEADER, *GOOD_MOVIES, "../x,Escape (2000),Drama", "a/b,Slash (2001),Drama")),
        Quarantine("items", [5, 6], "item_id_pattern", ("does not match id_pattern",)),
    ),
    "path_separator_user_id": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, f"..\\u,1,4.0,{T0 + 1}")),
        Quarantine("interactions", [13], "user_id_pattern", ("user_id '..\\\\u' does not match id_pattern",)),
    ),
    "control_characters_in_title": (
        latest(movies=lines(MOVIES_HEADER, *GOOD_MOVIES, "5,Bell\x07and\x1bEscape (2000),Drama")),
        Quarantine("items", [5], "title_valid_text", ("control character(s) U+0007, U+001B",)),
    ),
    "replacement_character_in_title": (
        latest(movies=lines(MOVIES_HEADER, *GOOD_MOVIES, "5,Caf\ufffd (2000),Drama")),
        Quarantine("items", [5], "title_valid_text", ("replacement character", "U+FFFD")),
    ),
    "mixed_formats": (
        {**latest(), "u.item": b"1|Alpha (1990)|||x|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"},
        Raise("", None, "known_layout", ("more than one layout", "u.item", "ratings.csv", "u.data + u.item")),
    ),
    "ragged_csv": (
        latest(ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, f"1,2,4.0,{T0},extra,fields")),
        Raise("ratings.csv", None, "csv_structure", ("line 14",)),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input(name: str, tmp_path: Path) -> None:
    files, expected = CASES[name]
    for fname, data in files.items():
        (tmp_path / fname).write_bytes(data)

    if isinstance(expected, Raise):
        with pytest.raises(DataError) as exc:
            validate(load_raw(tmp_path, IngestConfig()), ValidationConfig(), now=NOW)
        err, msg = exc.value, str(exc.value)
        assert err.rule == expected.rule and f"rule {expected.rule!r}" in msg
        assert err.file == str(tmp_path / expected.file).rstrip("/") and err.file in msg
        assert err.column == expected.column
        if expected.column is not None:
            assert f"column {expected.column!r}" in msg
        for word in expected.words:
            assert word in msg
        return

    raw = load_raw(tmp_path, IngestConfig())
    result = validate(raw, ValidationConfig(), now=NOW)
    # No row is lost: every source row is either kept or quarantined, exactly once.
    for table in ("interactions", "items"):
        acc = result.accounting[table]
        assert acc["rows_in"] == acc["kept"] + acc["quarantined"]
        kept = getattr(result, table)["source_row"].tolist()
        quarantined = getattr(result, f"quarantined_{table}")["source_row"].astype(int).tolist()
        assert sorted(kept + quarantined) == list(range(1, acc["rows_in"] + 1))

    if expected is None:  # extra_column
        assert any("device" in w and "ratings.csv" in w for w in raw.warnings)
        assert result.success and result.accounting["interactions"]["kept"] == 12
        return

    q = getattr(result, f"quarantined_{expected.table}").set_index("source_row")
    assert sorted(q.index.astype(int)) == expected.rows, q[["rule", "reason"]].to_dict()
    for row in expected.rows:
        assert expected.rule in q.loc[row, "rule"].split("; ")
        for word in expected.words:
            assert word in q.loc[row, "reason"]
    assert result.rule_counts[expected.table][expected.rule] == len(expected.rows)
    # A quarantined item takes its interactions with it, saying why.
    if expected.table == "items":
        assert set(result.interactions["item_id"]) <= set(result.items["item_id"])


def test_long_title_quarantines_its_interactions_too(tmp_path: Path) -> None:
    files = latest(
        ratings=lines(RATINGS_HEADER, *GOOD_RATINGS, f"1,5,4.0,{T0 + 1}"),
        movies=lines(MOVIES_HEADER, *GOOD_MOVIES, "5," + "y" * 10_000 + ",Drama"),
    )
    for fname, data in files.items():
        (tmp_path / fname).write_bytes(data)
    result = validate(load_raw(tmp_path, IngestConfig()), ValidationConfig(), now=NOW)
    q = result.quarantined_interactions
    assert q["source_row"].tolist() == [13] and q["rule"].tolist() == ["item_not_quarantined"]
    assert "item '5' was quarantined from the catalog (title has 10000 characters" in q["reason"][0]
    assert result.accounting["interactions"] == {"rows_in": 13, "kept": 12, "quarantined": 1}
