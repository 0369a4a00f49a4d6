"""Validate the raw tables with Great Expectations: keep good rows, quarantine bad ones with reasons.

Order of work (items first, because interactions are checked against the kept catalog):

1. critical checks (empty table, missing column, a column with no parseable value) raise
   :class:`~tether.data.errors.DataError`;
2. the ``items`` suite: non-null unique id (the first occurrence is kept), id pattern, id not
   a relative path segment (``.`` / ``..``), title present, not too long, valid text (no
   control characters, no U+FFFD), no chat-template control markup (``<|im_end|>``);
3. the ``interactions`` suite (row rules): ids present, matching the id pattern and not a
   relative path segment, timestamp parseable, not in the future, not before
   ``min_timestamp``; rating a number in range;
4. the ``interactions_relations`` suite over the rows that passed step 3: unique
   (user_id, item_id, timestamp) with the first kept, item kept in the catalog (not
   quarantined, not unknown), user with at least ``min_history_length`` such interactions.

Where a check is cheaper in pandas (first occurrence, catalog membership, history length), a
boolean column is computed in pandas and GX validates that column, so GX still gives every
verdict. A row failing several rules is quarantined once with every reason, joined by ``"; "``.
Row accounting is asserted: rows in == kept + quarantined for each table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tether.config import TetherConfig, ValidationConfig
from tether.data.errors import DataError, RowAccountingError
from tether.data.loaders import INTERACTION_COLUMNS, ITEM_COLUMNS, RAW_RATING, RAW_TIMESTAMP, RawData, load_raw

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.expectations import Expectation

logger = logging.getLogger(__name__)

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
DATA_DOCS_SITE = "tether_data_docs"
QUARANTINE_COLUMNS = ["rule", "column", "reason"]
_EXAMPLES = 5


@dataclass
class ValidationResult:
    """What :func:`validate` decided.

    Attributes:
        interactions: kept interactions, canonical schema (``timestamp`` int64).
        items: kept items, canonical schema.
        quarantined_interactions: rejected interactions: canonical columns (the original text
            where a value did not parse) + ``rule``, ``column``, ``reason`` (``"; "``-joined).
        quarantined_items: rejected items, same shape.
        rule_counts: ``{table: {rule: rows failing it}}`` (a row can count under several rules).
        accounting: ``{table: {"rows_in", "kept", "quarantined"}}``.
        gx_results: the GX suite validation results by suite name.
        expectations: one summary record per expectation (suite, rule, column, type, success,
            unexpected_count).
        format: the raw layout.
        warnings: loader warnings.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    quarantined_interactions: pd.DataFrame
    quarantined_items: pd.DataFrame
    rule_counts: dict[str, dict[str, int]]
    accounting: dict[str, dict[str, int]]
    gx_results: dict[str, ExpectationSuiteValidationResult]
    expectations: list[dict[str, Any]]
    format: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """True when no row was quarantined."""
        return all(a["quarantined"] == 0 for a in self.accounting.values())


@dataclass(frozen=True)
class ValidationSummary:
    """The small value :func:`run_validation` returns (and a Prefect task can log)."""

    format: str
    accounting: dict[str, dict[str, int]]
    rule_counts: dict[str, dict[str, int]]
    warnings: list[str]
    validated: dict[str, Path]
    quarantine: dict[str, Path]
    report: Path
    data_docs_index: Path | None

    @property
    def quarantined(self) -> int:
        return sum(a["quarantined"] for a in self.accounting.values())


# --------------------------------------------------------------------------- checks


@dataclass
class _Check:
    """One rule: the GX expectation that decides it and how to word the reason per row."""

    rule: str
    column: str
    expectation: Expectation
    reason: Callable[[pd.DataFrame], list[str]]


def _gx_env() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _expectations_module() -> Any:
    _gx_env()
    import great_expectations.expectations as gxe

    return gxe


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

    def exp(cls: Any, rule: str, desc: str, **kw: Any) -> Any:
        return cls(meta={"rule": rule}, description=f"`{rule}`: {desc}", **kw)

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
    import re

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
    import re

    found = sorted(set(re.findall(CHAT_MARKUP_REGEX, text)))
    return (f"title contains chat-template control token(s) {', '.join(found)}: a tokenizer would read them "
            "as special tokens and the title could rewrite the prompt's roles")


