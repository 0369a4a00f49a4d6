"""LoRA fine-tuning with the Hugging Face Trainer: loss on completion tokens only.

The pieces, bottom-up (each usable on its own, and from tests with a tiny model):

* :func:`tether.chat.encode_example` renders an example with the tokenizer's chat template and
  labels exactly the completion tokens (title + end-of-turn). Scoring encodes a candidate with the
  same functions, so training and scoring see identical token sequences.
* :class:`CompletionCollator` pads dynamically on the *left* and passes explicit position ids,
  so a left-padded row is computed exactly like the unpadded sequence. :func:`completion_loss`
  then asks the model for logits at only the positions that predict a label (a boolean
  ``logits_to_keep``, a standard argument of Hugging Face causal LMs): the 49k-vocabulary
  output layer runs on the completion tokens (and replay text) instead of every prompt token,
  through the model's own ``forward``, so peft, DDP and model-specific logit processing keep
  working. ``bench/bench_train.py`` measures what this buys against the stock recipe.
* :class:`CompletionTrainer` is the Trainer with that loss, a token-weighted validation loss,
  and a seeded length-grouped sampler that is reproducible across a crash and ``resume``.
* :func:`fit` trains a model on encoded features; :func:`train` is the pipeline stage: reads the
  example JSONL, loads the base model, mixes replay text, trains, evaluates adapter and base on
  the same validation examples, saves the adapter and logs everything to MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch.utils.data import Dataset, Sampler

# Re-exported: the chat encoding, the loss and the replay rows live in their own modules, callers
# import them from here too.
from tether.chat import EncodedExample, encode_example, encode_examples  # noqa: F401
from tether.chat import example_messages as _messages  # noqa: F401
from tether.model.loss import IGNORE_INDEX, completion_loss, completion_token_nll  # noqa: F401
from tether.model.replay import (  # noqa: F401
    TrainDataError,
    build_replay_chunks,
    chat_rows,
    check_replay_disjoint,
    check_replay_vs_panel,
    distill_prompt_tokens,
    mix_replay,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tether.config import TetherConfig, TrainConfig

log = logging.getLogger(__name__)

ADAPTER_SUBDIR = "adapter"


# --------------------------------------------------------------------------- encoding


def read_examples(path: Path) -> list[dict[str, Any]]:
    """Read an example JSONL file (docs/CONVENTIONS.md); raises naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise TrainDataError(f"{path}: no such file; run the prepare stage first (tether data prepare)")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TrainDataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


# --------------------------------------------------------------------------- batching and loss


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
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
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


# --------------------------------------------------------------------------- LoRA


