"""The drift panel: perplexity drift measured per source, so damage is attributed, never averaged away.

The panel (``eval.drift_panel``) is a list of named sources (:mod:`tether.eval.sources`): the
packaged held-out prose, real human-written text every install has (Python's reference docs,
the installed packages' descriptions), the base model's own chat answers
(:mod:`tether.eval.selfsamples`) and whatever the user adds. Base and candidate are measured on
each source with identical token ids; each source gets its own drift, interval and verdict, and
promotion is blocked when any one source drifts over its limit.

* :func:`load_panel` reads the text sources (raises, naming the source, before any model is
  loaded: the flow calls it before training) and returns one half: ``gate`` for the gate,
  ``selection`` for guarded selection (disjoint documents and prompts);
* :func:`measure` scores one model on a panel: ``{source: {"per_doc": [[nll, n], ...], ...}}``;
  text sources by sliding-window perplexity over documents capped at ``max_tokens``,
  self-samples by the NLL of the base's sampled answers given their prompts;
* :func:`drift_table` compares candidate and base: per source ``drift`` (``ppl_c / ppl_b - 1``),
  its bootstrap interval over documents / samples, ``nll_diff`` (nats per token; for
  self-samples this is the KL(base || candidate) estimate) and the source's limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tether.eval import metrics
from tether.eval.sources import Half, TextSource, load_text_source

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tether.config import TetherConfig
    from tether.eval.selfsamples import SampleRow

logger = logging.getLogger(__name__)


@dataclass
class PanelSource:
    """One source of a panel half, ready to measure.

    Attributes:
        name: the source name (``heldout_prose``).
        kind: ``text`` or ``self_samples``.
        max_drift: its drift limit (the source's ``max_drift``, else ``gates.max_ppl_drift``).
        documents: ``(name, text)`` chunks of a text source, in measuring order.
        max_tokens: token cap of a text source (None = every chunk).
        n_samples: self-samples drawn for a self-sample source.
        max_new_tokens: their length limit.
        fingerprint: identifies the content (part of the base-evaluation cache key).
    """

    name: str
    kind: str
    max_drift: float
    documents: list[tuple[str, str]] = field(default_factory=list)
    max_tokens: int | None = None
    n_samples: int = 0
    max_new_tokens: int = 0
    fingerprint: str = ""


@dataclass
class Panel:
    """The sources of one half of the drift panel (``gate`` or ``selection``)."""

    half: Half
    sources: list[PanelSource]

    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def fingerprint(self) -> str:
        """sha256 of every source's settings and content: equal panels measure equal numbers."""
        blob = [[s.name, s.kind, s.max_tokens, s.n_samples, s.max_new_tokens, s.fingerprint,
                 hashlib.sha256(json.dumps(s.documents, ensure_ascii=False).encode()).hexdigest()] for s in self.sources]
        return hashlib.sha256(json.dumps([self.half, blob]).encode()).hexdigest()

    def self_sample_source(self) -> PanelSource | None:
        return next((s for s in self.sources if s.kind == "self_samples"), None)


def panel_limits(cfg: TetherConfig) -> dict[str, float]:
    """Each drift-panel source's limit: its own ``max_drift``, else ``gates.max_ppl_drift``."""
    return {s.name: s.max_drift if s.max_drift is not None else cfg.gates.max_ppl_drift for s in cfg.eval.drift_panel}


def load_text_sources(cfg: TetherConfig, root: Path) -> dict[str, TextSource]:
    """Every text source of ``eval.drift_panel``, read and split (the preflight check before training).

    Raises:
        tether.eval.sources.SourceError: naming the first source that cannot be used and what to fix.
    """
    return {s.name: load_text_source(s, Path(root)) for s in cfg.eval.drift_panel if s.kind != "self_samples"}


def panel_folders(cfg: TetherConfig, root: Path) -> list[Path]:
    """The panel's folder and file sources, resolved (replay must stay out of them)."""
    from tether.eval.sources import source_folder

    return [f for s in cfg.eval.drift_panel if (f := source_folder(s, root)) is not None]


def load_panel(
    cfg: TetherConfig,
    root: Path,
    half: Half = "gate",
    *,
    max_tokens: int | None = None,
    n_samples: int | None = None,
    text_sources: Mapping[str, TextSource] | None = None,
) -> Panel:
    """One half of the drift panel, ready to measure.

    Args:
        cfg: the config (``eval.drift_panel``, ``gates.max_ppl_drift``).
        root: the project root.
        half: ``gate`` (what the gate measures) or ``selection`` (guarded selection).
        max_tokens: a token cap for every text source instead of each source's own.
        n_samples: self-samples to draw instead of each self-sample source's own ``n_samples``.
        text_sources: sources already read by :func:`load_text_sources` (not read again).
    """
    texts = dict(text_sources) if text_sources is not None else load_text_sources(cfg, root)
    limits = panel_limits(cfg)
    out = []
    for spec in cfg.eval.drift_panel:
        limit = limits[spec.name]
        if spec.kind == "self_samples":
            out.append(PanelSource(spec.name, "self_samples", limit, n_samples=n_samples or spec.n_samples,
                                   max_new_tokens=spec.max_new_tokens, fingerprint=f"self-samples:{half}"))
            continue
        src = texts[spec.name]
        out.append(PanelSource(spec.name, "text", limit, [(d.name, d.text) for d in src.half(half)],
                               max_tokens=max_tokens or spec.max_tokens, fingerprint=src.fingerprint))
    return Panel(half, out)


def capped_ids(tokenizer: PreTrainedTokenizerBase, documents: Sequence[tuple[str, str]], max_tokens: int | None,
               ) -> tuple[list[list[int]], list[str]]:
    """Token ids of the documents, in order, until ``max_tokens`` (the last one cut to fit)."""
    from tether.eval.perplexity import tokenize_corpus

    ids_out, names = [], []
    total = 0
    for (name, _), ids in zip(documents, tokenize_corpus(tokenizer, [t for _, t in documents])):
        if max_tokens is not None and total + len(ids) > max_tokens:
            ids = ids[: max_tokens - total]
        if len(ids) >= 2:
            ids_out.append(ids)
            names.append(name)
            total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    return ids_out, names


def _entry(per_doc: Sequence[tuple[float, int]], documents: Sequence[str], kind: str) -> dict[str, Any]:
    nll, n = math.fsum(d[0] for d in per_doc), sum(d[1] for d in per_doc)
    return {"kind": kind, "per_doc": [[float(a), int(b)] for a, b in per_doc], "documents": list(documents),
            "nll_sum": nll, "n_tokens": n, "ppl": math.exp(nll / n) if n else math.nan}


def measure(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    panel: Panel,
    cfg: TetherConfig,
    *,
    samples: Sequence[SampleRow] = (),
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score one model on every source of a panel.

    Args:
        model: the model (a peft model, or one inside ``disable_adapter()`` for the base).
        tokenizer: its tokenizer (identical for base and candidate).
        panel: from :func:`load_panel`.
        cfg: the config (``eval.perplexity``: window, stride, batch size).
        samples: the base's self-samples for the panel's self-sample source (drawn by the caller
            with the base model; the candidate scores the very same token ids).
        progress: progress bars.

    Returns:
        Per source: ``kind``, ``per_doc`` (``[nll_sum, n_tokens]`` per document or sample),
        ``documents`` (their names), ``nll_sum``, ``n_tokens``, ``ppl``.
    """
    from tether.eval.perplexity import perplexity_of_ids
    from tether.eval.selfsamples import sequence_nll

    pc = cfg.eval.perplexity
    out: dict[str, dict[str, Any]] = {}
    for src in panel.sources:
        if src.kind == "self_samples":
            if not samples:
                raise ValueError(f"drift-panel source {src.name!r}: no self-samples were given to score")
            out[src.name] = _entry(sequence_nll(model, samples), [s.id for s in samples], "self_samples")
            continue
        ids, names = capped_ids(tokenizer, src.documents, src.max_tokens)
        res = perplexity_of_ids(model, ids, window=pc.window, stride=pc.stride, batch_size=pc.batch_size,
                                progress=progress)
        out[src.name] = _entry(res.per_doc, names, "text")
    return out


def drift_table(
    cand: Mapping[str, Mapping[str, Any]],
    base: Mapping[str, Mapping[str, Any]],
    limits: Mapping[str, float],
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per source: the candidate's drift against the base, with its interval and limit.

    Args:
        cand: :func:`measure` of the candidate.
        base: :func:`measure` of the base (same panel: the same documents, tokens and samples).
        limits: source -> its drift limit.
        n_boot, alpha, seed: the bootstrap over documents / samples.

    Returns:
        Per source: ``kind``, ``drift`` (``ppl_c / ppl_b - 1``), ``interval`` of the drift,
        ``nll_diff`` (mean NLL per token, candidate - base: the KL estimate for self-samples),
        ``ppl_candidate``, ``ppl_base``, ``n_tokens``, ``n_docs`` and ``max_drift``.

    Raises:
        ValueError: when a source's documents differ between candidate and base.
    """
    table = {}
    for name, c in cand.items():
        b = base.get(name)
        if b is None:
            raise ValueError(f"drift-panel source {name!r} was measured for the candidate but not for the base")
        c_tok, b_tok = np.array([d[1] for d in c["per_doc"]]), np.array([d[1] for d in b["per_doc"]])
        if c["documents"] != b["documents"] or not np.array_equal(c_tok, b_tok):
            raise ValueError(f"drift-panel source {name!r}: candidate and base were scored on different tokens")
        c_nll, b_nll = np.array([d[0] for d in c["per_doc"]]), np.array([d[0] for d in b["per_doc"]])
        n = int(c_tok.sum())
        table[name] = {
            "kind": c.get("kind", "text"),
            "drift": metrics.perplexity_drift(c_nll, c_tok, b_nll, b_tok),
            "interval": metrics.ppl_drift_ci(c_nll, c_tok, b_nll, b_tok, n_boot=n_boot, alpha=alpha, seed=seed),
            "nll_diff": float((c_nll.sum() - b_nll.sum()) / n) if n else math.nan,
            "ppl_candidate": float(c["ppl"]),
            "ppl_base": float(b["ppl"]),
            "n_tokens": n,
            "n_docs": len(c_tok),
            "max_drift": float(limits[name]),
        }
    return table


def worst_source(table: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The source whose drift is largest relative to its limit (the one to look at first)."""
    def excess(item: tuple[str, Mapping[str, Any]]) -> float:
        d = item[1].get("drift")
        return math.inf if d is None or not math.isfinite(d) else d - item[1]["max_drift"]

    return max(table.items(), key=excess)[0] if table else None


def draw_self_samples(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    panel: Panel | None,
    *,
    seed: int,
    base_hash: str,
    cache_dir: Path,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[SampleRow]:
    """The base's self-samples for the panel's self-sample source (cached by base hash); [] without one.

    Call with the base model (or the peft model inside ``disable_adapter()``). The gate half and
    the selection half draw from different prompts (:mod:`tether.eval.selfsamples`).
    """
    from tether.eval.selfsamples import cached_samples

    src = panel.self_sample_source() if panel is not None else None
    if src is None:
        return []
    rows, _ = cached_samples(model, tokenizer, split=panel.half, n_samples=src.n_samples,
                             max_new_tokens=src.max_new_tokens, seed=seed, base_hash=base_hash, cache_dir=cache_dir,
                             device=device, dtype=dtype)
    return rows