def _interaction_row_checks(cfg: ValidationConfig, now_s: int, min_s: int) -> list[_Check]:
    gxe = _expectations_module()
    pat = cfg.id_pattern
    latest = now_s + cfg.max_future_seconds

    def exp(cls: Any, rule: str, desc: str, **kw: Any) -> Any:
        return cls(meta={"rule": rule}, description=f"`{rule}`: {desc}", **kw)

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
        return gxe.ExpectColumnValuesToBeInSet(column=col, value_set=[True], meta={"rule": rule},
                                               description=f"`{rule}`: {desc}")

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


# --------------------------------------------------------------------------- GX plumbing


class _GX:
    """One ephemeral GX context; with ``docs_dir`` every run also updates a Data Docs site."""

    def __init__(self, docs_dir: Path | None = None) -> None:
        _gx_env()
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.gx = gx
        sites = {}
        if docs_dir is not None:
            sites[DATA_DOCS_SITE] = {
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            }
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            progress_bars=ProgressBarsConfig(globally=False),
            data_docs_sites=sites,
            analytics_enabled=False,
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.docs = docs_dir is not None
        self.source = self.context.data_sources.add_pandas("tether")

    def run(self, name: str, df: pd.DataFrame, checks: list[_Check]) -> ExpectationSuiteValidationResult:
        gx = self.gx
        batch_def = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        # One store write for the whole suite (add_expectation persists on every call).
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=[c.expectation for c in checks]))
        vd = self.context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        if self.docs:
            cp = self.context.checkpoints.add(gx.Checkpoint(
                name=name, validation_definitions=[vd], result_format="COMPLETE", actions=[]))
            key, result = next(iter(cp.run(batch_parameters={"dataframe": df}).run_results.items()))
            self._update_docs(key, result)
            return result
        return vd.run(batch_parameters={"dataframe": df}, result_format="COMPLETE")

    def _update_docs(self, key: Any, result: ExpectationSuiteValidationResult) -> None:
        """Render Data Docs from an HTML-escaped copy of ``result``.

        GX writes unexpected values into the pages verbatim, so a title such as
        ``<script>...</script>`` would run in the browser of whoever opens the report. The
        verdicts come from the original result; only the stored copy the pages are built
        from is escaped.
        """
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        originals = [r.result for r in result.results]
        try:
            for r in result.results:
                r.result = _html_escaped(r.result)
            self.context.validation_results_store.set(key, result)
        finally:
            for r, original in zip(result.results, originals):
                r.result = original
        self.context.build_data_docs(
            site_names=[DATA_DOCS_SITE],
            resource_identifiers=[key, ExpectationSuiteIdentifier(name=key.expectation_suite_identifier.name)],
        )


def _html_escaped(value: Any) -> Any:
    """``value`` with every string HTML-escaped, recursively through dicts, lists and tuples."""
    import html

    if isinstance(value, str):
        return html.escape(value, quote=True)
    if isinstance(value, dict):
        return {k: _html_escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_html_escaped(v) for v in value)
    return value


def _failures(result: ExpectationSuiteValidationResult, checks: list[_Check]) -> dict[str, list[Any]]:
    """Rule -> unexpected index labels, read from the GX result (which decides every verdict)."""
    by_rule = {c.rule: c for c in checks}
    out: dict[str, list[Any]] = {}
    for r in result.results:
        rule = (r.expectation_config.meta or {}).get("rule")
        if r.exception_info and r.exception_info.get("raised_exception"):
            raise RuntimeError(f"Great Expectations failed to evaluate rule {rule!r}: "
                               f"{r.exception_info.get('exception_message')}")
        if rule not in by_rule:
            continue
        out[rule] = [] if r.success else list(r.result.get("unexpected_index_list") or [])
        if not r.success and len(out[rule]) != r.result.get("unexpected_count", len(out[rule])):
            raise RuntimeError(f"rule {rule!r}: GX reported {r.result.get('unexpected_count')} failures "
                               f"but {len(out[rule])} indices")
    missing = set(by_rule) - set(out)
    if missing:
        raise RuntimeError(f"no GX result for rule(s) {sorted(missing)}")
    return out


