"""The error type for training inputs, in a module of its own so light modules can raise it.

:mod:`tether.chat` (no torch at import) raises it for malformed examples; the replay corpus and
the train stage raise it for bad files. Importing it costs nothing.
"""

from __future__ import annotations


class TrainDataError(ValueError):
    """Training inputs that cannot be used; the message says which file and what to fix."""
