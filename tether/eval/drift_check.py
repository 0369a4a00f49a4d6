"""Drift of one or more adapters on any text, outside the pipeline: ``tether drift``.

The gate measures the configured drift panel; a reviewer often wants to know more: how does this
adapter do on *my* support tickets, on a novel, on an encyclopedia dump, at half its strength?
:func:`drift_report` loads the base model once, measures it on each source, then puts each adapter
on it (optionally scaled, like guarded selection scales it) and measures the same token ids.
Sources are drift-panel sources (:class:`tether.config.DriftSourceConfig`): folders, files,
``builtin:*`` and ``hf:*`` ids, with the same halves (the gate's half by default).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.config import DriftSourceConfig, TetherConfig

logger = logging.getLogger(__name__)


def drift_report(
    cfg: TetherConfig,
    root: Path,
    adapters: Sequence[Path],
    *,
    sources: Sequence[DriftSourceConfig] | None = None,
    scales: Sequence[float] = (1.0,),
    half: str = "gate",
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Perplexity drift of each adapter (at each scale) against the base, per source.

    Args:
        cfg: the config (base model, perplexity window/stride, seed).
        root: the project root (relative source paths).
        adapters: adapter directories (``adapter_config.json`` + weights).
        sources: the sources to measure; None = ``eval.drift_panel``.
        scales: LoRA update multipliers to measure each adapter at (1.0 = as saved).
        half: ``gate`` or ``selection``: which half of each source's documents.
        model_dir: a Hugging Face model directory instead of ``cfg.model``.

    Returns:
        ``{"base": {source: ppl}, "adapters": [{"adapter", "scale", "drift": {source: table row}}]}``
        where a table row is :func:`tether.eval.panel.drift_table`'s.
    """
    from peft import PeftModel
    from peft.helpers import rescale_adapter_scale

    from tether.eval.panel import draw_self_samples, drift_table, load_panel, measure
    from tether.model.train import load_model

    if sources is not None:
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"drift_panel": list(sources)})})
    panel = load_panel(cfg, root, half)  # type: ignore[arg-type]
    limits = {s.name: s.max_drift for s in panel.sources}
    model, tokenizer, _, base_hash, device, dtype = load_model(cfg, model_dir)
    model.eval()
    samples = draw_self_samples(model, tokenizer, panel, seed=cfg.seed, base_hash=base_hash,
                                cache_dir=cfg.model.resolved_cache_dir(), device=device, dtype=str(dtype))
    base = measure(model, tokenizer, panel, cfg, samples=samples)
    logger.info("base: %s", ", ".join(f"{k} ppl {v['ppl']:.3f} ({v['n_tokens']} tokens)" for k, v in base.items()))
    out: dict[str, Any] = {"base": {k: v["ppl"] for k, v in base.items()}, "adapters": []}
    peft_model = None
    for adapter in adapters:
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name="a0").eval()
            name = "a0"
        else:
            name = f"a{len(out['adapters'])}"
            peft_model.load_adapter(str(adapter), adapter_name=name)
        peft_model.set_adapter(name)
        for scale in scales:
            with rescale_adapter_scale(peft_model, scale):
                cand = measure(peft_model, tokenizer, panel, cfg, samples=samples)
            table = drift_table(cand, base, limits, n_boot=1000, seed=cfg.seed)
            out["adapters"].append({"adapter": str(adapter), "scale": scale, "drift": table})
            logger.info("%s x%g: %s", adapter, scale, ", ".join(f"{k} {v['drift']:+.2%}" for k, v in table.items()))
    return out
