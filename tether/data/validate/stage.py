"""The validate stage: run the three suites in order and write the stage's files.

:func:`validate` splits raw tables into kept and quarantined rows (items first, because
interactions are checked against the kept catalog); :func:`run_validation` loads
``paths.raw_dir``, validates it and writes the parquet, quarantine CSVs, report and Data Docs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tether.config import TetherConfig, ValidationConfig
from tether.data.errors import DataError
from tether.data.loaders import INTERACTION_COLUMNS, ITEM_COLUMNS, RAW_RATING, RAW_TIMESTAMP, RawData, load_raw
from tether.data.validate.checks import _critical, _interaction_relation_checks, _interaction_row_checks, _item_checks
from tether.data.validate.gx import _GX, _failures, _summaries
from tether.data.validate.tables import _check_accounting, _empty_quarantine, _quarantine_frame, _reasons

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult

logger = logging.getLogger(__name__)


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
