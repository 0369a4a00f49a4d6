"""Cleaning rules, each on a hand-made frame, plus row accounting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tether.config import CleanConfig
from tether.data.clean import clean, normalize_text, normalize_titles, redact_pii
from tether.data.generate import make_large_log


def _items(titles: list[str], descriptions: list[str] | None = None, genres: list[str] | None = None) -> pd.DataFrame:
    n = len(titles)
    return pd.DataFrame({
        "item_id": [f"i{k}" for k in range(n)],
        "title": titles,
        "genres": genres or ["Drama"] * n,
        "description": descriptions or [""] * n,
        "source_row": np.arange(1, n + 1, dtype=np.int64),
    })


def _interactions(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows],
        "timestamp": np.array([r[2] for r in rows], dtype=np.int64),
        "rating": np.full(len(rows), 4.0),
        "source_row": np.arange(1, len(rows) + 1, dtype=np.int64),
    })


NO_FILTER = CleanConfig(k_core_users=1, k_core_items=1, drop_unused_items=False)


# ---------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\uff2d\uff41\uff54\uff52\uff49\uff58 (1999)", "Matrix (1999)"),  # full-width letters
        ("\ufb01sh \u2460", "fish 1"),  # ligature, circled digit
        ("Toy\u00a0Story", "Toy Story"),  # no-break space
        ("Toy\x00 Sto\u200bry\ufeff", "Toy Story"),  # NUL, zero-width space, BOM
        ("  Toy\t\tStory \n (1995)\r\n", "Toy Story (1995)"),  # whitespace runs and edges
        ("Amélie (2001)", "Amélie (2001)"),  # composed accents survive
        ("Ame\u0301lie", "Amélie"),  # decomposed accents are composed
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(pd.Series([raw])).iloc[0] == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Matrix, The (1999)", "The Matrix (1999)"),
        ("Beautiful Mind, A (2001)", "A Beautiful Mind (2001)"),
        ("American Werewolf in London, An (1981)", "An American Werewolf in London (1981)"),
        ("Good, the Bad and the Ugly, The (1966)", "The Good, the Bad and the Ugly (1966)"),
        (
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
            "The City of Lost Children (Cité des enfants perdus, La) (1995)",
        ),
        ("Matrix, The", "The Matrix"),
        ("Harbor Lights, Part 2 (2011)", "Harbor Lights, Part 2 (2011)"),
        ("Toy Story (1995)", "Toy Story (1995)"),
        ("Them, Theodore (1990)", "Them, Theodore (1990)"),
    ],
)
def test_normalize_titles_moves_articles(raw: str, expected: str) -> None:
    assert normalize_titles(pd.Series([raw])).iloc[0] == expected


def test_title_articles_are_configurable() -> None:
    s = pd.Series(["Haine, La (1995)"])
    assert normalize_titles(s).iloc[0] == "Haine, La (1995)"
    assert normalize_titles(s, ("The", "La")).iloc[0] == "La Haine (1995)"


@pytest.mark.parametrize(
    ("raw", "expected", "kind"),
    [
        ("Write to jane.doe+films@mail.example.co.uk today", "Write to [email] today", "email"),
        ("Call 555-123-4567.", "Call [phone].", "phone"),
        ("Call (555) 123-4567 now", "Call [phone] now", "phone"),
        ("Call +1 555 123 4567", "Call [phone]", "phone"),
        ("Call +44 20 7946 0958", "Call [phone]", "phone"),
        ("Call 555.123.4567", "Call [phone]", "phone"),
        ("See https://example.com/a?b=1&c=2.", "See [url].", "url"),
        ("See www.example.org/films, then", "See [url], then", "url"),
        ("(http://x.io/user@host)", "([url])", "url"),
    ],
)
def test_redact_pii_each_kind(raw: str, expected: str, kind: str) -> None:
    out, counts = redact_pii(pd.Series([raw]))
    assert out.iloc[0] == expected
    assert counts[kind] == 1 and sum(counts.values()) == 1


@pytest.mark.parametrize(
    "text",
    ["Ocean's 11 (2001)", "Harbor Lights, Part 2 (2011)", "Set in 1941-1945.", "2001: A Space Odyssey (1968)", "Room 101, Floor 3"],
)
def test_redact_pii_leaves_ordinary_numbers(text: str) -> None:
    out, counts = redact_pii(pd.Series([text]))
    assert out.iloc[0] == text and sum(counts.values()) == 0


def test_clean_applies_text_rules_to_items() -> None:
    items = _items(
        ["Ｍａｔｒｉｘ,  The (1999)", "Ring\x07, The (2002) contact me@x.com"],
        ["A film.\u200b Site: https://ring.example.com", "Call 555-123-4567"],
    )
    inter = _interactions([("u", "i0", 1), ("u", "i1", 2)])
    res = clean(inter, items, NO_FILTER)
    assert res.items["title"].tolist() == ["The Matrix (1999)", "Ring, The (2002) contact [email]"]
    assert res.items["description"].tolist() == ["A film. Site: [url]", "Call [phone]"]
    text = res.accounting["text"]
    assert text["titles_article_moved"] == 1
    assert text["pii_redacted"] == {"url": 1, "email": 1, "phone": 1}

    kept_raw = clean(inter, items, CleanConfig(k_core_users=1, k_core_items=1, redact_pii=False, normalize_titles=False))
    assert kept_raw.items["title"].tolist() == ["Matrix, The (1999)", "Ring, The (2002) contact me@x.com"]
    assert kept_raw.items["description"].iloc[1] == "Call 555-123-4567"


# ---------------------------------------------------------------- rows


def test_duplicates_keep_the_earliest() -> None:
    items = _items(["A (2000)", "B (2001)"])
    inter = _interactions([
        ("u", "i0", 300),  # row 1: a later repeat (removed)
        ("u", "i0", 100),  # row 2: the earliest (kept)
        ("u", "i1", 50),   # row 3: tie at 50 with row 4: the lower source row wins
        ("u", "i1", 50),   # row 4
        ("v", "i0", 100),  # another user: not a duplicate
    ])
    res = clean(inter, items, NO_FILTER)
    assert sorted(res.interactions["source_row"]) == [2, 3, 5]
    removed = res.removed[res.removed["table"] == "interactions"]
    assert sorted(removed["source_row"]) == [1, 4]
    assert set(removed["stage"]) == {"duplicate"}
    assert removed["reason"].str.contains("earliest kept").all()


def test_k_core_iterates_to_a_fixed_point() -> None:
    # k = 2 for users and items. Round 1: user d (1 interaction) and item i3, i4
    # (1 each) go. That leaves user c with one interaction: round 2 removes it.
    # Round 3 finds a, b with 2 items each, i1 and i2 with 2 users each: fixed point.
    items = _items(["One (2001)", "Two (2002)", "Three (2003)", "Four (2004)", "Unused (2005)"])
    items["item_id"] = ["i1", "i2", "i3", "i4", "i5"]
    inter = _interactions([
        ("a", "i1", 1), ("a", "i2", 2),
        ("b", "i1", 3), ("b", "i2", 4),
        ("c", "i2", 5), ("c", "i3", 6),
        ("d", "i4", 7),
    ])
    res = clean(inter, items, CleanConfig(k_core_users=2, k_core_items=2))
    assert list(zip(res.interactions["user_id"], res.interactions["item_id"])) == [
        ("a", "i1"), ("a", "i2"), ("b", "i1"), ("b", "i2"),
    ]
    assert res.accounting["k_core_rounds"] == 2
    removed = res.removed[res.removed["table"] == "interactions"].set_index("source_row")
    assert removed.loc[6, "reason"] == "item has fewer than 2 interactions (k-core round 1)"
    assert removed.loc[7, "reason"] == (
        "user has fewer than 2 interactions and item has fewer than 2 interactions (k-core round 1)"
    )
    assert removed.loc[5, "reason"] == "user has fewer than 2 interactions (k-core round 2)"
    # Items: i3 and i4 lost their interactions, i5 never had one.
    gone = res.removed[res.removed["table"] == "items"].set_index("item_id")["stage"].to_dict()
    assert gone == {"i3": "k_core", "i4": "k_core", "i5": "unused_item"}
    assert res.items["item_id"].tolist() == ["i1", "i2"]
    # A fixed point: cleaning the result again removes nothing.
    again = clean(res.interactions, res.items, CleanConfig(k_core_users=2, k_core_items=2))
    assert again.accounting["interactions_removed"] == 0 and again.accounting["items_removed"] == 0


def test_unknown_items_are_removed_with_a_reason() -> None:
    res = clean(_interactions([("u", "i0", 1), ("u", "nope", 2)]), _items(["A (2000)"]), NO_FILTER)
    row = res.removed.iloc[0]
    assert (row["item_id"], row["stage"]) == ("nope", "referential")


def test_output_is_chronological_per_user() -> None:
    items = _items([f"T{k} (2000)" for k in range(4)])
    inter = _interactions([
        ("b", "i0", 30), ("a", "i1", 20), ("b", "i1", 10), ("a", "i0", 20), ("a", "i2", 5), ("b", "i3", 30),
    ])
    res = clean(inter, items, NO_FILTER)
    got = list(zip(res.interactions["user_id"], res.interactions["timestamp"], res.interactions["source_row"]))
    # Ties at the same timestamp keep source order (rows 2 before 4, rows 1 before 6).
    assert got == [("a", 5, 5), ("a", 20, 2), ("a", 20, 4), ("b", 10, 3), ("b", 30, 1), ("b", 30, 6)]


def test_accounting_holds_on_a_dirty_log() -> None:
    inter, items = make_large_log(20_000, seed=3)
    res = clean(inter, items, CleanConfig())
    acc = res.accounting
    n_removed_int = int((res.removed["table"] == "interactions").sum())
    assert acc["interactions_in"] == len(inter) == len(res.interactions) + n_removed_int
    assert acc["items_in"] == len(items) == len(res.items) + int((res.removed["table"] == "items").sum())
    assert sum(acc["interactions_removed_by_stage"].values()) == acc["interactions_removed"] == n_removed_int
    assert acc["interactions_removed_by_stage"]["duplicate"] > 0 and acc["interactions_removed_by_stage"]["k_core"] > 0
    assert not res.interactions.duplicated(["user_id", "item_id"]).any()
    assert res.interactions.groupby("user_id").size().min() >= 3
    assert res.interactions.groupby("item_id").size().min() >= 2
    assert set(res.interactions["item_id"]) == set(res.items["item_id"])
    assert not res.removed["reason"].isna().any() and (res.removed["reason"] != "").all()
    # Kept rows are the input rows, untouched apart from order.
    merged = res.interactions.merge(inter, on="source_row", suffixes=("", "_in"))
    assert (merged["item_id"] == merged["item_id_in"]).all() and (merged["timestamp"] == merged["timestamp_in"]).all()
    assert res.interactions.dtypes.to_dict() == inter.dtypes.to_dict()


def test_duplicate_item_ids_are_refused_with_the_rows() -> None:
    from tether.data.errors import DataError

    items = _items(["A (2000)", "B (2001)"])
    items["item_id"] = ["same", "same"]
    with pytest.raises(DataError, match="item_id_unique") as info:
        clean(_interactions([("u", "same", 1)]), items, NO_FILTER)
    assert info.value.rows == [(1, "same"), (2, "same")]
