"""The ``prepare`` stage: validated tables -> clean -> leave-last-out split -> chat examples.

Reads ``data/validated/{interactions,items}.parquet`` and writes (paths from ``cfg.paths``):

* ``data/processed/interactions.parquet`` (cleaned, chronological, with ``split``)
* ``data/processed/items.parquet`` (cleaned catalog)
* ``data/processed/{train,validation,test}.jsonl`` (one example per line)
* ``data/processed/stats.json`` (cleaning accounting, split sizes, example stats)
* ``data/quarantine/cleaning.csv`` (every removed row, with ``table``, ``stage``, ``reason``)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tether.config import TetherConfig
from tether.data.clean import clean
from tether.data.errors import DataError, RowAccountingError
from tether.data.examples import build_examples, example_stats
from tether.data.split import SPLITS, assert_no_leakage, leave_last_out
from tether.io import atomic_write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareSummary:
    """Row accounting and output locations of one ``prepare`` run (small; safe to print or log).

    Attributes:
        accounting: ``{"interactions"|"items": {"rows_in", "kept", "quarantined"}}``, the
            same shape as the validation summary's (quarantined = removed by cleaning).
        removed_by_stage: removed interactions per cleaning stage (duplicate, k_core, ...).
        users: users in the split (each has one validation and one test example).
        split_rows: interactions per split.
        examples: examples per split.
        length_unit: ``tokens`` or ``whitespace_words`` (the unit of stats.json lengths).
    """

    accounting: dict[str, dict[str, int]]
    removed_by_stage: dict[str, int]
    users: int
    split_rows: dict[str, int]
    examples: dict[str, int]
    length_unit: str
    processed_dir: Path
    quarantine_file: Path
    stats_file: Path

    @property
    def interactions_kept(self) -> int:
        return self.accounting["interactions"]["kept"]

    @property
    def interactions_removed(self) -> int:
        return self.accounting["interactions"]["quarantined"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("processed_dir", "quarantine_file", "stats_file"):
            d[k] = str(d[k])
        return d

    def lines(self) -> list[str]:
        """A few human-readable lines for a CLI or a Prefect log."""
        acc_i, acc_t = self.accounting["interactions"], self.accounting["items"]
        return [
            f"interactions: {acc_i['rows_in']} in, {acc_i['kept']} kept, {acc_i['quarantined']} removed "
            f"{self.removed_by_stage}",
            f"items: {acc_t['rows_in']} in, {acc_t['kept']} kept, {acc_t['quarantined']} removed",
            f"users: {self.users}; split rows {self.split_rows}",
            f"examples: {self.examples} (lengths in {self.length_unit})",
            f"written to {self.processed_dir}; removed rows in {self.quarantine_file}",
        ]


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _read_validated(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(
            path, "file_exists", "validated table not found: run the validate stage first (tether data validate)"
        )
    return pd.read_parquet(path)


def run_prepare(cfg: TetherConfig, root: Path, tokenizer: Any | None = None) -> PrepareSummary:
    """Clean, split and build chat examples from the validated tables; write every output.

    Args:
        cfg: the full config (paths, ``clean``, ``examples``).
        root: the project root that ``cfg.paths`` are relative to.
        tokenizer: optional chat tokenizer; when given, ``stats.json`` reports token lengths.

    Returns:
        Row accounting, split and example counts, and where the files are.

    Raises:
        DataError: a validated table is missing, or a user has fewer than 3 interactions.
        RowAccountingError: rows in != kept + removed (a bug).
    """
    paths = cfg.paths.resolved(Path(root))
    interactions = _read_validated(paths.validated_dir / "interactions.parquet")
    items = _read_validated(paths.validated_dir / "items.parquet")

    result = clean(interactions, items, cfg.clean)
    split_df = leave_last_out(result.interactions)
    assert_no_leakage(split_df)
    examples = build_examples(split_df, result.items, cfg.examples)
    stats = example_stats(examples, tokenizer)

    acc = result.accounting
    if acc["interactions_in"] != len(split_df) + acc["interactions_removed"]:
        raise RowAccountingError(
            f"prepare lost rows: {acc['interactions_in']} != {len(split_df)} + {acc['interactions_removed']}"
        )

    paths.processed_dir.mkdir(parents=True, exist_ok=True)
    paths.quarantine_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "interactions": paths.processed_dir / "interactions.parquet",
        "items": paths.processed_dir / "items.parquet",
    }
    _atomic_parquet(split_df, files["interactions"])
    _atomic_parquet(result.items, files["items"])
    for split in SPLITS:
        files[split] = paths.processed_dir / f"{split}.jsonl"
        lines = (json.dumps(ex, ensure_ascii=False) for ex in examples if ex["split"] == split)
        atomic_write_text(files[split], "".join(line + "\n" for line in lines))
    quarantine_file = paths.quarantine_dir / "cleaning.csv"
    tmp = quarantine_file.with_name(quarantine_file.name + ".tmp")
    result.removed.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, quarantine_file)

    split_rows = {s: int((split_df["split"] == s).sum()) for s in SPLITS}
    stats_file = paths.processed_dir / "stats.json"
    payload = {
        "cleaning": acc,
        "split": {"rows": split_rows, "users": int(split_df["user_id"].nunique())},
        "examples": stats,
        "settings": {
            "history_length": cfg.examples.history_length,
            "include_genres": cfg.examples.include_genres,
            "max_train_examples_per_user": cfg.examples.max_train_examples_per_user,
        },
    }
    atomic_write_text(stats_file, json.dumps(payload, indent=2, sort_keys=False, ensure_ascii=False) + "\n")

    summary = PrepareSummary(
        accounting={
            "interactions": {
                "rows_in": acc["interactions_in"],
                "kept": acc["interactions_kept"],
                "quarantined": acc["interactions_removed"],
            },
            "items": {"rows_in": acc["items_in"], "kept": acc["items_kept"], "quarantined": acc["items_removed"]},
        },
        removed_by_stage=dict(acc["interactions_removed_by_stage"]),
        users=split_rows["test"],
        split_rows=split_rows,
        examples={s: int(stats["examples"].get(s, 0)) for s in SPLITS},
        length_unit=stats["length_unit"],
        processed_dir=paths.processed_dir,
        quarantine_file=quarantine_file,
        stats_file=stats_file,
    )
    for line in summary.lines():
        logger.info(line)
    return summary
