"""Validation with the real Great Expectations engine: verdicts, quarantine, accounting, files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from tether.config import IngestConfig, ValidationConfig, load_config
from tether.data.errors import DataError, RowAccountingError
from tether.data.loaders import load_raw
from tether.data.validate import _check_accounting, run_validation, validate

pytestmark = pytest.mark.integration

NOW = datetime(2024, 1, 1, tzinfo=UTC)
T0 = 1_600_000_000  # 2020-09-13


def write_latest(raw_dir: Path, ratings: list[tuple], movies: list[tuple]) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    lines = ["userId,movieId,rating,timestamp"] + [",".join(str(v) for v in r) for r in ratings]
    (raw_dir / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    mlines = ["movieId,title,genres"] + [",".join(str(v) for v in m) for m in movies]
    (raw_dir / "movies.csv").write_text("\n".join(mlines) + "\n", encoding="utf-8")
    return raw_dir


MOVIES = [(1, "Alpha (1990)", "Drama"), (2, "Beta (1991)", "Comedy"), (3, "Gamma (1992)", "War"), (4, "Delta (1993)", "")]
RATINGS = [(u, i, 4.0, T0 + 60 * (10 * u + i)) for u in (1, 2, 3) for i in (1, 2, 3, 4)]


def check_accounting(result) -> None:
    for table, df_in in (("interactions", result.interactions), ("items", result.items)):
        acc = result.accounting[table]
        assert acc["rows_in"] == acc["kept"] + acc["quarantined"]
        assert acc["kept"] == len(df_in)
    rows = pd.concat([result.interactions["source_row"], result.quarantined_interactions["source_row"]])
    assert sorted(rows.astype(int)) == list(range(1, result.accounting["interactions"]["rows_in"] + 1))


def test_clean_data_is_all_kept_in_canonical_schema(tmp_path: Path) -> None:
    raw = load_raw(write_latest(tmp_path, RATINGS, MOVIES), IngestConfig())
    result = validate(raw, ValidationConfig(), now=NOW)
    assert result.success
    assert result.accounting == {"items": {"rows_in": 4, "kept": 4, "quarantined": 0},
                                 "interactions": {"rows_in": 12, "kept": 12, "quarantined": 0}}
    assert list(result.interactions.columns) == ["user_id", "item_id", "timestamp", "rating", "source_row"]
    assert result.interactions["timestamp"].dtype == "int64"
    assert list(result.items.columns) == ["item_id", "title", "genres", "description", "source_row"]
    assert set(result.gx_results) == {"items", "interactions", "interactions_relations"}
    assert all(r.success for r in result.gx_results.values())
    assert all(n == 0 for counts in result.rule_counts.values() for n in counts.values())
    assert len(result.quarantined_interactions) == 0 and list(result.quarantined_interactions.columns)[-3:] == ["rule", "column", "reason"]


def test_gx_reports_the_verdicts(tmp_path: Path) -> None:
    ratings = RATINGS + [(1, 2, 9.0, T0 + 5)]
    raw = load_raw(write_latest(tmp_path, ratings, MOVIES), IngestConfig())
    result = validate(raw, ValidationConfig(), now=NOW)
    gx = result.gx_results["interactions"]
    assert not gx.success
    failing = [r for r in gx.results if not r.success]
    assert [r.expectation_config.type for r in failing] == ["expect_column_values_to_be_between"]
    assert failing[0].expectation_config.meta["rule"] == "rating_in_range"
    assert failing[0].result["unexpected_list"] == [9.0]
    row = [e for e in result.expectations if e["rule"] == "rating_in_range"][0]
    assert row == {"suite": "interactions", "rule": "rating_in_range", "expectation": "expect_column_values_to_be_between",
                   "column": "rating", "success": False, "unexpected_count": 1}


def test_several_failures_one_quarantine_row_with_all_reasons(tmp_path: Path) -> None:
    ratings = RATINGS + [(1, 2, 9.0, 0)]
    raw = load_raw(write_latest(tmp_path, ratings, MOVIES), IngestConfig())
    result = validate(raw, ValidationConfig(), now=NOW)
    q = result.quarantined_interactions
    assert len(q) == 1
    assert q["rule"][0] == "timestamp_not_before_min; rating_in_range"
    assert q["column"][0] == "timestamp; rating"
    assert "before min_timestamp 1990-01-01" in q["reason"][0] and "rating 9.0 is outside [0.5, 5.0]" in q["reason"][0]
    assert result.rule_counts["interactions"]["rating_in_range"] == 1
    check_accounting(result)


def test_duplicates_keep_the_first_valid_occurrence(tmp_path: Path) -> None:
    # Row 13 repeats row 1 with a bad rating; row 14 repeats row 1 exactly: only row 1 is kept.
    ratings = RATINGS + [(1, 1, 99, RATINGS[0][3]), (1, 1, 4.0, RATINGS[0][3])]
    raw = load_raw(write_latest(tmp_path, ratings, MOVIES), IngestConfig())
    result = validate(raw, ValidationConfig(), now=NOW)
    q = result.quarantined_interactions.set_index("source_row")
    assert q.loc[13, "rule"] == "rating_in_range"
    assert q.loc[14, "rule"] == "interaction_unique" and "duplicate of row 1" in q.loc[14, "reason"]
    assert 1 in result.interactions["source_row"].tolist()
    check_accounting(result)


def test_items_first_then_interactions_on_quarantined_or_unknown_items(tmp_path: Path) -> None:
    movies = MOVIES + [(5, "Bad\x07Title", "Drama")]
    ratings = RATINGS + [(1, 5, 3.0, T0 + 1), (2, 77, 3.0, T0 + 2)]
    raw = load_raw(write_latest(tmp_path, ratings, movies), IngestConfig())
    result = validate(raw, ValidationConfig(), now=NOW)
    assert result.quarantined_items["rule"].tolist() == ["title_valid_text"]
    assert "U+0007" in result.quarantined_items["reason"][0]
    q = result.quarantined_interactions.set_index("source_row")
    assert q.loc[13, "rule"] == "item_not_quarantined"
    assert "item '5' was quarantined from the catalog (title contains control character(s) U+0007)" in q.loc[13, "reason"]
    assert q.loc[14, "rule"] == "item_in_catalog" and "not in the item catalog 'movies.csv'" in q.loc[14, "reason"]
    assert set(result.interactions["item_id"]) <= set(result.items["item_id"])
    check_accounting(result)


def test_min_history_counts_only_surviving_interactions(tmp_path: Path) -> None:
    # User 4 has 3 rows, one with a future timestamp: 2 survive, fewer than 3 -> all quarantined.
    ratings = RATINGS + [(4, 1, 3.0, T0), (4, 2, 3.0, T0 + 1), (4, 3, 3.0, int(NOW.timestamp()) + 2 * 86_400)]
    raw = load_raw(write_latest(tmp_path, ratings, MOVIES), IngestConfig())
    result = validate(raw, ValidationConfig(), now=NOW)
    q = result.quarantined_interactions.set_index("source_row")
    assert q.loc[15, "rule"] == "timestamp_not_future"
    assert q.loc[13, "rule"] == q.loc[14, "rule"] == "user_min_history"
    assert "user '4' has 2 valid interaction(s), fewer than min_history_length 3" in q.loc[13, "reason"]
    assert "4" not in set(result.interactions["user_id"])
    # A lower bar keeps them.
    relaxed = validate(raw, ValidationConfig(min_history_length=2), now=NOW)
    assert relaxed.accounting["interactions"]["quarantined"] == 1
    check_accounting(result)


def test_future_is_relative_to_now_and_skew(tmp_path: Path) -> None:
    ts = int(NOW.timestamp())
    ratings = RATINGS + [(1, 2, 3.0, ts + 3600), (1, 3, 3.0, ts + 90_000)]
    raw = load_raw(write_latest(tmp_path, ratings, MOVIES), IngestConfig())
    result = validate(raw, ValidationConfig(max_future_seconds=86_400), now=NOW)
    assert result.quarantined_interactions["source_row"].tolist() == [14]
    strict = validate(raw, ValidationConfig(max_future_seconds=0), now=NOW.replace(tzinfo=None))
    assert strict.quarantined_interactions["source_row"].tolist() == [13, 14]


def test_all_timestamps_unparseable_is_critical(tmp_path: Path) -> None:
    ratings = [(1, 1, 4.0, "soon"), (1, 2, 4.0, "later"), (1, 3, 4.0, "")]
    raw = load_raw(write_latest(tmp_path, ratings, MOVIES), IngestConfig())
    with pytest.raises(DataError) as exc:
        validate(raw, ValidationConfig(), now=NOW)
    err = exc.value
    assert err.rule == "timestamp_parseable" and err.column == "timestamp" and err.file.endswith("ratings.csv")
    assert err.rows == [(1, "soon"), (2, "later")]
    assert "row 1 ('soon')" in str(err)


def test_row_accounting_is_asserted() -> None:
    assert _check_accounting("t", 3, 2, 1) == {"rows_in": 3, "kept": 2, "quarantined": 1}
    with pytest.raises(RowAccountingError):
        _check_accounting("t", 3, 2, 0)


def test_run_validation_writes_files_report_and_data_docs(tmp_path: Path) -> None:
    ratings = RATINGS + [(1, 2, "abc", T0 + 7)]
    write_latest(tmp_path / "data" / "raw", ratings, MOVIES)
    cfg = load_config(profile="test")
    summary = run_validation(cfg, tmp_path, now=NOW)
    assert summary.accounting["interactions"] == {"rows_in": 13, "kept": 12, "quarantined": 1}
    inter = pd.read_parquet(tmp_path / "data" / "validated" / "interactions.parquet")
    assert len(inter) == 12 and inter["timestamp"].dtype == "int64"
    assert len(pd.read_parquet(tmp_path / "data" / "validated" / "items.parquet")) == 4
    q = pd.read_csv(tmp_path / "data" / "quarantine" / "interactions.csv", dtype=str)
    assert q.columns.tolist() == ["user_id", "item_id", "timestamp", "rating", "source_row", "rule", "column", "reason"]
    assert q.iloc[0].to_dict() == {"user_id": "1", "item_id": "2", "timestamp": str(T0 + 7), "rating": "abc", "source_row": "13",
                                   "rule": "rating_is_number", "column": "rating", "reason": "rating 'abc' is not a number"}
    assert len(pd.read_csv(tmp_path / "data" / "quarantine" / "items.csv")) == 0
    report = json.loads((tmp_path / "data" / "reports" / "validation.json").read_text())
    assert report["format"] == "movielens-latest"
    assert report["accounting"] == summary.accounting
    assert report["rule_counts"]["interactions"]["rating_is_number"] == 1
    assert report["warnings"] == []
    docs = tmp_path / "data" / "reports" / "data_docs"
    assert summary.data_docs_index == docs / "index.html" and summary.data_docs_index.exists()
    pages = {p.parent.parent.parent.name for p in (docs / "validations").rglob("*.html")}
    assert pages == {"items", "interactions", "interactions_relations"}
    assert "rating_is_number" in (docs / "expectations" / "interactions.html").read_text()


def test_run_validation_raises_when_nothing_survives(tmp_path: Path) -> None:
    ratings = [(u, i, 4.0, T0 + i) for u in (1, 2) for i in (1, 2)]  # 2 each < min_history_length 3
    write_latest(tmp_path / "data" / "raw", ratings, MOVIES)
    cfg = load_config(profile="test", overrides={"validation": {"build_data_docs": False}})
    with pytest.raises(DataError) as exc:
        run_validation(cfg, tmp_path, now=NOW)
    assert exc.value.rule == "rows_kept" and "user_min_history" in str(exc.value)
    assert (tmp_path / "data" / "reports" / "validation.json").exists()
    assert not (tmp_path / "data" / "reports" / "data_docs").exists()
