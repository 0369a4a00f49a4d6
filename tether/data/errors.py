"""The one error type for bad input data, and the internal row-accounting check.

A :class:`DataError` is raised when input cannot be used at all (an empty file, a missing
column, bytes that are not UTF-8, an unknown file layout). Its message names the file, the
column, the rule and example rows, so the person reading a failed flow knows what to fix
without opening a debugger. Row-level problems do not raise: those rows are quarantined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_MAX_EXAMPLES = 5
_MAX_VALUE_CHARS = 60


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


def format_examples(rows: list[Any]) -> str:
    """Render example rows as ``row 17 ('abc'), row 20 ('x')``.

    Each element is either ``(source_row, value)`` or a bare value / row number.
    """
    parts = []
    for entry in rows[:_MAX_EXAMPLES]:
        if isinstance(entry, tuple) and len(entry) == 2:
            row, value = entry
            parts.append(f"row {row} ({_short(value)})" if row is not None else _short(value))
        elif isinstance(entry, int):
            parts.append(f"row {entry}")
        else:
            parts.append(_short(entry))
    more = f" and {len(rows) - _MAX_EXAMPLES} more" if len(rows) > _MAX_EXAMPLES else ""
    return ", ".join(parts) + more


class DataError(Exception):
    """Input data that cannot be used; the message names file, column, rule and example rows.

    Attributes:
        file: the source file (or directory, for layout problems).
        column: the column concerned, or None when the problem is the whole file.
        rule: a short rule id, e.g. ``rating_is_number`` or ``file_not_empty``.
        rows: example rows, each ``(source_row, value)`` (row None when not applicable).
        detail: a sentence saying what is wrong and what to do about it.
        count: how many rows fail, when that is known.
    """

    def __init__(
        self,
        file: Path | str,
        rule: str,
        detail: str = "",
        *,
        column: str | None = None,
        rows: list[Any] | None = None,
        count: int | None = None,
    ) -> None:
        self.file = str(file)
        self.column = column
        self.rule = rule
        self.rows = list(rows or [])
        self.detail = detail
        self.count = count
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [self.file]
        parts.append(f"column {self.column!r}" if self.column is not None else "whole file")
        parts.append(f"rule {self.rule!r}")
        tail = []
        if self.count is not None:
            tail.append(f"{self.count} row{'s' if self.count != 1 else ''} fail")
        if self.detail:
            tail.append(self.detail)
        text = ": ".join(parts)
        if tail:
            text += ": " + "; ".join(tail)
        if self.rows:
            text += f", e.g. {format_examples(self.rows)}"
        return text


class RowAccountingError(RuntimeError):
    """rows in != rows kept + rows quarantined: a bug in Tether, never a data problem."""
