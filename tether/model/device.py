"""What every forward pass asks of a model: where its inputs go, whether it can skip logits, eval mode.

Training (:mod:`tether.model.loss`), scoring, generation and perplexity all run plain
``transformers`` models, ``peft`` models (the candidate, or the base inside
``disable_adapter()``) and, in training, DDP-wrapped ones; these helpers see through both wrappers.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

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


# CPU flags of native bfloat16 arithmetic (x86: AVX512-BF16, AMX; Arm: the BF16 extension). Read from
# /proc/cpuinfo: torch's own check (mkldnn bf16 "supported") is also true where bf16 is emulated slowly.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 flags this CPU reports (empty where none, or no /proc/cpuinfo: macOS, Windows)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                cpuinfo = fh.read()
        except OSError:
            return []
    words: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            words.update(value.split())
    return [f for f in NATIVE_BF16_FLAGS if f in words]


class Precision(NamedTuple):
    """How training runs: under bf16 autocast or not, the precision's name, and why."""

    autocast: bool
    name: str  # cpu-bf16 | bf16 | fp32 | float32 | bfloat16 weights | ...
    reason: str


def training_precision(setting: str, device: str, dtype: Any, cpuinfo: str | None = None) -> Precision:
    """Whether training runs under bf16 autocast, and the precision's name with its reason.

    ``setting`` is ``train.precision``: ``fp32`` never autocasts; ``bf16`` always does; ``auto``
    autocasts a bf16 model on a GPU (as the Trainer's ``bf16`` always did) and float32 weights on a
    CPU with native bf16 (``cpu-bf16``: about 2x a float32 step, bench/bench_levers.py), never
    elsewhere (emulated bf16 is slower than float32). Weights stay in their dtype (the optimizer
    updates float32 LoRA weights); evaluation and the gates run in the model's dtype, not here.
    """
    import torch

    on_cpu = not str(device).startswith("cuda")
    weights = str(dtype).removeprefix("torch.")
    if dtype != torch.float32 and on_cpu:
        return Precision(False, f"{weights} weights", "the model is loaded in that dtype")
    if setting == "fp32":
        return Precision(False, "fp32", "train.precision: fp32")
    if setting == "bf16":
        return Precision(True, "cpu-bf16" if on_cpu else "bf16", "train.precision: bf16")
    if not on_cpu:
        bf16 = dtype == torch.bfloat16
        return Precision(bf16, "bf16" if bf16 else weights, f"a {weights} model on a GPU")
    flags = cpu_bf16_flags(cpuinfo)
    if flags:
        return Precision(True, "cpu-bf16", f"bf16 autocast over float32 weights: this CPU has {', '.join(flags)}")
    return Precision(False, "fp32", "this CPU has no native bf16")
