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

Modules: :mod:`~tether.data.validate.checks` (the rules and their reasons),
:mod:`~tether.data.validate.gx` (Great Expectations plumbing), :mod:`~tether.data.validate.tables`
(verdicts to kept/quarantined tables and row accounting), :mod:`~tether.data.validate.stage`
(:func:`validate` and the stage's files). The names below are the package's public surface
(``from tether.data.validate import ...`` keeps working as when this was one module).
"""

from tether.data.validate.checks import CHAT_MARKUP_REGEX, CONTROL_CHARS_REGEX, DOT_SEGMENT_REGEX
from tether.data.validate.gx import DATA_DOCS_SITE
from tether.data.validate.stage import ValidationResult, ValidationSummary, run_validation, validate
from tether.data.validate.tables import QUARANTINE_COLUMNS, _check_accounting

__all__ = [
    "CHAT_MARKUP_REGEX",
    "CONTROL_CHARS_REGEX",
    "DATA_DOCS_SITE",
    "DOT_SEGMENT_REGEX",
    "QUARANTINE_COLUMNS",
    "ValidationResult",
    "ValidationSummary",
    "_check_accounting",
    "run_validation",
    "validate",
]
