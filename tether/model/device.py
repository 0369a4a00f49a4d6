"""What every forward pass asks of a model: where its inputs go, whether it can skip logits, eval mode.

Training (:mod:`tether.model.loss`), scoring, generation and perplexity all run plain
``transformers`` models, ``peft`` models (the candidate, or the base inside
``disable_adapter()``) and, in training, DDP-wrapped ones; these helpers see through both wrappers.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def unwrap_ddp(model: Any) -> Any:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def base_of(model: Any) -> Any:
    """The ``transformers`` model under DDP and ``peft`` wrappers (or the model itself)."""
    inner = unwrap_ddp(model)
    get_base = getattr(inner, "get_base_model", None)
    return get_base() if callable(get_base) else inner


def input_device(model: Any) -> torch.device:
    """The device of the input embeddings: where ``input_ids`` must be (sharded models included)."""
    with contextlib.suppress(AttributeError, NotImplementedError):
        return model.get_input_embeddings().weight.device
    return next(model.parameters()).device


def supports_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward accepts ``logits_to_keep``, which skips the output layer elsewhere.

    A standard argument of Hugging Face causal LMs; a model without it gets full logits and the
    caller slices them. Looked up once per model (cached on it): the loss asks at every step.
    """
    inner = base_of(model)
    cached = getattr(inner, "_tether_logits_to_keep", None)
    if cached is None:
        try:
            cached = "logits_to_keep" in inspect.signature(inner.forward).parameters
        except (TypeError, ValueError):  # a forward without a signature (some C extensions)
            cached = False
        with contextlib.suppress(AttributeError):
            inner._tether_logits_to_keep = cached
    return cached


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """``model.eval()`` for the block, restoring training mode afterwards if it was on.

    Scoring, generation, perplexity and the self-samples run under it, so a model handed over
    in training mode is handed back in training mode.
    """
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()
