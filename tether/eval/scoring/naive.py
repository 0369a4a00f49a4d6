"""The reference scorer: every prompt + candidate sequence run in full, padded into batches.

Simple and slow; :func:`~tether.eval.scoring.packed.score_candidates` must match it within
float error (the tests hold them to 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tether.chat import Messages, encode_completion, encode_prompt
from tether.eval.scoring.result import ScoreResult, _empty, _result, _token_logprobs
from tether.model.device import eval_mode, supports_logits_to_keep
from tether.model.device import input_device as _input_device

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

def _pad(rows: Sequence[Sequence[int]], width: int, pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Candidate indices grouped into batches of similar length (longest first): little padding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # Padded positions are masked out and never scored, so any valid id works.
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def score_candidates_naive(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompt_messages: Messages,
    candidate_titles: Sequence[str],
    batch_size: int = 32,
) -> ScoreResult:
    """Score candidates by running each full prompt + completion sequence (the reference).

    Args:
        model: a causal LM (transformers or peft); put in eval mode for the call.
        tokenizer: its tokenizer, with a chat template.
        prompt_messages: the user's prompt as chat messages.
        candidate_titles: the item titles to score.
        batch_size: sequences per forward pass.

    Returns:
        A :class:`ScoreResult` in the order of ``candidate_titles``.
    """
    import torch

    if not candidate_titles:
        return _empty()
    prompt_ids = encode_prompt(tokenizer, prompt_messages)
    completions = [encode_completion(tokenizer, prompt_messages, t) for t in candidate_titles]
    n_prompt = len(prompt_ids)
    device = _input_device(model)
    keep = supports_logits_to_keep(model)
    out: list[np.ndarray | None] = [None] * len(completions)
    with eval_mode(model), torch.inference_mode():
        for batch in _batches_by_length([len(c) for c in completions], batch_size):
            width = max(len(completions[i]) for i in batch)
            ids, mask = _pad([prompt_ids + completions[i] for i in batch], n_prompt + width, _pad_id(tokenizer), device)
            kwargs: dict[str, Any] = {"logits_to_keep": width + 1} if keep else {}
            # Only the logits that predict completion tokens go through the vocab projection
            # (where supported), so this baseline pays for the prompt's transformer layers only.
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
            logits = logits[:, -(width + 1) : -1]  # positions n_prompt-1 .. n_prompt+width-2
            logp = _token_logprobs(logits, ids[:, n_prompt:]).double().cpu().numpy()
            for row, i in enumerate(batch):
                out[i] = logp[row, : len(completions[i])]
    return _result(out)  # type: ignore[arg-type]
