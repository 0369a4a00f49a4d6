"""Leave-last-out split per user, and a check that nothing from the future leaks into training.

Each user's interactions in chronological order (timestamp, then source row for ties):
the last one is ``test``, the second to last ``validation``, the rest ``train``. Every
user appears in all three splits, so a user needs at least 3 interactions (the validator
and the k-core filter guarantee it; :func:`leave_last_out` raises if not).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tether.data.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
MIN_INTERACTIONS = 3


class LeakageError(DataError):
    """A split in which validation or test information precedes or overlaps training."""


def _user_blocks(codes_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offset and size of each user's block in user-sorted codes."""
    n = len(codes_sorted)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(codes_sorted[1:] != codes_sorted[:-1]) + 1]
    sizes = np.diff(np.r_[starts, n])
    return starts, sizes


def leave_last_out(interactions: pd.DataFrame) -> pd.DataFrame:
    """Add a ``split`` column: last item per user = test, second to last = validation, rest = train.

    Args:
        interactions: canonical interactions (``user_id``, ``timestamp``, ``source_row``, ...).

    Returns:
        A copy ordered by user, timestamp, source row, with ``split`` in
        ``train`` | ``validation`` | ``test``.

    Raises:
        DataError: some user has fewer than 3 interactions (names them).
    """
    codes, _ = pd.factorize(interactions["user_id"], sort=True)
    ts = interactions["timestamp"].to_numpy(dtype=np.int64)
    src = (
        interactions["source_row"].to_numpy(dtype=np.int64)
        if "source_row" in interactions
        else np.arange(len(interactions), dtype=np.int64)
    )
    order = np.lexsort((src, ts, codes))
    out = interactions.iloc[order].reset_index(drop=True)
    starts, sizes = _user_blocks(codes[order])

    short = sizes < MIN_INTERACTIONS
    if short.any():
        users = out["user_id"].to_numpy()[starts[short]]
        raise DataError(
            "interactions",
            "min_history_for_split",
            f"leave-last-out needs >= {MIN_INTERACTIONS} interactions per user (train, validation, test); "
            "raise clean.k_core_users or validation.min_history_length to 3",
            column="user_id",
            rows=[(None, f"user {u}: {int(n)}") for u, n in zip(users, sizes[short])],
            count=int(short.sum()),
        )
    from_end = np.repeat(starts + sizes, sizes) - np.arange(len(out)) - 1
    split = np.where(from_end == 0, "test", np.where(from_end == 1, "validation", "train"))
    out["split"] = split
    n_users = len(sizes)
    logger.info("split %d users: %d train rows, %d validation, %d test", n_users, int((from_end >= 2).sum()), n_users, n_users)
    return out


def assert_no_leakage(df: pd.DataFrame) -> None:
    """Raise if a split could leak the future into training.

    Checks, per user: exactly one validation and one test row and at least one train row;
    no train timestamp after the validation or test timestamp, validation not after test
    (so the test item is the user's last); the validation and test items are not in the
    user's train rows; only known split names.

    Args:
        df: interactions with a ``split`` column.

    Raises:
        LeakageError: naming the rule and example users.
    """
    if "split" not in df:
        raise LeakageError("interactions", "split_column_present", "no 'split' column", column="split")
    bad_names = ~df["split"].isin(SPLITS)
    if bad_names.any():
        raise LeakageError(
            "interactions", "split_names", f"split must be one of {SPLITS}", column="split",
            rows=[(None, v) for v in df.loc[bad_names, "split"].unique()[:5]], count=int(bad_names.sum()),
        )
    codes, users = pd.factorize(df["user_id"])
    nu = len(users)
    split = df["split"].to_numpy()
    ts = df["timestamp"].to_numpy(dtype=np.int64)
    is_tr, is_va, is_te = (split == "train"), (split == "validation"), (split == "test")

    def fail(rule: str, detail: str, mask_users: np.ndarray) -> None:
        raise LeakageError(
            "interactions", rule, detail, column="split",
            rows=[(None, f"user {u}") for u in users[np.flatnonzero(mask_users)][:5]],
            count=int(mask_users.sum()),
        )

    n_tr = np.bincount(codes[is_tr], minlength=nu)
    n_va = np.bincount(codes[is_va], minlength=nu)
    n_te = np.bincount(codes[is_te], minlength=nu)
    for rule, mask, what in (
        ("one_test_row_per_user", n_te != 1, "each user needs exactly one test row"),
        ("one_validation_row_per_user", n_va != 1, "each user needs exactly one validation row"),
        ("train_rows_per_user", n_tr < 1, "each user needs at least one train row"),
    ):
        if mask.any():
            fail(rule, what, mask)

    lo = np.iinfo(np.int64).min
    train_max = np.full(nu, lo, dtype=np.int64)
    np.maximum.at(train_max, codes[is_tr], ts[is_tr])
    val_ts = np.empty(nu, dtype=np.int64)
    val_ts[codes[is_va]] = ts[is_va]
    test_ts = np.empty(nu, dtype=np.int64)
    test_ts[codes[is_te]] = ts[is_te]
    if (m := val_ts < train_max).any():
        fail("validation_after_train", "a validation timestamp precedes a train timestamp of the same user", m)
    if (m := test_ts < train_max).any():
        fail("test_after_train", "a test timestamp precedes a train timestamp of the same user", m)
    if (m := test_ts < val_ts).any():
        fail("test_is_last", "the test item is not the user's last interaction (validation comes after it)", m)

    # The held-out answer must not sit in the training history of the same user.
    item_codes, _ = pd.factorize(df["item_id"])
    pair = codes.astype(np.int64) * (int(item_codes.max(initial=0)) + 1) + item_codes
    held_pairs = pair[is_va | is_te]
    m_pairs = np.isin(pair[is_tr], held_pairs)
    if m_pairs.any():
        m = np.zeros(nu, dtype=bool)
        m[codes[is_tr][m_pairs]] = True
        fail("held_out_item_not_in_train", "a validation/test item also appears in the user's train rows", m)
    if (m := (pair[is_va][np.argsort(codes[is_va])] == pair[is_te][np.argsort(codes[is_te])])).any():
        mu = np.zeros(nu, dtype=bool)
        mu[np.sort(codes[is_va])[m]] = True
        fail("validation_differs_from_test", "the validation and test items of a user are the same item", mu)
