"""The raw tables' shape: canonical column names, the layouts known, and :class:`RawData`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "rating", "source_row"]
ITEM_COLUMNS = ["item_id", "title", "genres", "description", "source_row"]
# Original text of values that did not parse (NaN where the value parsed, "" where it was missing).
RAW_TIMESTAMP = "_raw_timestamp"
RAW_RATING = "_raw_rating"

FORMATS = ("movielens-100k", "movielens-latest", "generic")


@dataclass
class RawData:
    """Raw tables in the canonical schema (docs/CONVENTIONS.md), before validation.

    Attributes:
        interactions: ``user_id``, ``item_id`` (str, NaN when missing), ``timestamp``
            (nullable Int64 unix seconds, NA when missing or unparseable), ``rating``
            (float64, NaN when absent or unparseable), ``source_row`` (int64, 1-based record
            number, header not counted), ``_raw_timestamp`` / ``_raw_rating`` (the original
            text where the value did not parse, ``""`` for a missing timestamp, else NaN).
        items: ``item_id``, ``title`` (str, NaN when missing or blank), ``genres`` (``"A|B"``,
            ``""`` when none), ``description`` (``""`` when none), ``source_row``.
        format: the layout that was read (one of :data:`FORMATS`).
        interactions_path: the interactions file.
        items_path: the item catalog file.
        warnings: things worth knowing that did not stop the load (ignored columns, files).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    format: str
    interactions_path: Path
    items_path: Path
    warnings: list[str] = field(default_factory=list)
