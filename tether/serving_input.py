"""Validate a recommendation request before any model work: bad input is the caller's error.

Every refusal raises MLflow's ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which the
scoring server (``mlflow models serve``) answers with HTTP 400 and the message as JSON; any
other exception there would be a generic "unexpected error" with a stack trace. A message names
the row, the column and what to send instead.

The limits bound the work one request can ask for (a CPU scores ~20 candidates a second on
the embedded model; the scoring server gives a request 60 s by default) and are far above what
a real catalog needs (MovieLens titles are under 200 characters).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

MAX_ROWS = 64
MAX_HISTORY_TITLES = 500  # only the last examples.history_length are used; the rest is ignored
MAX_CANDIDATES = 100
MAX_TITLE_CHARS = 300
MAX_NEW_TOKENS = 128


@dataclass(frozen=True)
class Request:
    """A validated request.

    Attributes:
        histories: per row, the titles the user watched (oldest first), each stripped.
        candidates: per row, the titles to rank; None = a free generation of the next title.
        top_k: keep the best k ranked candidates (0 = all).
        max_new_tokens: the free-generation budget.
    """

    histories: list[list[str]]
    candidates: list[list[str] | None]
    top_k: int
    max_new_tokens: int


def _bad(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _titles(value: Any, row: int, column: str, limit: int) -> list[str]:
    """A cell holding a list of titles, checked; raises with the row and column on anything else."""
    where = f"row {row}, {column!r}"
    if isinstance(value, str):
        raise _bad(f"{where}: expected a list of titles, got a string; send [{value[:40]!r}, ...]")
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise _bad(f"{where}: expected a list of titles (strings), got {type(value).__name__}: {str(value)[:80]}")
    if not value:
        if column == "history":
            raise _bad(f"{where}: the list is empty; give at least one title the user watched (oldest first)")
        raise _bad(f"{where}: the list is empty; give at least one title to rank, or leave 'candidates' out for a generation")
    if len(value) > limit:
        raise _bad(f"{where}: {len(value)} titles; at most {limit} per request row")
    out = []
    for i, title in enumerate(value):
        if not isinstance(title, str):
            kind = "NaN" if isinstance(title, float) and math.isnan(title) else type(title).__name__
            raise _bad(f"{where}[{i}]: expected a title (a string), got {kind}: {str(title)[:80]}")
        title = title.strip()
        if not title:
            raise _bad(f"{where}[{i}]: an empty title")
        if len(title) > MAX_TITLE_CHARS:
            raise _bad(f"{where}[{i}]: a title of {len(title)} characters; at most {MAX_TITLE_CHARS}")
        out.append(title)
    return out


def _int_param(params: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _bad(f"param {name!r}: expected an integer, got {type(value).__name__}: {value!r}")
    if not low <= int(value) <= high:
        raise _bad(f"param {name!r}: {int(value)} is outside {low}..{high}")
    return int(value)


def parse_request(model_input: Any, params: Mapping[str, Any] | None, default_max_new_tokens: int) -> Request:
    """Check a request and return it in plain Python types.

    Args:
        model_input: a DataFrame with a ``history`` column and an optional ``candidates`` column
            (both lists of titles per row); a dict of columns or a list of row dicts also works.
        params: ``top_k`` (0..MAX_CANDIDATES) and ``max_new_tokens`` (0..MAX_NEW_TOKENS; 0 =
            ``default_max_new_tokens``).
        default_max_new_tokens: the logged generation budget.

    Returns:
        The validated request.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE (HTTP 400 from the scoring server) naming what is wrong.
    """
    if isinstance(model_input, pd.DataFrame):
        df = model_input
    else:
        try:
            df = pd.DataFrame(model_input)
        except (TypeError, ValueError) as exc:
            raise _bad(f"model input: expected rows with a 'history' list of titles, got {type(model_input).__name__} ({exc})") from None
    if "history" not in df.columns:
        raise _bad(
            f"model input needs a 'history' column (a list of titles per row, oldest first); got columns "
            f"{[str(c) for c in df.columns]}"
        )
    unknown = sorted(str(c) for c in df.columns if c not in ("history", "candidates"))
    if unknown:
        raise _bad(f"unknown columns {unknown}: a request has 'history' and optionally 'candidates'")
    if len(df) == 0:
        raise _bad("the request has no rows; send at least one row with a 'history'")
    if len(df) > MAX_ROWS:
        raise _bad(f"the request has {len(df)} rows; at most {MAX_ROWS} (split it into several requests)")
    histories, candidates = [], []
    has_candidates = "candidates" in df.columns
    for row, (_, rec) in enumerate(df.iterrows()):
        history = rec["history"]
        if _missing(history):
            raise _bad(f"row {row}: 'history' is missing; give the titles the user watched (oldest first)")
        histories.append(_titles(history, row, "history", MAX_HISTORY_TITLES))
        cell = rec["candidates"] if has_candidates else None
        candidates.append(None if _missing(cell) else _titles(cell, row, "candidates", MAX_CANDIDATES))
    params = dict(params or {})
    unknown = sorted(set(params) - {"top_k", "max_new_tokens"})
    if unknown:
        raise _bad(f"unknown params {unknown}: this model takes 'top_k' and 'max_new_tokens'")
    top_k = _int_param(params, "top_k", 0, MAX_CANDIDATES)
    max_new = _int_param(params, "max_new_tokens", 0, MAX_NEW_TOKENS) or int(default_max_new_tokens)
    return Request(histories=histories, candidates=candidates, top_k=top_k, max_new_tokens=max_new)
