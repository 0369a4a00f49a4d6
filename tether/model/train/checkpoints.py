"""Trainer checkpoints in ``train.output_dir``: which one a resume continues from, and a fresh start.

The Trainer writes ``checkpoint-N/trainer_state.json`` last, so a folder without a readable one was
cut short (``kill -9``, OOM, preemption mid-save, or a rotation killed mid-delete). Transformers'
``get_last_checkpoint`` picks the newest folder whatever its state, and resuming a half-written one
crashes; :func:`last_checkpoint` falls back to the newest *complete* checkpoint instead.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def checkpoint_complete(path: Path) -> bool:
    """Whether ``path`` holds a readable ``trainer_state.json`` with a ``global_step``."""
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest *complete* ``checkpoint-N`` folder in ``output_dir`` (None if there is none).

    Incomplete folders are skipped with a warning and left in place for a post-mortem.
    """
    from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    newest = get_last_checkpoint(str(output_dir))
    if newest is None or checkpoint_complete(Path(newest)):
        return newest
    # The newest was cut short: the Trainer's own order (oldest first), newest complete one wins.
    for path in map(Path, reversed(sort_checkpoints(str(output_dir)))):
        if not path.name.removeprefix("checkpoint-").isdigit():
            continue
        if checkpoint_complete(path):
            return str(path)
        log.warning("%s is incomplete (no readable trainer_state.json; the process died while saving): skipped", path)
    return None


def remove_checkpoints(output_dir: Path) -> None:
    """Delete every ``checkpoint-*`` folder in ``output_dir`` (a fresh run must not resume old state)."""
    output_dir = Path(output_dir)
    stale = sorted(output_dir.glob("checkpoint-*")) if output_dir.is_dir() else []
    if stale:
        log.warning("starting a fresh run: removing %d old checkpoints in %s", len(stale), output_dir)
        for path in stale:
            shutil.rmtree(path)