def _summaries(suite: str, result: ExpectationSuiteValidationResult) -> list[dict[str, Any]]:
    rows = []
    for r in result.results:
        cfg = r.expectation_config
        rows.append({
            "suite": suite,
            "rule": (cfg.meta or {}).get("rule"),
            "expectation": cfg.type,
            "column": cfg.kwargs.get("column"),
            "success": bool(r.success),
            "unexpected_count": int(r.result.get("unexpected_count") or 0),
        })
    return rows


# --------------------------------------------------------------------------- verdict -> tables


def _reasons(df: pd.DataFrame, checks: list[_Check], failures: dict[str, list[Any]]) -> pd.DataFrame:
    """One row per failing index: ``rule``, ``column``, ``reason``, each "; "-joined in check order."""
    parts = []
    for check in checks:
        idx = failures[check.rule]
        if idx:
            rows = df.loc[idx]
            parts.append((check, pd.Series(check.reason(rows), index=rows.index, dtype="str")))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="str") for c in QUARANTINE_COLUMNS})
    index = pd.Index(np.unique(np.concatenate([p.index.to_numpy() for _, p in parts])))
    out = {c: pd.Series("", index=index, dtype="str") for c in QUARANTINE_COLUMNS}
    # Vectorised joins: a per-row groupby-join is ~100x slower on a million failing rows.
    for check, reason in parts:
        hit = pd.Series(False, index=index)
        hit[reason.index] = True
        values = {"rule": check.rule, "column": check.column, "reason": reason.reindex(index)}
        for col, value in values.items():
            cur = out[col]
            joined = (cur + "; ").where(cur != "", "") + value
            out[col] = joined.where(hit, cur)
    return pd.DataFrame(out)


def _quarantine_frame(raw: pd.DataFrame, columns: list[str], reasons: pd.DataFrame) -> pd.DataFrame:
    q = raw.loc[reasons.index].copy()
    # Show what the source said, not the NaN it was coerced to.
    if RAW_TIMESTAMP in q.columns:
        ts = q["timestamp"].astype("object")
        bad = q[RAW_TIMESTAMP].notna()
        ts[bad] = q.loc[bad, RAW_TIMESTAMP]
        q["timestamp"] = ts
    if RAW_RATING in q.columns:
        rating = q["rating"].astype("object")
        bad = q[RAW_RATING].notna()
        rating[bad] = q.loc[bad, RAW_RATING]
        q["rating"] = rating
    q = q[columns].join(reasons[QUARANTINE_COLUMNS])
    return q.sort_values("source_row", kind="stable").reset_index(drop=True)


def _empty_quarantine(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns + QUARANTINE_COLUMNS})


def _check_accounting(table: str, rows_in: int, kept: int, quarantined: int) -> dict[str, int]:
    if rows_in != kept + quarantined:
        raise RowAccountingError(f"{table}: rows in {rows_in} != kept {kept} + quarantined {quarantined}")
    return {"rows_in": rows_in, "kept": kept, "quarantined": quarantined}


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


def _to_seconds(now: datetime | None) -> int:
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return int(now.timestamp())


