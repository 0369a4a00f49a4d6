"""What a first conversion shows while it runs: numbered, timed steps and transformers' progress bars.

The steps are logged, and printed to stderr when nobody configured logging (a bare script or a
notebook), so a 30-second wait is explained; ``progress=False`` silences the bars.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


class _Steps:
    """Numbered, timed steps, logged (and printed when logging is not configured)."""

    def __init__(self, total: int, progress: bool) -> None:
        self.total = total
        self.progress = progress
        self.n = 0
        self.durations: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, key: str, label: str) -> Iterator[None]:
        self.n += 1
        _say(self.progress, f"[{self.n}/{self.total}] {label} ...")
        t0 = time.perf_counter()
        yield
        elapsed = time.perf_counter() - t0
        self.durations[key] = round(elapsed, 3)
        _say(self.progress, f"[{self.n}/{self.total}] {label}: done in {elapsed:.1f} s")

    def timings(self) -> dict[str, float]:
        return {**self.durations, "total": round(time.perf_counter() - self.started, 3)}


def _say(progress: bool, message: str) -> None:
    logger.info(message)
    # Nobody configured logging (a bare script or notebook): print, so a 30 s wait is explained.
    if progress and not logging.getLogger().handlers and not logger.handlers:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn transformers' progress bars (including the GGUF dequantization bar) on or off."""
    from functools import partial

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    patch = (
        contextlib.nullcontext()
        if enabled or not hasattr(gguf_utils, "tqdm")
        else _patched(gguf_utils, "tqdm", partial(tqdm, disable=True))
    )
    try:
        with patch:
            yield
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


@contextlib.contextmanager
def _patched(obj: Any, attr: str, value: Any) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)
