"""The fast scorer: the prompt run once, its candidates packed into one row against its KV cache.

Position ids continue after the prompt for each candidate and a 4D attention mask lets each
candidate see the prompt and its own earlier tokens only, so no padding is computed and the
cache is never copied per candidate. The prefix every user's prompt shares (system prompt,
the template's first line) can be run once per model (:func:`shared_prompt_prefix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tether.chat import Messages, encode_completion, encode_prompt
from tether.eval.scoring.result import ScoreResult, _empty, _result, _token_logprobs
from tether.model.device import base_of as _base_of
from tether.model.device import eval_mode, supports_logits_to_keep
from tether.model.device import input_device as _input_device
from tether.model.prefix import common_prefix

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

@dataclass(frozen=True)
class PromptPrefix:
    """The KV cache of a token prefix that many prompts share (system prompt and template).

    Every user's prompt starts with the same system message and the same first line of the
    user turn; :func:`shared_prompt_prefix` runs those tokens once per model, and
    :func:`score_candidates` continues each prompt from this cache instead of recomputing them.

    Attributes:
        ids: the shared token ids.
        kv: per decoder layer, the ``(keys, values)`` tensors of those ids (batch 1).
    """

    ids: tuple[int, ...]
    kv: tuple[tuple[Any, Any], ...]

    def __len__(self) -> int:
        return len(self.ids)


def _cache_kv(cache: Any, model: Any) -> tuple[tuple[Any, Any], ...]:
    layers = getattr(cache, "layers", None)
    if layers is None or not all(getattr(layer, "keys", None) is not None for layer in layers):
        raise TypeError(
            f"{type(_base_of(model)).__name__} returned past_key_values of type {type(cache).__name__}, "
            "not a transformers DynamicCache with per-layer keys/values; use score_candidates_naive"
        )
    return tuple((layer.keys, layer.values) for layer in layers)


def _new_cache(model: Any, kv: Sequence[tuple[Any, Any]]) -> Any:
    """A fresh DynamicCache holding ``kv``; a forward pass appends to it, never to ``kv`` itself."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=list(kv), config=_base_of(model).config)


def _check_attention(model: Any) -> None:
    impl = getattr(_base_of(model).config, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        raise TypeError(
            f"packed candidate scoring needs a custom 4D attention mask, which attention implementation {impl!r} "
            "ignores; load the model with attn_implementation='sdpa' or use score_candidates_naive"
        )


def shared_prompt_prefix(
    model: Any, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Messages], min_tokens: int = 8
) -> PromptPrefix | None:
    """Run the longest token prefix common to every prompt once and keep its KV cache.

    The prefix is cut one token short of the shortest prompt, so every prompt still has at
    least one token of its own (whose logits predict the first completion token).

    Args:
        model: the causal LM that will score (the cache belongs to this model and adapter state:
            compute it inside ``disable_adapter()`` for the base).
        tokenizer: its tokenizer, with a chat template.
        prompts: the prompts as chat messages.
        min_tokens: below this many shared tokens no cache is built (not worth a forward pass).

    Returns:
        The :class:`PromptPrefix`, or None (fewer than two prompts, or too short a shared prefix).
    """
    import torch

    if len(prompts) < 2:
        return None
    ids = common_prefix([encode_prompt(tokenizer, p) for p in prompts], min_tokens)
    if not ids:
        return None
    with eval_mode(model), torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long, device=_input_device(model)), use_cache=True,
                    **({"logits_to_keep": 1} if supports_logits_to_keep(model) else {}))
        kv = _cache_kv(out.past_key_values, model)
    return PromptPrefix(ids=tuple(ids), kv=kv)


def _packed_mask(n_past: int, n_shared: int, segments: Sequence[int], dtype: Any, device: Any) -> torch.Tensor:
    """Additive 4D mask ``[1, 1, L, n_past + L]`` for one packed row ``[shared | segment 1 | segment 2 ...]``.

    ``n_past`` tokens are already in the KV cache and every packed token sees them. The first
    ``n_shared`` packed tokens (the rest of the prompt) are causal among themselves; every
    segment (one candidate) sees the past, all shared tokens and, causally, its own earlier
    tokens; never another candidate's. Additive (0 / most negative float) so SDPA and eager
    attention read it the same way.
    """
    import torch

    total = n_shared + sum(segments)
    allowed = torch.zeros((total, n_past + total), dtype=torch.bool)
    allowed[:, :n_past] = True
    bounds = [(0, n_shared)] if n_shared else []
    start = n_shared
    for length in segments:
        bounds.append((start, start + length))
        start += length
    for a, b in bounds:
        allowed[a:b, n_past + a : n_past + b] = torch.ones((b - a, b - a), dtype=torch.bool).tril()
        allowed[a:b, n_past : n_past + n_shared] |= a >= n_shared  # a segment sees the whole prompt
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None].to(device)


