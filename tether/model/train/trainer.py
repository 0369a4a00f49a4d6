"""The Hugging Face Trainer with the completion-only loss, a token-weighted validation loss and
reproducible batch orders.

Imports transformers at import time; :mod:`tether.model.train` loads this module only when it
trains, so reading examples or saving an adapter stays cheap to import.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from tether.model.loss import completion_loss
from tether.model.prefix import real_tokens
from tether.model.train.batching import FeatureDataset, FixedOrderSampler, SeededLengthGroupedSampler


class CompletionTrainer(Trainer):
    """The HF Trainer with the completion-only loss and a token-weighted validation loss.

    Args:
        group_by_length: train in :class:`SeededLengthGroupedSampler` order (less padding).
        distill_weight: the weight of the distillation term on replay rows that carry a
            ``distill_mask`` (see :func:`tether.model.loss.completion_loss`).
        *args, **kwargs: as for :class:`transformers.Trainer`.
    """

    # compute_loss normalises by the token count of the whole accumulated batch itself.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, group_by_length: bool = True, distill_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length
        self.distill_weight = distill_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum, n_tokens = completion_loss(model, inputs, self.distill_weight)
        if num_items_in_batch is not None:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        else:
            loss = loss_sum / (n_tokens.clamp(min=1) * self.current_gradient_accumulation_steps)
        return (loss, None) if return_outputs else loss

    def _track_num_input_tokens(self, inputs):
        # The Trainer counts attention_mask ones; a shared prefix is one row's columns but every
        # sharing row's tokens (tether.model.prefix.real_tokens), so tokens/s stays per real token.
        if self.args.include_num_input_tokens_seen != "non_padding" or "attention_mask" not in inputs:
            return super()._track_num_input_tokens(inputs)
        n = torch.as_tensor(real_tokens(inputs), device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += self.accelerator.gather(n).sum().item()

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.group_by_length and isinstance(dataset, FeatureDataset):
            return SeededLengthGroupedSampler(dataset.lengths, self.args.per_device_train_batch_size, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        if isinstance(eval_dataset, FeatureDataset):
            return FixedOrderSampler(sorted(range(len(eval_dataset)), key=eval_dataset.lengths.__getitem__))
        return super()._get_eval_sampler(eval_dataset)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        # Token-weighted mean over all validation completion tokens (the Trainer's default
        # averages per-batch means, which weights short batches more).
        model = self.model
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        with torch.no_grad():
            for batch in dataloader:
                batch = self._prepare_inputs(batch)
                with self.compute_loss_context_manager():
                    s, n = completion_loss(model, batch)
                totals += torch.stack([s.detach().double(), n.double()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        loss = float(totals[0] / totals[1].clamp(min=1))
        n_samples = len(dataloader.dataset) if hasattr(dataloader, "dataset") else 0
        return EvalLoopOutput(None, None, {f"{metric_key_prefix}_loss": loss}, n_samples)