def resolve_layers(spec: list[int] | str | None, num_layers: int) -> list[int] | None:
    """Layer indices for LoRA: ``"upper_half"`` -> the upper half, ``"all"``/None -> None (every layer).

    Raises:
        ValueError: an index outside ``0 .. num_layers - 1``.
    """
    if spec is None or spec == "all":
        return None
    if spec == "upper_half":
        return list(range(num_layers // 2, num_layers))
    bad = [i for i in spec if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"train.layers_to_transform: layers {bad} do not exist; the model has {num_layers} (0..{num_layers - 1})")
    return sorted(spec)


def build_lora_model(model: "PreTrainedModel", train_cfg: "TrainConfig", seed: int | None = None):
    """Wrap ``model`` with fresh LoRA adapters as configured; only LoRA weights require grad.

    Args:
        model: a Hugging Face causal LM.
        train_cfg: the ``train`` config section.
        seed: seeds the adapter initialisation (None: leave the RNG as it is).

    Returns:
        The ``peft`` model.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import set_seed

    num_layers = model.config.num_hidden_layers
    layers = resolve_layers(train_cfg.layers_to_transform, num_layers)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in train_cfg.target_modules if m not in present]
    if missing:
        raise ValueError(
            f"train.target_modules {missing} are not modules of {type(model).__name__}; "
            f"linear layers it has include: {sorted(n for n in present if n.endswith('proj'))[:12]}"
        )
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=train_cfg.lora_rank,
        lora_alpha=train_cfg.lora_alpha,
        lora_dropout=train_cfg.lora_dropout,
        target_modules=list(train_cfg.target_modules),
        layers_to_transform=layers,
        bias="none",
    )
    if seed is not None:
        set_seed(seed)
    peft_model = get_peft_model(model, lora)
    return peft_model


# --------------------------------------------------------------------------- Trainer


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

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        mega = self.batch_size * 50
        batches: list[list[int]] = []
        for start in range(0, len(perm), mega):
            group = sorted(perm[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [group[k : k + self.batch_size] for k in range(0, len(group), self.batch_size)]
        order = torch.randperm(len(batches), generator=g).tolist()
        return iter(i for b in order for i in batches[b])


class _FixedOrderSampler(Sampler[int]):
    def __init__(self, order: list[int]) -> None:
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        return iter(self.order)


def _trainer_class():
    from transformers import Trainer
    from transformers.trainer_utils import EvalLoopOutput

    class CompletionTrainer(Trainer):
        """The HF Trainer with the completion-only loss and a token-weighted validation loss."""

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

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.group_by_length and isinstance(dataset, FeatureDataset):
                return SeededLengthGroupedSampler(dataset.lengths, self.args.per_device_train_batch_size, self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            if isinstance(eval_dataset, FeatureDataset):
                return _FixedOrderSampler(sorted(range(len(eval_dataset)), key=eval_dataset.lengths.__getitem__))
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

    return CompletionTrainer


def _callback_classes():
    from transformers import TrainerCallback

    class StepMetrics(TrainerCallback):
        """Collects the loss curves and real-token throughput; forwards each log to MLflow / ``on_log``.

        Throughput counts non-padding tokens and only the time inside training steps (evaluation
        and checkpoint time excluded).
        """

        def __init__(self, on_log: Callable[[int, dict[str, float]], None] | None = None, mlflow_run_id: str | None = None):
            self.on_log_fn = on_log
            self.mlflow_run_id = mlflow_run_id
            self.train_loss: list[tuple[int, float]] = []
            self.eval_loss: list[tuple[int, float]] = []
            self.step_seconds = 0.0
            self.step_tokens = 0
            self._t0: float | None = None
            self._seen = 0
            self._window = [0.0, 0]  # seconds, tokens since the last log

        def on_train_begin(self, args, state, control, **kwargs):
            self._seen = state.num_input_tokens_seen

        def on_step_begin(self, args, state, control, **kwargs):
            if self._t0 is None:
                self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            dt = time.perf_counter() - (self._t0 or time.perf_counter())
            self._t0 = None
            tokens = state.num_input_tokens_seen - self._seen
            self._seen = state.num_input_tokens_seen
            self.step_seconds += dt
            self.step_tokens += tokens
            self._window[0] += dt
            self._window[1] += tokens

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            step = state.global_step
            metrics: dict[str, float] = {}
            if "loss" in logs:
                metrics["loss"] = float(logs["loss"])
                self.train_loss.append((step, metrics["loss"]))
                if self._window[0] > 0:
                    metrics["tokens_per_second"] = self._window[1] / self._window[0]
                self._window = [0.0, 0]
            if "eval_loss" in logs:
                metrics["eval_loss"] = float(logs["eval_loss"])
                self.eval_loss.append((step, metrics["eval_loss"]))
            for key in ("learning_rate", "grad_norm"):
                if key in logs:
                    metrics[key] = float(logs[key])
            if not metrics:
                return
            if self.mlflow_run_id:
                import mlflow

                mlflow.MlflowClient().log_batch(
                    self.mlflow_run_id,
                    metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), step) for k, v in metrics.items()],
                )
            if self.on_log_fn:
                self.on_log_fn(step, metrics)

    return StepMetrics


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    model: Any
    steps: int
    train_loss: list[tuple[int, float]]
    eval_loss: list[tuple[int, float]]
    tokens_per_second: float
    train_seconds: float
    best_checkpoint: str | None
    stopped_early: bool
    resumed_from: str | None


def _checkpoint_complete(path: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last: a folder without a readable one was cut short
    (a process killed mid-save, or a rotation killed mid-delete)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest *complete* ``checkpoint-N`` folder in ``output_dir`` (None if there is none).

    A process killed while saving (``kill -9``, OOM, preemption) leaves ``checkpoint-N`` without its
    ``trainer_state.json``; the Trainer's own ``get_last_checkpoint`` would pick it and the resume would
    fail. Such folders are skipped with a warning (and left in place for a post-mortem).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = []
    for p in output_dir.glob("checkpoint-*"):
        suffix = p.name.removeprefix("checkpoint-")
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    for _, path in sorted(found, reverse=True):
        if _checkpoint_complete(path):
            return str(path)
        log.warning("%s is incomplete (no readable trainer_state.json; the process died while saving): skipped", path)
    return None


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
        train_features: ``{"input_ids", "labels"}`` dicts (see :func:`encode_examples`).
        eval_features: validation features (None/empty: no evaluation, no early stopping).
        train_cfg: the ``train`` config section.
        output_dir: checkpoints go to ``output_dir/checkpoint-N``.
        seed: seeds adapter init, dropout and data order.
        device: ``cpu`` or ``cuda[:i]``.
        dtype: the model's dtype; bf16 turns on the Trainer's bf16 autocast.
        resume: continue from the newest checkpoint in ``output_dir`` if there is one.
        callbacks: extra ``TrainerCallback`` objects.
        on_log: called with ``(step, metrics)`` at every log.
        mlflow_run_id: when given, step metrics are logged to this MLflow run.

    Returns:
        The trained peft model (best checkpoint restored when early stopping is on) and its curves.
    """
    from peft import PeftModel
    from transformers import EarlyStoppingCallback, PrinterCallback, TrainingArguments, set_seed

    output_dir = Path(output_dir)
    resume_from = last_checkpoint(output_dir) if resume else None
    if resume and resume_from is None:
        log.warning("resume requested but %s has no checkpoint: starting from scratch", output_dir)
    if not resume and is_main_process():  # one process deletes; the others' Trainer setup waits for it
        stale = sorted(output_dir.glob("checkpoint-*")) if output_dir.is_dir() else []
        if stale:
            log.warning("starting a fresh run: removing %d old checkpoints in %s", len(stale), output_dir)
            for path in stale:
                shutil.rmtree(path)
    output_dir.mkdir(parents=True, exist_ok=True)

    set_seed(seed)
    peft_model = model if isinstance(model, PeftModel) else build_lora_model(model, train_cfg, seed=seed)
    has_eval = bool(eval_features)
    early = has_eval and train_cfg.early_stopping_patience is not None
    use_cpu = not str(device).startswith("cuda")
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=train_cfg.batch_size,
        per_device_eval_batch_size=train_cfg.eval_batch_size,
        gradient_accumulation_steps=train_cfg.gradient_accumulation_steps,
        learning_rate=train_cfg.learning_rate,
        lr_scheduler_type=train_cfg.lr_scheduler,
        warmup_steps=train_cfg.warmup_steps,
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm,
        max_steps=train_cfg.max_steps if train_cfg.max_steps is not None else -1,
        num_train_epochs=train_cfg.num_epochs,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=train_cfg.eval_every if has_eval else None,
        save_strategy="steps",
        save_steps=train_cfg.save_every,
        save_total_limit=train_cfg.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        bf16=(not use_cpu) and dtype == torch.bfloat16,
        report_to="none",  # MLflow is logged by StepMetrics, with lineage, not by the built-in integration
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        # No Trainer bar: its ProgressCallback writes a dict of every log beside the bar. The one
        # line per logged step is StepMetrics' on_log (tether.console.format_step in the CLI / flow).
        disable_tqdm=True,
    )
    metrics_cb = _callback_classes()(on_log=on_log, mlflow_run_id=mlflow_run_id)
    cbs = [metrics_cb, *callbacks]
    if early:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=train_cfg.early_stopping_patience))
    trainer = _trainer_class()(
        model=peft_model,
        args=args,
        train_dataset=FeatureDataset(train_features),
        eval_dataset=FeatureDataset(eval_features) if has_eval else None,
        data_collator=CompletionCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=cbs,
        group_by_length=train_cfg.group_by_length,
        distill_weight=train_cfg.replay.distill_weight,
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm's stand-in: print(dict) of every log, a duplicate
    started = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume_from)
    elapsed = time.perf_counter() - started
    max_steps = trainer.state.max_steps
    stopped_early = early and trainer.state.global_step < max_steps
    tps = metrics_cb.step_tokens / metrics_cb.step_seconds if metrics_cb.step_seconds else float("nan")
    return FitResult(
        model=trainer.model,
        steps=int(out.global_step),
        train_loss=metrics_cb.train_loss,
        eval_loss=metrics_cb.eval_loss,
        tokens_per_second=tps,
        train_seconds=elapsed,
        best_checkpoint=trainer.state.best_model_checkpoint,
        stopped_early=bool(stopped_early),
        resumed_from=resume_from,
    )


