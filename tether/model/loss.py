"""The training loss: cross-entropy on labelled tokens, KL to the base model on distilled ones.

A batch (from :class:`tether.model.train.CompletionCollator`) holds ``labels``: ``-100`` where
nothing is learned, the token id where something is. An optional boolean ``distill_mask``
(aligned with ``labels``) says which of those labelled tokens are learned by distillation
instead of by their id (Learning without Forgetting, :mod:`tether.model.distill`): at such a
token the loss is KL(base || model) between the base model's next-token distribution and the
model's, the base being the same peft model with its adapter disabled, run once more without
gradients on just the rows that have distilled tokens. Everything else gets the usual
cross-entropy. Logits at position ``t`` predict token ``t + 1``; only positions that predict a
labelled token go through the 49k-vocabulary output layer (a boolean ``logits_to_keep``), for
the model and for the base alike. A batch whose rows share a prompt prefix (``prefix_ids``,
``prefix_rows``) runs it once (:mod:`tether.model.prefix`); labels cover the rows' own tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from tether.chat import IGNORE_INDEX  # noqa: F401 - the label convention, re-exported here
from tether.model import prefix
from tether.model.device import supports_logits_to_keep, unwrap_ddp

def _targets(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shifted labels, mask of positions that predict a label)``, both ``[B, T-1]``."""
    shifted = batch["labels"][:, 1:]
    if "attention_mask" in batch:
        # A row's first real token has no real position before it (a pad, or nothing): not a target.
        shifted = shifted.masked_fill(batch["attention_mask"][:, :-1] == 0, IGNORE_INDEX)
    return shifted, shifted != IGNORE_INDEX


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "prefix_ids", "prefix_rows") if k in batch}


def _logits_at(model: Any, inputs: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """Logits at ``positions`` (``[B, T-1]`` bool), flattened row-major: ``[n, V]``."""
    if supports_logits_to_keep(model):
        keep = torch.zeros(positions.shape[0], positions.shape[1] + 1, dtype=torch.bool, device=positions.device)
        keep[:, :-1] = positions
        return prefix.forward(model, inputs, logits_to_keep=keep).logits
    return prefix.forward(model, inputs).logits[:, :-1][positions]


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Summed KL(teacher || student) over positions (``[n, V]`` logits each), in float32."""
    t_logp = torch.log_softmax(teacher_logits.float(), dim=-1)
    s_logp = torch.log_softmax(student_logits.float(), dim=-1)
    return (t_logp.exp() * (t_logp - s_logp)).sum()


def _teacher_logits(model: Any, batch: dict[str, torch.Tensor], kl_positions: torch.Tensor) -> torch.Tensor:
    """The base model's logits at ``kl_positions``: the adapter disabled, no gradients, only rows that need it."""
    peft_model = unwrap_ddp(model)
    if not hasattr(peft_model, "disable_adapter"):
        raise TypeError("distillation needs a peft model: the base is the same model with its adapter disabled")
    rows = kl_positions.any(dim=1)
    if "prefix_rows" in batch and bool((rows & batch["prefix_rows"]).any()):
        raise ValueError("a row that shares the prompt prefix has distilled tokens (tether.model.prefix.shares_prefix refuses those)")
    # Distilled rows never share the prefix: their own tokens are the whole row.
    inputs = {k: v[rows] for k, v in _inputs(batch).items() if k not in ("prefix_ids", "prefix_rows")}
    with torch.no_grad(), peft_model.disable_adapter():
        return _logits_at(peft_model, inputs, kl_positions[rows])


def completion_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], distill_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over the labelled tokens, with the output layer only where it is needed.

    Cross-entropy for labelled tokens outside ``batch["distill_mask"]``; ``distill_weight`` x
    KL(base || model) for those inside it (see the module docstring).

    Args:
        model: a causal LM (plain, peft-wrapped or DDP-wrapped; peft when anything is distilled).
        batch: ``input_ids``, ``attention_mask``, ``labels``; optionally ``position_ids`` and
            ``distill_mask``.
        distill_weight: weight of a distilled token's KL against a labelled token's cross-entropy.

    Returns:
        ``(sum of token losses, number of labelled tokens)``; divide for the mean.
    """
    shifted, targets_mask = _targets(batch)
    n_tokens = targets_mask.sum()
    inputs = _inputs(batch)
    if n_tokens.item() == 0:
        out = prefix.forward(model, inputs)
        return out.logits.sum() * 0.0, n_tokens
    logits = _logits_at(model, inputs, targets_mask)
    targets = shifted[targets_mask]
    distill = batch.get("distill_mask")
    if distill is None or not bool(distill.any()):
        loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        return loss, n_tokens
    kl_positions = distill[:, 1:].bool() & targets_mask
    kl_flat = kl_positions[targets_mask]  # which of the kept logits (row-major) are distilled
    teacher = _teacher_logits(model, batch, kl_positions)
    ce_sum = torch.nn.functional.cross_entropy(logits[~kl_flat].float(), targets[~kl_flat], reduction="sum") \
        if bool((~kl_flat).any()) else logits.sum() * 0.0
    return ce_sum + distill_weight * kl_to_teacher(logits[kl_flat], teacher), n_tokens


def completion_token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: ``(summed NLL of the labelled tokens, their count)``, float64 sums and int64 counts."""
    shifted, targets_mask = _targets(batch)
    counts = targets_mask.sum(dim=1)
    sums = torch.zeros(targets_mask.shape[0], dtype=torch.float64, device=targets_mask.device)
    if int(counts.sum()) == 0:
        return sums, counts
    logits = _logits_at(model, _inputs(batch), targets_mask)
    nll = torch.nn.functional.cross_entropy(logits.float(), shifted[targets_mask], reduction="none")
    row_of = targets_mask.nonzero(as_tuple=True)[0]  # row-major, like the flattened logits
    return sums.index_add(0, row_of, nll.double()), counts