def _validate(raw: RawData, cfg: ValidationConfig, now: datetime | None, gxr: _GX) -> ValidationResult:
    _critical(raw)
    now_s = _to_seconds(now)
    min_s = int(datetime.combine(cfg.min_timestamp, time(0), UTC).timestamp())
    gx_results: dict[str, Any] = {}
    expectations: list[dict[str, Any]] = []

    # 1. items
    items = raw.items.reset_index(drop=True)
    has_id = items["item_id"].notna()
    item_first = ~items["item_id"].duplicated(keep="first") | ~has_id
    first_row = items.loc[has_id].groupby("item_id", sort=False)["source_row"].transform("first")
    item_frame = items[["item_id", "title", "source_row"]].assign(
        _item_id_first=item_first, _first_row=first_row.reindex(items.index))
    checks = _item_checks(cfg)
    res = gxr.run("items", item_frame, checks)
    gx_results["items"], expectations = res, expectations + _summaries("items", res)
    item_fail = _failures(res, checks)
    item_reasons = _reasons(item_frame, checks, item_fail)
    items_counts = {c.rule: len(item_fail[c.rule]) for c in checks}
    kept_items = items.drop(index=item_reasons.index)
    q_items = _quarantine_frame(items, ITEM_COLUMNS, item_reasons) if len(item_reasons) else _empty_quarantine(ITEM_COLUMNS)

    # 2. interactions, row rules
    inter = raw.interactions.reset_index(drop=True)
    frame = pd.DataFrame({
        "user_id": inter["user_id"], "item_id": inter["item_id"],
        # float64 (NaN for NA): GX's range checks cannot compare pandas' nullable NA.
        "timestamp": inter["timestamp"].astype("float64"), "rating": inter["rating"].astype("float64"),
        RAW_TIMESTAMP: inter[RAW_TIMESTAMP], RAW_RATING: inter[RAW_RATING], "source_row": inter["source_row"],
    })
    row_checks = _interaction_row_checks(cfg, now_s, min_s)
    res = gxr.run("interactions", frame, row_checks)
    gx_results["interactions"], expectations = res, expectations + _summaries("interactions", res)
    row_fail = _failures(res, row_checks)
    row_reasons = _reasons(frame, row_checks, row_fail)

    # 3. interactions, relations among the rows that passed step 2
    sub = frame.drop(index=row_reasons.index)[["user_id", "item_id", "timestamp", "source_row"]]
    keys = ["user_id", "item_id", "timestamp"]
    dup = sub.duplicated(keys, keep="first")
    first_row = pd.Series(np.nan, index=sub.index)
    if dup.any():
        firsts = sub.loc[~dup].set_index(keys)["source_row"]
        first_row.loc[dup] = firsts.reindex(pd.MultiIndex.from_frame(sub.loc[dup, keys])).to_numpy()
    kept_ids = pd.Index(kept_items["item_id"].unique())
    all_ids = pd.Index(items["item_id"].dropna().unique())
    in_kept = sub["item_id"].isin(kept_ids)
    known = sub["item_id"].isin(all_ids)
    item_reason_by_id = (q_items.dropna(subset=["item_id"]).drop_duplicates("item_id").set_index("item_id")["reason"]
                         if len(q_items) else pd.Series(dtype="str"))
    counted = ~dup & in_kept
    history = sub.loc[counted].groupby("user_id", sort=False).size()
    user_hist = sub["user_id"].map(history).fillna(0).astype("int64")
    rel = sub.assign(
        _first_occurrence=~dup, _first_row=first_row,
        _item_in_catalog=known,
        _item_not_quarantined=in_kept | ~known,
        _item_reason=sub["item_id"].map(item_reason_by_id),
        _history=user_hist, _user_history_ok=user_hist >= cfg.min_history_length,
    )
    rel_checks = _interaction_relation_checks(cfg, raw.items_path.name)
    res = gxr.run("interactions_relations", rel, rel_checks)
    gx_results["interactions_relations"], expectations = res, expectations + _summaries("interactions_relations", res)
    rel_fail = _failures(res, rel_checks)
    rel_reasons = _reasons(rel, rel_checks, rel_fail)

    inter_reasons = pd.concat([row_reasons, rel_reasons]).sort_index()
    inter_counts = {c.rule: len(row_fail[c.rule]) for c in row_checks}
    inter_counts.update({c.rule: len(rel_fail[c.rule]) for c in rel_checks})
    kept_inter = inter.drop(index=inter_reasons.index)[INTERACTION_COLUMNS].astype({"timestamp": "int64"})
    q_inter = (_quarantine_frame(inter, INTERACTION_COLUMNS + [RAW_TIMESTAMP, RAW_RATING], inter_reasons)
               .drop(columns=[RAW_TIMESTAMP, RAW_RATING]) if len(inter_reasons) else _empty_quarantine(INTERACTION_COLUMNS))

    accounting = {
        "items": _check_accounting("items", len(items), len(kept_items), len(q_items)),
        "interactions": _check_accounting("interactions", len(inter), len(kept_inter), len(q_inter)),
    }
    for table, acc in accounting.items():
        logger.info("%s: %d rows in, %d kept, %d quarantined", table, acc["rows_in"], acc["kept"], acc["quarantined"])
    return ValidationResult(
        interactions=kept_inter.reset_index(drop=True),
        items=kept_items[ITEM_COLUMNS].reset_index(drop=True),
        quarantined_interactions=q_inter,
        quarantined_items=q_items,
        rule_counts={"items": items_counts, "interactions": inter_counts},
        accounting=accounting,
        gx_results=gx_results,
        expectations=expectations,
        format=raw.format,
        warnings=list(raw.warnings),
    )


