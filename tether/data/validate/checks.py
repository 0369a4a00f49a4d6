"""The validation rules: each a GX expectation plus the wording of its per-row reason.

Row rules (``items`` and ``interactions`` suites) and relation rules (the
``interactions_relations`` suite, over columns computed in pandas) are :class:`_Check` lists;
:func:`_critical` holds the whole-table problems that raise instead of quarantining.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from tether.config import ValidationConfig
from tether.data.errors import DataError
from tether.data.loaders import INTERACTION_COLUMNS, ITEM_COLUMNS, RAW_RATING, RAW_TIMESTAMP, RawData
from tether.data.validate.gx import _expectations_module

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

# C0/C1 control characters except tab, newline and carriage return (whitespace that the
# cleaning stage normalises), and U+FFFD, the mark of an earlier decoding error.
CONTROL_CHARS_REGEX = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]"
# Chat-template control tokens (ChatML's <|im_start|> / <|im_end|>, Llama 3's <|eot_id|>, ...).
# A tokenizer reads them as special tokens even inside a message's text, so a title holding
# one could close the user turn and open a new system turn: quarantine, never feed it to a prompt.
CHAT_MARKUP_REGEX = r"<\|[^|<>\s]{1,64}\|>"
# Ids become file names and prompt keys; "." and ".." match most id patterns yet name the
# current and the parent directory, so they are refused whatever ``id_pattern`` says.
DOT_SEGMENT_REGEX = r"^\.{1,2}$"
_EXAMPLES = 5


@dataclass
class _Check:
    """One rule: the GX expectation that decides it and how to word the reason per row."""

    rule: str
    column: str
    expectation: Expectation
    reason: Callable[[pd.DataFrame], list[str]]



def _expectation(cls: Any, rule: str, desc: str, **kw: Any) -> Any:
    """An expectation of class ``cls`` tagged with its rule (the tag maps GX results back to rules)."""
    return cls(meta={"rule": rule}, description=f"`{rule}`: {desc}", **kw)


def _iso(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(float(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _fmt(values: pd.Series, render: Callable[[Any], str]) -> list[str]:
    return [render(v) for v in values.tolist()]


def _item_checks(cfg: ValidationConfig) -> list[_Check]:
    gxe = _expectations_module()
    pat, maxlen = cfg.id_pattern, cfg.max_title_length
    exp = _expectation
    return [
        _Check("item_id_not_null", "item_id",
               exp(gxe.ExpectColumnValuesToNotBeNull, "item_id_not_null", "every item has an id", column="item_id"),
               lambda d: ["item_id is missing"] * len(d)),
        _Check("item_id_pattern", "item_id",
               exp(gxe.ExpectColumnValuesToMatchRegex, "item_id_pattern",
                   "ids become file names and prompt keys: no path separators or spaces", column="item_id", regex=pat),
               lambda d: _fmt(d["item_id"], lambda v: f"item_id {v!r} does not match id_pattern {pat!r}")),
        _Check("item_id_not_dot_segment", "item_id",
               exp(gxe.ExpectColumnValuesToNotMatchRegex, "item_id_not_dot_segment",
                   "ids become file names: '.' and '..' are refused", column="item_id", regex=DOT_SEGMENT_REGEX),
               lambda d: _fmt(d["item_id"], _dot_segment_reason("item_id"))),
        _Check("item_id_unique", "item_id",
               exp(gxe.ExpectColumnValuesToBeInSet, "item_id_unique",
                   "item ids are unique; the first occurrence is kept", column="_item_id_first", value_set=[True]),
               lambda d: [f"duplicate item_id {i!r}: first seen at row {int(r)}; the first is kept"
                          for i, r in zip(d["item_id"], d["_first_row"])]),
        _Check("title_not_null", "title",
               exp(gxe.ExpectColumnValuesToNotBeNull, "title_not_null", "every item has a title", column="title"),
               lambda d: ["title is missing or blank"] * len(d)),
        _Check("title_length", "title",
               exp(gxe.ExpectColumnValueLengthsToBeBetween, "title_length",
                   f"titles have at most {maxlen} characters", column="title", min_value=1, max_value=maxlen),
               lambda d: [f"title has {len(t)} characters, more than max_title_length {maxlen}" for t in d["title"]]),
        _Check("title_valid_text", "title",
               exp(gxe.ExpectColumnValuesToNotMatchRegex, "title_valid_text",
                   "titles hold no control characters and no U+FFFD", column="title", regex=CONTROL_CHARS_REGEX),
               lambda d: [_bad_text_reason(t) for t in d["title"]]),
        _Check("title_no_chat_markup", "title",
               exp(gxe.ExpectColumnValuesToNotMatchRegex, "title_no_chat_markup",
                   "titles hold no chat-template control tokens such as ChatML's im_end (they would rewrite prompts)",
                   column="title", regex=CHAT_MARKUP_REGEX),
               lambda d: [_chat_markup_reason(t) for t in d["title"]]),
    ]


def _bad_text_reason(text: str) -> str:
    found = sorted({f"U+{ord(c):04X}" for c in re.findall(CONTROL_CHARS_REGEX, text)})
    kinds = "replacement character (a decoding error)" if found == ["U+FFFD"] else "control character(s)"
    return f"title contains {kinds} {', '.join(found)}"


def _timestamp_reason(text: str) -> str:
    if text == "":
        return "timestamp is missing"
    reason = f"timestamp {text!r} is neither unix seconds nor ISO-8601"
    try:
        value = abs(float(text))
    except ValueError:
        return reason
    # 13-digit numbers are usually JavaScript / Java milliseconds since the epoch.
    if 1e12 <= value < 1e15:
        reason += " (it looks like milliseconds: divide by 1000)"
    return reason


def _dot_segment_reason(column: str) -> Callable[[Any], str]:
    return lambda v: f"{column} {v!r} is a relative path segment ('.' or '..'); ids become file names"


def _chat_markup_reason(text: str) -> str:
    found = sorted(set(re.findall(CHAT_MARKUP_REGEX, text)))
    return (f"title contains chat-template control token(s) {', '.join(found)}: a tokenizer would read them "
            "as special tokens and the title could rewrite the prompt's roles")


def _interaction_row_checks(cfg: ValidationConfig, now_s: int, min_s: int) -> list[_Check]:
    gxe = _expectations_module()
    pat = cfg.id_pattern
    latest = now_s + cfg.max_future_seconds
    exp = _expectation
    checks = []
    for col in ("user_id", "item_id"):
        checks.append(_Check(
            f"{col}_not_null", col,
            exp(gxe.ExpectColumnValuesToNotBeNull, f"{col}_not_null", f"every interaction has a {col}", column=col),
            lambda d, c=col: [f"{c} is missing"] * len(d)))
        checks.append(_Check(
            f"{col}_pattern", col,
            exp(gxe.ExpectColumnValuesToMatchRegex, f"{col}_pattern",
                "ids become file names and prompt keys: no path separators or spaces", column=col, regex=pat),
            lambda d, c=col: _fmt(d[c], lambda v: f"{c} {v!r} does not match id_pattern {pat!r}")))
        checks.append(_Check(
            f"{col}_not_dot_segment", col,
            exp(gxe.ExpectColumnValuesToNotMatchRegex, f"{col}_not_dot_segment",
                "ids become file names: '.' and '..' are refused", column=col, regex=DOT_SEGMENT_REGEX),
            lambda d, c=col: _fmt(d[c], _dot_segment_reason(c))))
    checks += [
        _Check("timestamp_parseable", "timestamp",
               exp(gxe.ExpectColumnValuesToBeNull, "timestamp_parseable",
                   "timestamps are unix seconds or ISO-8601 (the column holds the text that did not parse)",
                   column=RAW_TIMESTAMP),
               lambda d: [_timestamp_reason(v) for v in d[RAW_TIMESTAMP]]),
        _Check("timestamp_not_future", "timestamp",
               exp(gxe.ExpectColumnValuesToBeBetween, "timestamp_not_future",
                   f"timestamps are at most now + {cfg.max_future_seconds} s ({_iso(latest)})",
                   column="timestamp", max_value=latest),
               lambda d: [f"timestamp {int(v)} ({_iso(v)}) is in the future (after now + max_future_seconds = {_iso(latest)})"
                          for v in d["timestamp"]]),
        _Check("timestamp_not_before_min", "timestamp",
               exp(gxe.ExpectColumnValuesToBeBetween, "timestamp_not_before_min",
                   f"timestamps are not before min_timestamp {cfg.min_timestamp}", column="timestamp", min_value=min_s),
               lambda d: [f"timestamp {int(v)} ({_iso(v)}) is before min_timestamp {cfg.min_timestamp}"
                          for v in d["timestamp"]]),
        _Check("rating_is_number", "rating",
               exp(gxe.ExpectColumnValuesToBeNull, "rating_is_number",
                   "ratings are numbers (the column holds the text that did not parse)", column=RAW_RATING),
               lambda d: _fmt(d[RAW_RATING], lambda v: f"rating {v!r} is not a number")),
        _Check("rating_in_range", "rating",
               exp(gxe.ExpectColumnValuesToBeBetween, "rating_in_range",
                   f"ratings are within [{cfg.rating_min}, {cfg.rating_max}] when present",
                   column="rating", min_value=cfg.rating_min, max_value=cfg.rating_max),
               lambda d: _fmt(d["rating"], lambda v: f"rating {v} is outside [{cfg.rating_min}, {cfg.rating_max}]")),
    ]
    return checks


def _interaction_relation_checks(cfg: ValidationConfig, items_file: str) -> list[_Check]:
    gxe = _expectations_module()
    k = cfg.min_history_length

    def exp(rule: str, col: str, desc: str) -> Any:
        # Every relation rule checks a boolean column computed in pandas (module docstring).
        return _expectation(gxe.ExpectColumnValuesToBeInSet, rule, desc, column=col, value_set=[True])

    return [
        _Check("interaction_unique", "user_id+item_id+timestamp",
               exp("interaction_unique", "_first_occurrence",
                   "(user_id, item_id, timestamp) is unique; the first occurrence is kept"),
               lambda d: [f"duplicate of row {int(r)} (same user_id, item_id, timestamp); the first is kept"
                          for r in d["_first_row"]]),
        _Check("item_not_quarantined", "item_id",
               exp("item_not_quarantined", "_item_not_quarantined", "the item was not quarantined from the catalog"),
               lambda d: [f"item {i!r} was quarantined from the catalog ({why})"
                          for i, why in zip(d["item_id"], d["_item_reason"])]),
        _Check("item_in_catalog", "item_id",
               exp("item_in_catalog", "_item_in_catalog", f"every item_id is in the item catalog ({items_file})"),
               lambda d: _fmt(d["item_id"], lambda v: f"item {v!r} is not in the item catalog {items_file!r}")),
        _Check("user_min_history", "user_id",
               exp("user_min_history", "_user_history_ok", f"each user has >= {k} kept interactions"),
               lambda d: [f"user {u!r} has {n} valid interaction(s), fewer than min_history_length {k}"
                          for u, n in zip(d["user_id"], d["_history"])]),
    ]



def _examples(df: pd.DataFrame, mask: pd.Series, column: str) -> list[tuple[int, Any]]:
    sub = df.loc[mask, ["source_row", column]].head(_EXAMPLES)
    return [(int(r), v) for r, v in zip(sub["source_row"], sub[column])]


def _critical(raw: RawData) -> None:
    """Problems that make a table unusable as a whole: raise instead of quarantining every row."""
    for name, df, path, cols in (
        ("items", raw.items, raw.items_path, ITEM_COLUMNS),
        ("interactions", raw.interactions, raw.interactions_path, INTERACTION_COLUMNS + [RAW_TIMESTAMP, RAW_RATING]),
    ):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(path, "required_columns", f"the {name} table lacks canonical column(s) {missing}",
                            column=missing[0])
        if df.empty:
            raise DataError(path, "table_not_empty", f"the {name} table has no rows")
        id_cols = ["item_id"] if name == "items" else ["user_id", "item_id"]
        for col in id_cols:
            if df[col].isna().all():
                raise DataError(path, f"{col}_not_null", "the column is empty in every row: wrong column mapped?",
                                column=col, count=len(df))
    inter, path = raw.interactions, raw.interactions_path
    parsed = inter["timestamp"].notna()
    if not parsed.any():
        bad = inter[RAW_TIMESTAMP].notna() & (inter[RAW_TIMESTAMP] != "")
        if bad.any():
            raise DataError(path, "timestamp_parseable",
                            "no value is unix seconds or ISO-8601: wrong column mapped, or an unsupported format?",
                            column="timestamp", count=int(bad.sum()), rows=_examples(inter, bad, RAW_TIMESTAMP))
        raise DataError(path, "timestamp_not_null", "the column is empty in every row", column="timestamp",
                        count=len(inter))
    bad_rating = inter[RAW_RATING].notna()
    if bad_rating.any() and inter["rating"].isna().all():
        raise DataError(path, "rating_is_number", "no value in the column is a number: wrong column mapped?",
                        column="rating", count=int(bad_rating.sum()), rows=_examples(inter, bad_rating, RAW_RATING))