def save_adapter(peft_model: Any, tokenizer: "PreTrainedTokenizerBase", adapter_dir: Path) -> Path:
    """Save the adapter (``adapter_model.safetensors`` + ``adapter_config.json``) and the tokenizer."""
    adapter_dir = Path(adapter_dir)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    peft_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(adapter_dir))
    if not (adapter_dir / "adapter_model.safetensors").exists():
        raise RuntimeError(f"{adapter_dir}: peft did not write adapter_model.safetensors")
    return adapter_dir


# --------------------------------------------------------------------------- several processes (DDP)


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process under torchrun / accelerate (``(0, 1)`` when alone).

    Read from the launcher's environment, so it is known before the Trainer forms the process group.
    """
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process logs to MLflow and writes the adapter (rank 0, or a single process)."""
    return process_rank()[0] == 0


def wait_for_everyone() -> None:
    """A barrier across the training processes; a no-op without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# --------------------------------------------------------------------------- the stage


@dataclass
class TrainResult:
    """What :func:`train` returns (all plain values, safe to pass between Prefect tasks)."""

    adapter_dir: Path
    output_dir: Path
    steps: int
    train_loss: list[tuple[int, float]]
    eval_loss_history: list[tuple[int, float]]
    eval_loss: float
    base_eval_loss: float
    tokens_per_second: float
    train_seconds: float
    device: str
    mlflow_run_id: str | None
    base_model: str
    base_model_hash: str
    n_train_examples: int
    n_replay_chunks: int
    n_eval_examples: int
    stopped_early: bool
    resumed_from: str | None = None
    selection: dict[str, Any] | None = None  # tether.selection.SelectionResult.to_dict(): trials and the chosen one

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapter_dir"], d["output_dir"] = str(self.adapter_dir), str(self.output_dir)
        return d


RUN_MARKER = "mlflow_run.json"  # in the output dir: the MLflow run that is training into it


def _remember_run(output_dir: Path, run_id: str | None) -> None:
    """Record which MLflow run trains into ``output_dir``, so a resume can close it if it was killed."""
    if run_id is None:
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / RUN_MARKER).write_text(json.dumps({"run_id": run_id}) + "\n", encoding="utf-8")


def _close_interrupted_run(output_dir: Path, new_run_id: str | None) -> None:
    """On ``--resume``: the run that was training into ``output_dir`` died without ending its MLflow
    run (kill -9, OOM, a lost machine). Mark it KILLED and link the two runs both ways."""
    import mlflow

    marker = Path(output_dir) / RUN_MARKER
    try:
        old_id = json.loads(marker.read_text(encoding="utf-8"))["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no marker (older output dir): nothing to close
    if not old_id or old_id == new_run_id:
        return
    client = mlflow.MlflowClient()
    try:
        old = client.get_run(old_id)
    except Exception as exc:  # noqa: BLE001 - another store, or deleted: nothing to close here
        log.info("interrupted run %s not found in this tracking store (%s); nothing to close", old_id, exc)
        return
    mlflow.set_tag("resumes_run", old_id)
    if old.info.status == "RUNNING":
        client.set_tag(old_id, "resumed_by", new_run_id or "")
        client.set_terminated(old_id, status="KILLED")
        log.info("interrupted MLflow run %s marked KILLED; resumed by %s", old_id, new_run_id)


def _load_model(cfg: "TetherConfig", model_dir: Path | None):
    """(model, tokenizer, base model name, content hash, device, dtype)."""
    from tether.model.base import content_hash_of, load_base_model, pick_device, weight_files

    if model_dir is None:
        model, tokenizer, resolved = load_base_model(cfg.model)
        device = str(next(model.parameters()).device)
        return model, tokenizer, resolved.name, resolved.content_hash, device, next(model.parameters()).dtype
    from transformers import AutoModelForCausalLM, AutoTokenizer

    auto_device, auto_dtype = pick_device()
    device = auto_device if cfg.model.device == "auto" else cfg.model.device
    dtype = auto_dtype if device.startswith("cuda") else torch.float32
    if cfg.model.dtype != "auto":
        dtype = getattr(torch, cfg.model.dtype)
    model_dir = Path(model_dir)
    # Same safety as load_base_model: safetensors only, model code only when the config trusts it.
    trust = cfg.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, local_files_only=True, use_safetensors=True, trust_remote_code=trust
    ).to(device)
    return model, tokenizer, str(model_dir.resolve()), content_hash_of(weight_files(model_dir)), device, dtype


def _result_from_json(path: Path) -> TrainResult:
    """The main process's :class:`TrainResult`, read back by the other training processes."""
    d = json.loads(Path(path).read_text())
    d["adapter_dir"], d["output_dir"] = Path(d["adapter_dir"]), Path(d["output_dir"])
    d["train_loss"] = [tuple(x) for x in d["train_loss"]]
    d["eval_loss_history"] = [tuple(x) for x in d["eval_loss_history"]]
    return TrainResult(**d)


