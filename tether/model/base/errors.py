"""The two errors of the base model: it cannot be resolved, or its conversion failed.

Both messages say what to do instead; they are raised by resolution, the cache, conversion and
loading alike, so they live apart from all of them.
"""

from __future__ import annotations


class ModelResolutionError(ValueError):
    """``model.base_model`` cannot be resolved; the message says what to do instead."""


class ModelConversionError(RuntimeError):
    """Converting a GGUF model failed (e.g. converted logits differ from the GGUF model's)."""