def validate(raw: RawData, cfg: ValidationConfig, now: datetime | None = None) -> ValidationResult:
    """Validate raw tables with Great Expectations; split rows into kept and quarantined.

    Args:
        raw: the loaded raw tables (:func:`tether.data.loaders.load_raw`).
        cfg: the validation settings.
        now: the reference time for "in the future" (default: the current UTC time; a naive
            datetime is read as UTC).

    Returns:
        Kept and quarantined rows, per-rule counts, row accounting and the GX results.

    Raises:
        DataError: a critical failure (empty table, missing column, a column without a single
            parseable value).
        RowAccountingError: rows in != kept + quarantined (a bug, never a data problem).
    """
    return _validate(raw, cfg, now, _GX())


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, encoding="utf-8")


def run_validation(cfg: TetherConfig, root: Path, now: datetime | None = None) -> ValidationSummary:
    """Load ``paths.raw_dir``, validate it and write the validate stage's files.

    Writes ``validated/{interactions,items}.parquet``, ``quarantine/{interactions,items}.csv``,
    ``reports/validation.json`` and, when ``validation.build_data_docs``, Data Docs HTML under
    ``reports/data_docs/``.

    Args:
        cfg: the full config.
        root: the project root that relative paths resolve against.
        now: the reference time for "in the future" (default: now, UTC).

    Returns:
        A summary with the accounting, per-rule counts and the paths written.

    Raises:
        DataError: the input cannot be used, or no row of a table survived validation (the
            report is written first so the reasons can be read).
    """
    paths = cfg.paths.resolved(Path(root))
    raw = load_raw(paths.raw_dir, cfg.ingest)
    docs_dir = paths.reports_dir / "data_docs" if cfg.validation.build_data_docs else None
    if docs_dir is not None and docs_dir.exists():
        shutil.rmtree(docs_dir)  # no stale pages from earlier runs
    result = _validate(raw, cfg.validation, now, _GX(docs_dir))

    validated = {"interactions": paths.validated_dir / "interactions.parquet",
                 "items": paths.validated_dir / "items.parquet"}
    quarantine = {"interactions": paths.quarantine_dir / "interactions.csv",
                  "items": paths.quarantine_dir / "items.csv"}
    paths.validated_dir.mkdir(parents=True, exist_ok=True)
    result.interactions.to_parquet(validated["interactions"], index=False)
    result.items.to_parquet(validated["items"], index=False)
    _write_csv(result.quarantined_interactions, quarantine["interactions"])
    _write_csv(result.quarantined_items, quarantine["items"])

    docs_index = docs_dir / "index.html" if docs_dir is not None else None
    report = paths.reports_dir / "validation.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    # validation.json is a DVC metric committed to git: no absolute paths or wall-clock
    # times in it, so it changes only when the data or the verdicts change.
    def rel(p: Path) -> str:
        return os.path.relpath(p, root)

    logger.info("validated at %s (future-timestamp cutoff relative to this time)",
                datetime.fromtimestamp(_to_seconds(now), UTC).isoformat())
    report.write_text(json.dumps({
        "format": result.format,
        "source": {"interactions": rel(raw.interactions_path), "items": rel(raw.items_path)},
        "accounting": result.accounting,
        "rule_counts": result.rule_counts,
        "warnings": result.warnings,
        "expectations": result.expectations,
        "settings": cfg.validation.model_dump(mode="json"),
        "data_docs": rel(docs_index) if docs_index else None,
    }, indent=2) + "\n", encoding="utf-8")
    logger.info("validation report: %s", report)

    for table, path in (("interactions", raw.interactions_path), ("items", raw.items_path)):
        if result.accounting[table]["kept"] == 0:
            top = max(result.rule_counts[table].items(), key=lambda kv: kv[1])
            raise DataError(path, "rows_kept", f"every row of {table} was quarantined (most often by rule {top[0]!r}, "
                            f"{top[1]} rows); see {quarantine[table]} and {report}", column=None,
                            count=result.accounting[table]["rows_in"])
    return ValidationSummary(
        format=result.format, accounting=result.accounting, rule_counts=result.rule_counts,
        warnings=result.warnings, validated=validated, quarantine=quarantine, report=report,
        data_docs_index=docs_index if docs_index and docs_index.exists() else None,
    )
