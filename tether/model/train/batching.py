"""Batches for the Trainer: features as a dataset, left-padding collation, a seeded length-grouped order.

Left padding puts every row's completion at the end and explicit position ids make a padded row
compute exactly like the unpadded sequence, so :func:`tether.model.loss.completion_loss` needs
logits only where labels are. Grouping rows of similar length into batches cuts padding (random
order 24%, the pipeline 1.2% in docs/decisions.md's benchmark); the seeded order makes a resumed
run see the same batches. :func:`evaluate_loss` scores features with the same collation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from tether.model.loss import IGNORE_INDEX, completion_loss
from tether.model.prefix import shares_prefix, strip_prefix


class FeatureDataset(Dataset):
    """A list of ``{"input_ids", "labels"}`` dicts as a map-style dataset."""

    def __init__(self, features: Sequence[dict[str, list[int]]]) -> None:
        self.features = list(features)
        self.lengths = [len(f["input_ids"]) for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]


class CompletionCollator:
    """Dynamic padding to the longest row of the batch, on the left, with explicit position ids.

    Left padding puts every row's completion at the end, so the loss needs logits for only the
    last ``k`` columns. Position ids count real tokens only, so a left-padded row is computed
    exactly like the unpadded sequence. Rows with a ``distill_mask`` (replay rows in distill mode)
    make the batch carry a boolean ``distill_mask`` (False for every other row and the padding).

    With a ``prefix`` (:func:`tether.model.prefix.shared_prefix`), the rows that share it are
    collated without it, their positions starting after it, and the batch carries ``prefix_ids``
    (``[1, P]``) and ``prefix_rows`` (``[B]`` bool) for :func:`tether.model.prefix.forward`, which
    computes it once for the batch.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, prefix: Sequence[int] = ()) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.prefix = list(prefix)

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        if self.prefix:
            shares = [shares_prefix(f, self.prefix) for f in features]
            if any(shares):
                p = len(self.prefix)
                batch = self._pad([strip_prefix(f, p) if s else f for f, s in zip(features, shares)])
                batch["prefix_rows"] = torch.tensor(shares, dtype=torch.bool)
                batch["position_ids"] += batch["prefix_rows"][:, None].long() * p
                batch["prefix_ids"] = torch.tensor([self.prefix], dtype=torch.long)
                return batch
        return self._pad(features)

    def _pad(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, longest), dtype=torch.long)
        distill = torch.zeros((n, longest), dtype=torch.bool) if any("distill_mask" in f for f in features) else None
        for i, f in enumerate(features):
            length = len(f["input_ids"])
            input_ids[i, longest - length :] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, longest - length :] = torch.tensor(f["labels"], dtype=torch.long)
            # Nothing predicts a row's first token: never a target. Ignored here too, so the Trainer's
            # count of labelled tokens (its loss normaliser) is the loss's own count.
            labels[i, longest - length] = IGNORE_INDEX
            attention_mask[i, longest - length :] = 1
            if distill is not None and "distill_mask" in f:
                distill[i, longest - length :] = torch.tensor(f["distill_mask"], dtype=torch.bool)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "labels": labels}
        if distill is not None:
            batch["distill_mask"] = distill
        return batch


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    features: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    batch_size: int = 16,
) -> float:
    """Mean completion-token cross-entropy of ``model`` over ``features`` (token-weighted).

    Batches are formed in length order (less padding); the result does not depend on it.
    Wrap the call in ``with peft_model.disable_adapter():`` to score the base model.
    """
    if not features:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = CompletionCollator(pad_token_id)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([features[i] for i in order[start : start + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        s, n = completion_loss(model, batch)
        total += float(s)
        count += int(n)
    model.train(was_training)
    return total / max(count, 1)


class SeededLengthGroupedSampler(Sampler[int]):
    """Groups examples of similar length into batches, in a random but reproducible order.

    Each epoch: shuffle with ``seed + epoch``, sort within mega-batches of 50 batches by length,
    cut into batches, shuffle the batch order. Seeding per epoch (the Trainer calls ``set_epoch``)
    makes the order identical after a resume, so a resumed run sees the same batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        mega = self.batch_size * 50
        batches: list[list[int]] = []
        for start in range(0, len(perm), mega):
            group = sorted(perm[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [group[k : k + self.batch_size] for k in range(0, len(group), self.batch_size)]
        order = torch.randperm(len(batches), generator=g).tolist()
        return iter(i for b in order for i in batches[b])


class FixedOrderSampler(Sampler[int]):
    """The given order, every epoch (validation batches in length order: little padding)."""

    def __init__(self, order: list[int]) -> None:
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

