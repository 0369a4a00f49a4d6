"""Pipeline steps that take more than one ``tether`` call, as one call each.

Both the CLI commands and the Prefect tasks run these, so ``tether data prepare`` and the flow's
prepare task do the same work and a Prefect task stays a thin wrapper around one function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tether.config import TetherConfig


def prepare_data(cfg: TetherConfig, root: Path) -> Any:
    """Clean, split and write the chat examples; token lengths in the base model's tokenizer when asked.

    ``examples.token_stats`` true: ``stats.json``'s lengths are tokens of the base model's chat
    template (its tokenizer is loaded); false: whitespace word counts (tests, machines without the model).

    Returns:
        :class:`tether.data.prepare.PrepareSummary`.
    """
    from tether.data.prepare import run_prepare

    tokenizer = None
    if cfg.examples.token_stats:
        from tether.model.base import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    return run_prepare(cfg, root, tokenizer=tokenizer)


def check_drift_panel(cfg: TetherConfig, root: Path) -> dict[str, dict[str, Any]]:
    """Read every text source of the drift panel, so a missing, empty or unreachable one fails before model work.

    Returns:
        source name -> ``{"gate_chunks", "selection_chunks", "fingerprint"}``.
    """
    from tether.eval.panel import load_text_sources

    sources = load_text_sources(cfg, root)
    return {name: {"gate_chunks": len(s.gate), "selection_chunks": len(s.selection), "fingerprint": s.fingerprint}
            for name, s in sources.items()}