def _subsample(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    if n is None or len(rows) <= n:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def train(
    cfg: "TetherConfig",
    root: Path,
    resume: bool = False,
    model_dir: Path | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """The fine-tune stage: LoRA on ``data/processed/train.jsonl``, tracked in MLflow.

    Steps: read train/validation examples; load the base model (``model_dir`` or
    ``cfg.model``); encode with the chat template; mix replay text if ``train.replay.ratio > 0``
    (refusing a replay corpus that overlaps the held-out one); train with evaluation, early
    stopping and checkpoints in ``train.output_dir``; save the adapter to
    ``<output_dir>/adapter``; score adapter and base (``disable_adapter``) on the same validation
    examples; log params, step metrics, the loss plot, the adapter, the resolved config and lineage
    tags to MLflow.

    Args:
        cfg: the config.
        root: the project root (data paths, output dir, MLflow store are relative to it).
        resume: continue from the newest checkpoint in the output dir (after a crash).
        model_dir: a Hugging Face model directory to train instead of ``cfg.model`` (tests, tools).
        on_log: called with ``(step, metrics)`` at every log (progress for CLI/Prefect).
        callbacks: extra ``TrainerCallback`` objects.

    Returns:
        The :class:`TrainResult`.
    """
    import mlflow
    import yaml

    from tether.secrets import redact_tree
    from tether.tracking import flatten_params, lineage_tags, loss_plot, setup_tracking

    root = Path(root).resolve()
    tc = cfg.train
    seed = tc.seed if tc.seed is not None else cfg.seed
    paths = cfg.paths.resolved(root)
    train_rows = read_examples(paths.processed_dir / "train.jsonl")
    if not train_rows:
        raise TrainDataError(f"{paths.processed_dir / 'train.jsonl'}: no training examples")
    val_path = paths.processed_dir / "validation.jsonl"
    val_rows = read_examples(val_path) if val_path.exists() else []
    if not val_rows:
        log.warning("%s is missing or empty: training without validation or early stopping", val_path)
    val_rows = _subsample(val_rows, tc.eval_max_examples, seed)

    # The drift panel is read before the model is loaded: a bad source fails in seconds, not after
    # training; replay must share no folder and no paragraph with anything the gate measures.
    from tether.eval.panel import load_text_sources, panel_folders

    text_sources = load_text_sources(cfg, root)
    replay_dir = tc.replay.corpus_dir if tc.replay.corpus_dir.is_absolute() else root / tc.replay.corpus_dir
    if tc.replay.ratio > 0:
        check_replay_vs_panel(replay_dir, list(text_sources.values()), panel_folders(cfg, root))

    model, tokenizer, base_name, base_hash, device, dtype = _load_model(cfg, model_dir)
    task_features = encode_examples(tokenizer, train_rows, tc.max_length)
    distill = tc.replay.mode == "distill"
    if distill and tc.replay.distill_prompts:
        task_features = distill_prompt_tokens(task_features)
    replay_rows: list[dict[str, list[int]]] = []
    n_chat = 0
    if tc.replay.ratio > 0:
        replay_rows = build_replay_chunks(tokenizer, replay_dir, min(tc.replay.chunk_tokens, tc.max_length), distill=distill)
        if distill and tc.replay.chat_samples:
            from tether.eval.selfsamples import cached_samples

            samples, _ = cached_samples(
                model, tokenizer, split="train", n_samples=tc.replay.chat_samples,
                max_new_tokens=tc.replay.chat_max_new_tokens, seed=seed, base_hash=base_hash,
                cache_dir=cfg.model.resolved_cache_dir(), device=device, dtype=str(dtype),
            )
            chat = chat_rows(samples, tc.max_length)
            n_chat = len(chat)
            replay_rows += chat
    train_features = mix_replay(task_features, replay_rows, tc.replay.ratio, seed)
    n_replay = len(train_features) - len(task_features)
    eval_features = encode_examples(tokenizer, val_rows, tc.max_length)
    log.info(
        "training on %d examples + %d replay rows (%s; pool: %d text chunks, %d chat answers of the base), "
        "validating on %d, device %s",
        len(task_features), n_replay, tc.replay.mode, len(replay_rows) - n_chat, n_chat, len(eval_features), device,
    )

    output_dir = tc.output_dir if tc.output_dir.is_absolute() else root / tc.output_dir
    # Under torchrun / accelerate every process runs this function; the Trainer shards the data and
    # averages gradients itself. Only the main process talks to MLflow and writes the adapter and
    # train_result.json; the others train, then wait for it and return what it wrote.
    rank, world = process_rank()
    main = rank == 0
    if world > 1:
        log.info("process %d of %d (%s)", rank, world, "main: logs to MLflow and saves the adapter" if main else "worker")
        if device.startswith("cuda"):
            import os

            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
            model.to(device)
    run_ctx: Any = contextlib.nullcontext(None)
    if main:
        setup_tracking(cfg, root)
        run_ctx = mlflow.start_run(run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}")
    with run_ctx as run:
        run_id = run.info.run_id if run is not None else None
        if main:
            tags = lineage_tags(cfg, root, base_hash)
            tags.update({"stage": "train", "base_model": base_name, "device": device, "world_size": str(world)})
            mlflow.set_tags(tags)
            params = flatten_params({"train": tc.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json")})
            params.update(
                {
                    "seed": str(seed),
                    "examples.history_length": str(cfg.examples.history_length),
                    "data.n_train_examples": str(len(task_features)),
                    "data.n_replay_chunks": str(n_replay),
                    "data.n_eval_examples": str(len(eval_features)),
                    "runtime.dtype": str(dtype).removeprefix("torch."),
                    "runtime.world_size": str(world),
                }
            )
            mlflow.log_params(params)
            # The resolved config holds the tracking URI, which may carry a password: redacted.
            resolved = redact_tree(cfg.model_dump(mode="json"))
            mlflow.log_text(yaml.safe_dump(resolved, sort_keys=False), "config/resolved.yaml")
            resuming_from = last_checkpoint(output_dir) if resume else None
            if resuming_from:
                mlflow.set_tag("resumed_from", Path(resuming_from).name)
                _close_interrupted_run(output_dir, run_id)
            _remember_run(output_dir, run_id)

        fitted = fit(
            model, tokenizer, train_features, eval_features, tc, output_dir,
            seed=seed, device=device, dtype=dtype, resume=resume,
            callbacks=callbacks, on_log=on_log if main else None, mlflow_run_id=run_id,
        )
        if not main:
            wait_for_everyone()  # the main process saves, evaluates and logs, then joins this barrier
            return _result_from_json(output_dir / "train_result.json")
        peft_model = fitted.model
        selection = None
        if tc.selection.enabled:
            from tether.selection import pareto_plot, run_selection

            chosen = run_selection(
                peft_model, tokenizer, cfg, root, output_dir, base_hash=base_hash, device=device, dtype=str(dtype),
                final_step=fitted.steps, text_sources=text_sources,
            )
            chosen.plot = str(pareto_plot(chosen, output_dir / "selection_pareto.png"))
            mlflow.log_artifact(chosen.plot, artifact_path="plots")
            mlflow.set_tags({"selection.step": str(chosen.chosen["step"]), "selection.scale": f"{chosen.chosen['scale']:g}",
                             "selection.feasible": str(chosen.feasible).lower()})
            selection = chosen.to_dict()
        adapter_dir = save_adapter(peft_model, tokenizer, output_dir / ADAPTER_SUBDIR)

        eval_loss = base_eval_loss = float("nan")
        if eval_features:
            eval_loss = evaluate_loss(peft_model, eval_features, tokenizer.pad_token_id, tc.eval_batch_size)
            with peft_model.disable_adapter():
                base_eval_loss = evaluate_loss(peft_model, eval_features, tokenizer.pad_token_id, tc.eval_batch_size)
            mlflow.log_metrics({"final_eval_loss": eval_loss, "base_eval_loss": base_eval_loss}, step=fitted.steps)
        mlflow.log_metrics(
            {"train_tokens_per_second": fitted.tokens_per_second, "train_seconds": fitted.train_seconds},
            step=fitted.steps,
        )
        fig = loss_plot(fitted.train_loss, fitted.eval_loss, base_eval_loss if eval_features else None)
        mlflow.log_figure(fig, "plots/loss.png")
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")

        result = TrainResult(
            adapter_dir=adapter_dir,
            output_dir=output_dir,
            steps=fitted.steps,
            train_loss=fitted.train_loss,
            eval_loss_history=fitted.eval_loss,
            eval_loss=eval_loss,
            base_eval_loss=base_eval_loss,
            tokens_per_second=fitted.tokens_per_second,
            train_seconds=fitted.train_seconds,
            device=device,
            mlflow_run_id=run_id,
            base_model=base_name,
            base_model_hash=base_hash,
            n_train_examples=len(task_features),
            n_replay_chunks=n_replay,
            n_eval_examples=len(eval_features),
            stopped_early=fitted.stopped_early,
            resumed_from=fitted.resumed_from,
            selection=selection,
        )
        (output_dir / "train_result.json").write_text(json.dumps(result.summary(), indent=2, default=str))
        mlflow.log_artifact(str(output_dir / "train_result.json"), artifact_path="train")
    wait_for_everyone()  # release the other processes: the adapter and train_result.json are written
    log.info(
        "trained %d steps in %.0f s (%.0f tokens/s on %s); validation loss %.4f (base %.4f)",
        fitted.steps, fitted.train_seconds, fitted.tokens_per_second, device, eval_loss, base_eval_loss,
    )
    return result
