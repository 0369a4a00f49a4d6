"""Leave-last-out split and the leakage check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tether.config import load_config
from tether.data.clean import clean
from tether.data.errors import DataError
from tether.data.generate import generate_tables
from tether.data.split import LeakageError, assert_no_leakage, leave_last_out


def _frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows],
        "timestamp": np.array([r[2] for r in rows], dtype=np.int64),
        "rating": np.full(len(rows), 3.0),
        "source_row": np.arange(1, len(rows) + 1, dtype=np.int64),
    })


@pytest.fixture
def split_frame() -> pd.DataFrame:
    # Shuffled on purpose; "b" has a timestamp tie that source order breaks.
    df = _frame([
        ("a", "x3", 30), ("b", "y1", 5), ("a", "x1", 10), ("a", "x4", 40), ("b", "y3", 7),
        ("a", "x2", 20), ("b", "y2", 7),
    ])
    return leave_last_out(df)


def test_last_is_test_second_last_is_validation(split_frame: pd.DataFrame) -> None:
    got = {u: list(zip(g["item_id"], g["split"])) for u, g in split_frame.groupby("user_id")}
    assert got["a"] == [("x1", "train"), ("x2", "train"), ("x3", "validation"), ("x4", "test")]
    # y3 (row 5) and y2 (row 7) share timestamp 7: the later source row is the later event.
    assert got["b"] == [("y1", "train"), ("y3", "validation"), ("y2", "test")]
    assert len(split_frame) == 7 and split_frame["split"].isin(["train", "validation", "test"]).all()


def test_split_passes_the_leakage_check(split_frame: pd.DataFrame) -> None:
    assert_no_leakage(split_frame)


def test_users_with_fewer_than_three_interactions_are_refused() -> None:
    with pytest.raises(DataError, match="min_history_for_split") as info:
        leave_last_out(_frame([("a", "x1", 1), ("a", "x2", 2), ("a", "x3", 3), ("short", "x1", 1), ("short", "x2", 2)]))
    assert "user short: 2" in str(info.value) and info.value.count == 1


def _relabel(df: pd.DataFrame, item: str, split: str) -> pd.DataFrame:
    out = df.copy()
    out.loc[out["item_id"] == item, "split"] = split
    return out


def test_leakage_check_catches_a_future_train_row(split_frame: pd.DataFrame) -> None:
    leaked = split_frame.copy()
    leaked.loc[leaked["item_id"] == "x2", "timestamp"] = 50  # a train event after the test event
    with pytest.raises(LeakageError, match="precedes a train timestamp") as info:
        assert_no_leakage(leaked)
    assert "user a" in str(info.value)


def test_leakage_check_catches_test_not_last(split_frame: pd.DataFrame) -> None:
    swapped = _relabel(_relabel(split_frame, "x3", "test"), "x4", "validation")
    with pytest.raises(LeakageError, match="test_is_last"):
        assert_no_leakage(swapped)


def test_leakage_check_catches_wrong_counts(split_frame: pd.DataFrame) -> None:
    with pytest.raises(LeakageError, match="one_test_row_per_user"):
        assert_no_leakage(_relabel(split_frame, "x3", "test"))
    with pytest.raises(LeakageError, match="train_rows_per_user"):
        assert_no_leakage(split_frame[~((split_frame["user_id"] == "b") & (split_frame["split"] == "train"))])
    with pytest.raises(LeakageError, match="split_names"):
        assert_no_leakage(_relabel(split_frame, "x1", "holdout"))


def test_leakage_check_catches_held_out_item_in_train(split_frame: pd.DataFrame) -> None:
    leaked = split_frame.copy()
    leaked.loc[leaked["item_id"] == "x1", "item_id"] = "x4"  # the test answer sits in train
    with pytest.raises(LeakageError, match="held_out_item_not_in_train"):
        assert_no_leakage(leaked)


def test_generated_log_splits_cleanly() -> None:
    cfg = load_config(profile="test")
    data = generate_tables(cfg.generate, cfg.seed)
    res = clean(data.interactions, data.items, cfg.clean)
    df = leave_last_out(res.interactions)
    assert_no_leakage(df)
    per_user = df.groupby("user_id")["split"].value_counts().unstack(fill_value=0)
    assert (per_user["test"] == 1).all() and (per_user["validation"] == 1).all() and (per_user["train"] >= 1).all()
