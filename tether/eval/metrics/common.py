"""What every metric module shares: the item id type and the lenient float of a reported value."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

ItemId = Hashable


def as_float(x: Any) -> float:
    """``float(x)``, or NaN for None and non-numbers, so a later finiteness check fails it."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan
