"""Read raw interaction logs and item catalogs in any supported layout into the canonical tables.

Supported layouts (``ingest.format``):

- ``movielens-100k``: ``u.data`` (tab-separated user, item, rating, timestamp; no header) and
  ``u.item`` (pipe-separated, latin-1: id | title | release date | video date | IMDb URL |
  19 genre flags); genre names from ``u.genre`` when present.
- ``movielens-latest``: ``ratings.csv`` (userId, movieId, rating, timestamp) and ``movies.csv``
  (movieId, title, genres ``A|B`` or ``(no genres listed)``, optional ``description``).
- ``generic``: any CSV / TSV / Parquet / JSONL pair, columns named through
  ``ingest.generic.columns``; timestamps as unix seconds or ISO-8601 strings.
- ``auto``: decided by :func:`detect_format` from the files present.

Loading never drops or repairs a row. A value that does not parse (a rating ``'abc'``, a
timestamp ``'yesterday'``) becomes NaN/NA in the canonical column and its original text is
kept in ``_raw_rating`` / ``_raw_timestamp`` so validation can quarantine the row with a reason.
Problems that make a whole file unusable raise :class:`~tether.data.errors.DataError`.

Modules: :mod:`~tether.data.loaders.schema` (canonical columns, :class:`RawData`),
:mod:`~tether.data.loaders.layout` (layout detection), :mod:`~tether.data.loaders.files`
(reading one file), :mod:`~tether.data.loaders.values` (value parsing),
:mod:`~tether.data.loaders.formats` (each layout, and :func:`load_raw`).
``from tether.data.loaders import ...`` keeps working as when this was one module.
"""

from tether.data.loaders.formats import ML100K_GENRES, load_raw
from tether.data.loaders.layout import detect_format
from tether.data.loaders.schema import FORMATS, INTERACTION_COLUMNS, ITEM_COLUMNS, RAW_RATING, RAW_TIMESTAMP, RawData

__all__ = [
    "FORMATS",
    "INTERACTION_COLUMNS",
    "ITEM_COLUMNS",
    "ML100K_GENRES",
    "RAW_RATING",
    "RAW_TIMESTAMP",
    "RawData",
    "detect_format",
    "load_raw",
]
