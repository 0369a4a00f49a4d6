"""The shared prompt prefix: computed once per batch instead of once per row.

Every recommendation example starts with the same tokens: the chat template's system turn and the
start of the user message (48 tokens of the default prompt, about a third of a row). In a causal
model those tokens' hidden states depend on nothing after them, so they are the same in every row
of a batch. :class:`tether.model.train.CompletionCollator` strips the prefix from the rows that
share it; :func:`forward` runs the prefix once (batch of one, keeping its keys and values),
repeats its cache over the batch and runs the rows' own tokens after it. Gradients flow into the
prefix pass through the repeated cache, so the loss and gradients are those of the full rows
(tests/model/test_prefix.py compares them; bench/bench_levers.py measures the speed).

A row shares the prefix only when nothing is learned from it: its first ``P`` tokens are the
prefix, it has tokens after it, and no label or distilled token is predicted from inside it
(``labels[1 : P + 1]`` all ignored). Other rows (replay text, the base's chat answers) keep every
token and see none of the prefix (masked, positions from 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tether.chat import IGNORE_INDEX

if TYPE_CHECKING:  # torch is imported where a forward runs: finding a prefix stays cheap (scoring imports it)
    import torch

MIN_PREFIX_TOKENS = 8  # a shorter common prefix saves less than the second forward call costs

Feature = dict[str, list[int]]


def common_prefix(sequences: Sequence[Sequence[int]], min_tokens: int = MIN_PREFIX_TOKENS) -> list[int]:
    """The longest token prefix common to every sequence, cut one token short of the shortest.

    Every sequence keeps at least one token of its own after it. Empty when there are no sequences
    or the common prefix is shorter than ``min_tokens``. Training (:func:`shared_prefix`) and
    candidate scoring (:func:`tether.eval.scoring.packed.shared_prompt_prefix`) both use it.
    """
    if not sequences:
        return []
    first = sequences[0]
    n = min(len(s) for s in sequences) - 1
    for ids in sequences[1:]:
        n = next((j for j in range(n) if ids[j] != first[j]), n)
    return list(first[:n]) if n >= min_tokens else []


def shared_prefix(features: Sequence[Feature], min_tokens: int = MIN_PREFIX_TOKENS) -> list[int]:
    """The :func:`common_prefix` of the prompt rows (rows with an ignored label and no distilled token)."""
    return common_prefix(
        [f["input_ids"] for f in features if IGNORE_INDEX in f["labels"][1:] and not any(f.get("distill_mask", ()))],
        min_tokens,
    )


def shares_prefix(feature: Feature, prefix: Sequence[int]) -> bool:
    """Whether ``feature`` starts with ``prefix`` and learns nothing predicted from inside it."""
    p = len(prefix)
    ids = feature["input_ids"]
    if not p or len(ids) <= p or list(ids[:p]) != list(prefix):
        return False
    if any(label != IGNORE_INDEX for label in feature["labels"][1 : p + 1]):
        return False
    return not any(feature.get("distill_mask", [0] * (p + 1))[1 : p + 1])


def strip_prefix(feature: Feature, p: int) -> Feature:
    """The row without its first ``p`` tokens (every per-token list cut alike)."""
    return {k: v[p:] for k, v in feature.items()}


def forward(model: Any, inputs: dict[str, torch.Tensor], **kwargs: Any) -> Any:
    """``model(**inputs, **kwargs)``, with the batch's shared prefix (if any) computed once.

    ``inputs`` may hold ``prefix_ids`` (``[1, P]``) and ``prefix_rows`` (``[B]`` bool, the rows that
    share it; their ``position_ids`` already start at ``P``). ``logits_to_keep`` (a ``[B, T]`` mask)
    and the other keyword arguments apply to the rows' own tokens.
    """
    inputs = dict(inputs)
    prefix_ids, prefix_rows = inputs.pop("prefix_ids", None), inputs.pop("prefix_rows", None)
    if prefix_ids is None or not bool(prefix_rows.any()):
        return model(**inputs, use_cache=False, **kwargs)
    import torch
    from transformers import DynamicCache

    from tether.model.device import base_of, supports_logits_to_keep

    batch = inputs["input_ids"].shape[0]
    cache = DynamicCache(config=base_of(model).config)
    # The prefix's own logits predict nothing learned (shares_prefix): keep one, or none.
    skip = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    model(input_ids=prefix_ids, past_key_values=cache, use_cache=True, **skip)
    cache.batch_repeat_interleave(batch)
    # Rows that do not share it see none of the prefix: masked keys, positions from 0 (the collator's).
    seen = prefix_rows[:, None].expand(batch, prefix_ids.shape[1]).to(inputs["attention_mask"].dtype)
    inputs["attention_mask"] = torch.cat([seen, inputs["attention_mask"]], dim=1)
    return model(**inputs, past_key_values=cache, use_cache=True, **kwargs)


def real_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Non-padding tokens of a collated batch, the shared prefix counted once per row that shares it."""
    n = batch["attention_mask"].sum()
    if "prefix_ids" in batch:
        n = n + batch["prefix_ids"].shape[1] * batch["prefix_rows"].sum()
    return n
