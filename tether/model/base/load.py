"""Load the resolved base model and its tokenizer onto a device, in a dtype.

The device and dtype come from the call, else from ``model.device``/``model.dtype``, else from
the hardware (:func:`pick_device`). Loading is local only (``local_files_only``) and safetensors
only: resolution already put every file in place.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tether.config import ModelConfig
from tether.model.base.cache import _read_json
from tether.model.base.errors import ModelResolutionError
from tether.model.base.resolve import resolve_base_model
from tether.model.base.specs import ResolvedModel

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def pick_device() -> tuple[str, torch.dtype]:
    """The best device here and its training dtype.

    Returns:
        ``("cuda", bfloat16)`` on a GPU with native bf16 (Ampere or newer),
        ``("cuda", float32)`` on an older GPU (fp16 would need loss scaling),
        else ``("cpu", float32)``: bf16 on a CPU without bf16 hardware is ~30x slower.
        MPS is never picked automatically; pass ``device="mps"`` to use it.
    """
    import torch

    if torch.cuda.is_available():
        try:
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch without the argument
            bf16 = torch.cuda.is_bf16_supported()
        return "cuda", torch.bfloat16 if bf16 else torch.float32
    return "cpu", torch.float32


def _device_and_dtype(model_cfg: ModelConfig, device: str | None, dtype: Any) -> tuple[str, torch.dtype]:
    """The device and torch dtype a load uses: the arguments, else the config, else :func:`pick_device`."""
    import torch

    auto_device, auto_dtype = pick_device()
    device = device or (None if model_cfg.device == "auto" else model_cfg.device)
    if dtype is None and model_cfg.dtype != "auto":
        dtype = model_cfg.dtype
    if device is None:
        device = auto_device
    elif dtype is None:
        # An explicit device without a dtype: bf16 only where the hardware has it.
        dtype = auto_dtype if device.startswith("cuda") and auto_device == "cuda" else torch.float32
    if dtype is None:
        dtype = auto_dtype
    if isinstance(dtype, str):
        try:
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise ValueError(f"dtype {dtype!r}: expected float32, bfloat16 or float16") from None
    return device, dtype


def load_tokenizer(model_cfg: ModelConfig, resolved: ResolvedModel | None = None) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a pad token and a finite ``model_max_length``.

    For the embedded model this loads from the cache (converting first if needed).
    SmolLM2 has no pad token of its own: pad = eos = ``<|im_end|>``. So never build label
    masks from ``input_ids == pad_token_id``; that would also mask the end-of-turn token the
    model must learn to emit. Use the attention mask and completion offsets instead.

    Args:
        model_cfg: the ``model`` section of the config.
        resolved: an already resolved model (skips resolution).

    Returns:
        The tokenizer (right padding, as saved with the model).
    """
    from transformers import AutoTokenizer

    resolved = resolved or resolve_base_model(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        resolved.path, trust_remote_code=model_cfg.trust_remote_code, local_files_only=True
    )
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelResolutionError(
                f"the tokenizer of {resolved.name} has no pad, eos or unk token to pad batches with; "
                "add one to its tokenizer_config.json"
            )
        logger.info("tokenizer of %s has no pad token: using %r", resolved.name, fallback)
        tokenizer.pad_token = fallback
    # Tokenizers converted from GGUF (and some others) say ~1e30: cap at the model's context.
    max_positions = _read_json(resolved.path / "config.json").get("max_position_embeddings")
    if isinstance(max_positions, int) and tokenizer.model_max_length > 10 * max_positions:
        tokenizer.model_max_length = max_positions
    return tokenizer


def load_base_model(
    model_cfg: ModelConfig,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ResolvedModel]:
    """Resolve and load the base model and its tokenizer.

    Args:
        model_cfg: the ``model`` section of the config.
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps``; None = ``model_cfg.device``
            (``auto``: :func:`pick_device`).
        dtype: a torch dtype or its name; None = ``model_cfg.dtype`` (``auto``: bf16 on a
            bf16-capable GPU, else fp32).
        progress: show conversion progress if the embedded model is not cached yet.

    Returns:
        (model in eval mode on ``device``, tokenizer, the resolved model record).
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_base_model(model_cfg, progress=progress)
    tokenizer = load_tokenizer(model_cfg, resolved=resolved)
    device, dtype = _device_and_dtype(model_cfg, device, dtype)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=model_cfg.trust_remote_code,
        local_files_only=True,
    )
    model.to(device)
    model.eval()
    n_embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embeddings:
        raise ModelResolutionError(
            f"{resolved.path}: the tokenizer has {len(tokenizer)} tokens but the model only {n_embeddings} "
            "embeddings; the tokenizer files do not belong to these weights"
        )
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info(
        "loaded %s (%.1fM parameters, %s, %s) in %.1f s",
        resolved.name,
        sum(p.numel() for p in model.parameters()) / 1e6,
        str(dtype).removeprefix("torch."),
        device,
        time.perf_counter() - started,
    )
    return model, tokenizer, resolved
