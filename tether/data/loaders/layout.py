"""Which layout a raw-data directory holds (``ingest.format: auto``), and what each expects."""

from __future__ import annotations

import logging
from pathlib import Path

from tether.config import IngestConfig
from tether.data.errors import DataError

logger = logging.getLogger(__name__)

_SIGNATURES = {
    "movielens-100k": ("u.data", "u.item"),
    "movielens-latest": ("ratings.csv", "movies.csv"),
}
_GENERIC_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson")
_DEFAULT_GENERIC_STEMS = ("interactions", "items")


def _listing(raw_dir: Path) -> list[str]:
    return sorted(
        p.name for p in raw_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".dvc")
    )


def _default_generic_files(files: list[str]) -> tuple[str | None, str | None]:
    """``interactions.<ext>`` and ``items.<ext>`` when exactly one of each is present."""
    found: list[str | None] = []
    for stem in _DEFAULT_GENERIC_STEMS:
        hits = [f for f in files if Path(f).stem == stem and Path(f).suffix.lower() in _GENERIC_SUFFIXES]
        found.append(hits[0] if len(hits) == 1 else None)
    return found[0], found[1]


def _layout_help(files: list[str], ingest: IngestConfig) -> str:
    lines = [f"files found: {files or 'none'}"]
    for name, sig in _SIGNATURES.items():
        present = [f for f in sig if f in files]
        missing = [f for f in sig if f not in files]
        lines.append(f"{name} expects {' + '.join(sig)} (present: {present or 'none'}; missing: {missing or 'none'})")
    g = ingest.generic
    lines.append(
        "generic expects ingest.generic.interactions_file + items_file "
        f"(now {g.interactions_file!r} + {g.items_file!r}) or interactions.<ext> + items.<ext>, "
        "<ext> one of csv, tsv, parquet, jsonl"
    )
    return "; ".join(lines)


def detect_format(raw_dir: Path, ingest_cfg: IngestConfig) -> str:
    """Decide which layout ``raw_dir`` holds.

    Args:
        raw_dir: the raw data directory.
        ingest_cfg: the ingest settings; an explicit ``format`` is returned as is.

    Returns:
        One of ``movielens-100k``, ``movielens-latest``, ``generic``.

    Raises:
        DataError: the directory is missing, or its files match no layout or more than one
            (the message lists the files found and what each layout expects).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(raw_dir, "raw_dir_exists", "directory not found: generate sample data or put your files there")
    if ingest_cfg.format != "auto":
        return ingest_cfg.format
    files = _listing(raw_dir)
    g = ingest_cfg.generic
    # Generic files named in the config are an explicit choice of layout.
    if g.interactions_file and g.items_file and (raw_dir / g.interactions_file).is_file() and (raw_dir / g.items_file).is_file():
        return "generic"
    complete = [name for name, sig in _SIGNATURES.items() if all(f in files for f in sig)]
    touched = [name for name, sig in _SIGNATURES.items() if any(f in files for f in sig)]
    inter, items = _default_generic_files(files)
    if inter or items:
        touched.append("generic")
        if inter and items:
            complete.append("generic")
    if len(complete) == 1 and len(touched) == 1:
        logger.info("detected raw data layout %s in %s", complete[0], raw_dir)
        return complete[0]
    if len(touched) > 1:
        why = f"files of more than one layout ({', '.join(touched)}): remove the stray files or set ingest.format"
    else:
        why = "the files match no known layout: add the missing files or set ingest.format and ingest.generic"
    raise DataError(raw_dir, "known_layout", f"{why}; {_layout_help(files, ingest_cfg)}")
