"""One LoRA fine-tune with the Trainer: its arguments from the ``train`` config, resume, curves.

:func:`fit` takes a model and encoded features and returns the trained peft model with its loss
curves and throughput; it knows nothing of files, MLflow runs or the pipeline (that is
:func:`tether.model.train.stage.train`). The Trainer, its callbacks and transformers itself are
imported when it runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from tether.model.device import training_precision
from tether.model.prefix import shared_prefix
from tether.model.train.batching import CompletionCollator, FeatureDataset
from tether.model.train.checkpoints import last_checkpoint, remove_checkpoints
from tether.model.train.distributed import is_main_process
from tether.model.train.lora import build_lora_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

    from tether.config import TrainConfig

log = logging.getLogger(__name__)

# TrainingArguments built from the train config. Not ``TrainingArguments(**train_cfg.model_dump())``:
# the config's names are the user's (params.yaml, documented there), not Hugging Face's, and the
# section holds LoRA, replay and selection settings the Trainer has no field for. This table is the
# one place the two vocabularies meet (Trainer argument <- config field).
ARGS_FROM_CONFIG: dict[str, str] = {
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "learning_rate": "learning_rate",
    "lr_scheduler_type": "lr_scheduler",
    "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "num_train_epochs": "num_epochs",
    "save_steps": "save_every",
    "save_total_limit": "save_total_limit",
}
# Fixed by how tether trains, whatever the config says.
FIXED_ARGS: dict[str, Any] = {
    "logging_strategy": "steps",
    "logging_steps": 1,
    "save_strategy": "steps",
    "report_to": "none",  # MLflow is logged by StepMetrics, with lineage, not by the built-in integration
    "remove_unused_columns": False,
    "include_num_input_tokens_seen": "non_padding",
    "dataloader_num_workers": 0,
    # No Trainer bar: its ProgressCallback writes a dict of every log beside the bar. The one
    # line per logged step is StepMetrics' on_log (tether.console.format_step in the CLI / flow).
    "disable_tqdm": True,
}


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    model: Any
    steps: int
    train_loss: list[tuple[int, float]]
    eval_loss: list[tuple[int, float]]
    tokens_per_second: float
    train_seconds: float
    stopped_early: bool
    resumed_from: str | None
    precision: str = "fp32"
    prefix_tokens: int = 0


def training_arguments(
    train_cfg: "TrainConfig",
    output_dir: Path,
    *,
    seed: int,
    use_cpu: bool,
    bf16: bool,
    has_eval: bool,
) -> "TrainingArguments":
    """The Trainer's arguments for one fine-tune.

    Args:
        train_cfg: the ``train`` config section (:data:`ARGS_FROM_CONFIG`).
        output_dir: where checkpoints go.
        seed: seeds dropout and the data order.
        use_cpu: train on the CPU.
        bf16: bf16 autocast (:func:`tether.model.device.training_precision`).
        has_eval: there are validation features: evaluate every ``eval_every`` steps, and with
            ``early_stopping_patience`` keep the best checkpoint by validation loss.
    """
    from transformers import TrainingArguments

    early = has_eval and train_cfg.early_stopping_patience is not None
    return TrainingArguments(
        output_dir=str(output_dir),
        **{arg: getattr(train_cfg, field) for arg, field in ARGS_FROM_CONFIG.items()},
        **FIXED_ARGS,
        max_steps=train_cfg.max_steps if train_cfg.max_steps is not None else -1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=train_cfg.eval_every if has_eval else None,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        bf16=bf16,
    )


def fit(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    train_features: Sequence[dict[str, list[int]]],
    eval_features: Sequence[dict[str, list[int]]] | None,
    train_cfg: "TrainConfig",
    output_dir: Path,
    *,
    seed: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    mlflow_run_id: str | None = None,
) -> FitResult:
    """Fine-tune ``model`` with LoRA on encoded features with the Hugging Face Trainer.

    Args:
        model: a base causal LM (wrapped with LoRA here) or an already built peft model.
        tokenizer: its tokenizer (pad id, saved with checkpoints).
        train_features: ``{"input_ids", "labels"}`` dicts (see :func:`tether.chat.encode_examples`).
        eval_features: validation features (None/empty: no evaluation, no early stopping).
        train_cfg: the ``train`` config section.
        output_dir: checkpoints go to ``output_dir/checkpoint-N``.
        seed: seeds adapter init, dropout and data order.
        device: ``cpu`` or ``cuda[:i]``.
        dtype: the model's dtype; with ``train.precision`` it decides bf16 autocast.
        resume: continue from the newest complete checkpoint in ``output_dir`` if there is one;
            otherwise old checkpoints there are deleted.
        callbacks: extra ``TrainerCallback`` objects.
        on_log: called with ``(step, metrics)`` at every log.
        mlflow_run_id: when given, step metrics are logged to this MLflow run.

    Returns:
        The trained peft model (best checkpoint restored when early stopping is on) and its curves.
    """
    from peft import PeftModel
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed

    from tether.model.train.callbacks import StepMetrics
    from tether.model.train.trainer import CompletionTrainer

    output_dir = Path(output_dir)
    use_cpu = not str(device).startswith("cuda")
    resume_from = last_checkpoint(output_dir) if resume else None
    if resume and resume_from is None:
        log.warning("resume requested but %s has no checkpoint: starting from scratch", output_dir)
    if not resume and is_main_process(cpu=use_cpu):  # one process deletes; the others' Trainer setup waits for it
        remove_checkpoints(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    set_seed(seed)
    peft_model = model if isinstance(model, PeftModel) else build_lora_model(model, train_cfg, seed=seed)
    has_eval = bool(eval_features)
    early = has_eval and train_cfg.early_stopping_patience is not None
    precision = training_precision(train_cfg.precision, device, dtype)
    autocast = precision.autocast
    prefix = shared_prefix(train_features) if train_cfg.share_prompt_prefix else []
    log.info("training precision: %s (%s); shared prompt prefix: %s", precision.name, precision.reason,
             f"{len(prefix)} tokens, computed once per batch" if prefix else "none")
    args = training_arguments(train_cfg, output_dir, seed=seed, use_cpu=use_cpu, bf16=autocast, has_eval=has_eval)
    metrics_cb = StepMetrics(on_log=on_log, mlflow_run_id=mlflow_run_id)
    cbs = [metrics_cb, *callbacks]
    if early:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=train_cfg.early_stopping_patience))
    trainer = CompletionTrainer(
        model=peft_model,
        args=args,
        train_dataset=FeatureDataset(train_features),
        eval_dataset=FeatureDataset(eval_features) if has_eval else None,
        data_collator=CompletionCollator(tokenizer.pad_token_id, prefix=prefix),
        processing_class=tokenizer,
        callbacks=cbs,
        group_by_length=train_cfg.group_by_length,
        distill_weight=train_cfg.replay.distill_weight,
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm's stand-in: print(dict) of every log, a duplicate
    started = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume_from)
    elapsed = time.perf_counter() - started
    stopped_early = early and trainer.state.global_step < trainer.state.max_steps
    trained = trainer.model
    if autocast:  # accelerate wrapped forward in bf16 autocast: what runs after training (selection, evaluation) runs in the model's dtype
        trained = trainer.accelerator.unwrap_model(trained, keep_fp32_wrapper=False)
    return FitResult(
        model=trained,
        steps=int(out.global_step),
        train_loss=metrics_cb.train_loss,
        eval_loss=metrics_cb.eval_loss,
        tokens_per_second=metrics_cb.tokens_per_second,
        train_seconds=elapsed,
        stopped_early=bool(stopped_early),
        resumed_from=resume_from,
        precision=precision.name,
        prefix_tokens=len(prefix),
    )