def score_candidates(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompt_messages: Messages,
    candidate_titles: Sequence[str],
    batch_size: int = 32,
    *,
    prefix: PromptPrefix | None = None,
) -> ScoreResult:
    """Score candidates against the prompt, the prompt computed once: one forward pass per user.

    One row is packed: the prompt (after ``prefix``, when that is a prefix of this prompt, whose
    KV cache then stands in for those tokens) followed by up to ``batch_size`` candidates, each
    with position ids continuing after the prompt and a 4D attention mask that lets a candidate
    see the prompt and its own earlier tokens only. No padding is computed and the prompt's cache
    is never copied per candidate. More candidates than ``batch_size`` continue from the prompt's
    KV cache in further packed rows.

    Args:
        model: a causal LM that returns a ``transformers`` ``Cache`` (transformers or peft) and
            uses SDPA or eager attention; put in eval mode for the call.
        tokenizer: its tokenizer, with a chat template.
        prompt_messages: the user's prompt as chat messages.
        candidate_titles: the item titles to score.
        batch_size: candidates per forward pass.
        prefix: a shared prompt prefix from :func:`shared_prompt_prefix` (same model, same
            adapter state); ignored when it is not a prefix of this prompt.

    Returns:
        A :class:`ScoreResult` in the order of ``candidate_titles``; equal to
        :func:`score_candidates_naive` within float error.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not candidate_titles:
        return _empty()
    _check_attention(model)
    prompt_ids = encode_prompt(tokenizer, prompt_messages)
    completions = [encode_completion(tokenizer, prompt_messages, t) for t in candidate_titles]
    n_prompt = len(prompt_ids)
    device = _input_device(model)
    keep_supported = supports_logits_to_keep(model)
    use_prefix = prefix is not None and len(prefix) < n_prompt and tuple(prompt_ids[: len(prefix)]) == prefix.ids
    n_past = len(prefix) if use_prefix else 0
    past = prefix.kv if use_prefix else ()
    first_logprobs = None
    out: list[np.ndarray] = []
    with eval_mode(model), torch.inference_mode():
        for chunk_start in range(0, len(completions), batch_size):
            chunk = completions[chunk_start : chunk_start + batch_size]
            # The rest of the prompt goes in the first row only; later rows continue from its cache.
            shared = prompt_ids[n_past:] if first_logprobs is None else []
            # Feed tokens 0..n-2 of each candidate: their logits predict tokens 1..n-1. The last
            # token's own logits would predict past the completion; the first token is predicted
            # by the prompt's last position.
            fed = [c[:-1] for c in chunk]
            segments = [len(f) for f in fed]
            row = shared + [t for f in fed for t in f]
            if not row:  # every candidate is one token and the prompt is already cached
                rest = np.zeros(0)
            else:
                positions = list(range(n_past, n_past + len(shared))) + [
                    n_prompt + j for length in segments for j in range(length)
                ]
                # Logits where they are needed: the prompt's last position, every fed candidate token.
                needed = torch.zeros((1, len(row)), dtype=torch.bool, device=device)
                if shared:
                    needed[0, len(shared) - 1] = True
                needed[0, len(shared) :] = True
                dtype = past[0][0].dtype if past else _base_of(model).dtype
                result = model(
                    input_ids=torch.tensor([row], dtype=torch.long, device=device),
                    attention_mask=_packed_mask(n_past, len(shared), segments, dtype, device),
                    position_ids=torch.tensor([positions], dtype=torch.long, device=device),
                    past_key_values=_new_cache(model, past) if past else None,
                    use_cache=bool(shared) and chunk_start + batch_size < len(completions),
                    **({"logits_to_keep": needed} if keep_supported else {}),
                )
                logits = result.logits if keep_supported else result.logits[needed]
                logits = logits.reshape(-1, logits.shape[-1])
                if shared:
                    last = logits[0].float()
                    first_logprobs = last - torch.logsumexp(last, dim=-1)
                    logits = logits[1:]
                    if result.past_key_values is not None:  # keep the prompt's KV for the next rows
                        past = tuple((k[:, :, :n_prompt], v[:, :, :n_prompt]) for k, v in _cache_kv(result.past_key_values, model))
                        n_past = n_prompt
                targets = torch.tensor([t for c in chunk for t in c[1:]], dtype=torch.long, device=device)
                rest = _token_logprobs(logits, targets).double().cpu().numpy() if len(targets) else np.zeros(0)
                del result, logits
            firsts = first_logprobs[torch.tensor([c[0] for c in chunk], device=device)].double().cpu().numpy()
            at = 0
            for i, length in enumerate(segments):
                out.append(np.concatenate([[firsts[i]], rest[at : at + length]]))
                at += length
    return _result(out)
