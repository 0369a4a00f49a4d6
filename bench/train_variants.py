"""The training variants ``bench/bench_train.py`` compares, one function each (a helper, not a benchmark).

Every variant trains the same LoRA (rank, alpha, dropout, target modules, layers from
``params.yaml``), in float32, on the same rows, for the same number of optimizer steps of the
same batch size, with the same optimizer (AdamW, the configured lr and weight decay, linear decay
to 0, gradient clipping at ``max_grad_norm``). The rows are the default training mix: recommendation
examples (loss on the completion tokens) plus ``train.replay.ratio`` of general-text replay chunks
(loss on every token of the chunk), so all variants optimise one objective: the mean next-token
cross-entropy over the labelled tokens of the batch.

What differs is only how each tool gets there:

* ``pipeline``: :func:`tether.model.train.fit` (HF Trainer, left padding, logits only at labelled
  positions, seeded length grouping);
* ``bare``: a plain PyTorch + peft loop over the pipeline's own batches and loss (what the Trainer
  costs on top);
* ``stock``: HF Trainer + peft, ``DataCollatorForSeq2Seq`` right padding, the model's own loss (full
  logits at every position), and length grouping, which transformers 5 spells
  ``train_sampling_strategy="group_by_length"`` (the ``group_by_length=True`` of older releases);
* ``trl`` / ``trl_padding_free``: TRL's ``SFTTrainer`` with its flags for prompt-completion data:
  completion-only loss (``completion_only_loss=True`` on a pre-tokenized ``input_ids`` +
  ``completion_mask`` dataset: the replay rows' mask is all ones), TRL's fused chunked LM head, and
  either length grouping or ``padding_free=True`` (batches flattened into one row; on the CPU the
  sdpa kernel reads the sequence boundaries from ``position_ids``). TRL's defaults
  ``gradient_checkpointing=True`` and ``bf16=True`` are turned off: both change what is compared
  (recomputation that buys memory with time; another precision).

The rows are handed to TRL already tokenized, with the same ids the pipeline trains on: TRL's own
chat-template tokenization would also label the template's newline after ``<|im_end|>`` (one more
target per example, another objective) and cannot mix conversational prompts with plain replay text
in one dataset.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

IGNORE_INDEX = -100


@dataclass
class Workload:
    """The training rows and the held-out rows every variant sees (identical token ids)."""

    train_rows: list[dict[str, list[int]]]
    heldout_rows: list[dict[str, list[int]]]
    n_task: int
    n_replay: int
    pad_token_id: int


@dataclass
class Trace:
    """What one variant's run records, step by step."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time per step (all threads)
    real_tokens: list[int] = field(default_factory=list)
    padded_tokens: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seen_tokens: list[int] = field(default_factory=list)  # the Trainer's non-padding count per step
    step0_loss: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # what the tool actually ran with, read back from it


def build_workload(cfg: Any, tokenizer: Any, n_rows: int, n_heldout: int, seed: int) -> Workload:
    """``n_rows`` training rows (the default task/replay mix) and ``n_heldout`` held-out rows of the same mix.

    Task rows come from the sample-data generator (the demo's own data shape); replay chunks from
    ``train.replay.corpus_dir``, cut with the pipeline's own :func:`build_replay_chunks` and mixed
    with :func:`mix_replay`. The held-out rows share neither examples nor chunks with the training rows.
    """
    from tether.data.examples import build_examples
    from tether.data.generate import generate_tables
    from tether.model.train import build_replay_chunks, encode_examples, mix_replay

    tc = cfg.train
    ratio = tc.replay.ratio
    data = generate_tables(cfg.generate, cfg.seed)
    examples = build_examples(data.interactions.assign(split="train"), data.items, cfg.examples)
    random.Random(seed).shuffle(examples)
    chunks = build_replay_chunks(tokenizer, Path(tc.replay.corpus_dir), min(tc.replay.chunk_tokens, tc.max_length))
    random.Random(seed).shuffle(chunks)
    n_task = round(n_rows * (1.0 - ratio))
    n_heldout_replay = round(n_heldout * ratio)
    heldout_task = n_heldout - n_heldout_replay
    if len(examples) < n_task + heldout_task or len(chunks) <= n_heldout_replay:
        raise SystemExit(f"not enough sample data for {n_rows} + {n_heldout} rows: lower --steps or --batch")
    task = encode_examples(tokenizer, examples[:n_task], tc.max_length)
    rows = mix_replay(task, chunks[n_heldout_replay:], ratio, seed)[:n_rows]
    heldout = encode_examples(tokenizer, examples[n_task : n_task + heldout_task], tc.max_length)
    heldout += chunks[:n_heldout_replay]
    n_replay = sum(1 for r in rows if IGNORE_INDEX not in r["labels"])
    return Workload(rows, heldout, len(rows) - n_replay, n_replay, tokenizer.pad_token_id)


@torch.no_grad()
def referee_loss(model: torch.nn.Module, rows: list[dict[str, list[int]]]) -> dict[str, float]:
    """Mean next-token cross-entropy over the labelled tokens, one unpadded row at a time, full logits.

    Deliberately independent of every variant's loss path (no padding, no ``logits_to_keep``, no
    fused head): the one yardstick all trained adapters are read with.
    """
    was_training = model.training
    model.eval()
    sums = {"task": [0.0, 0], "replay": [0.0, 0]}
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        targets = torch.tensor(row["labels"][1:])
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        kind = "replay" if IGNORE_INDEX not in row["labels"] else "task"
        sums[kind][0] += float(loss)
        sums[kind][1] += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    total_s, total_n = sums["task"][0] + sums["replay"][0], sums["task"][1] + sums["replay"][1]
    return {
        "loss": total_s / total_n,
        "task_loss": sums["task"][0] / max(sums["task"][1], 1),
        "replay_loss": sums["replay"][0] / max(sums["replay"][1], 1),
        "tokens": total_n,
    }


def _timer_callback(trace: Trace, step0: Callable[[torch.nn.Module], float] | None = None):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time inside each optimizer step (forward, backward, clipping, optimizer, scheduler) and the loss."""

        def __init__(self) -> None:
            self.t0: float | None = None
            self.c0 = 0.0
            self.seen = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.seen = state.num_input_tokens_seen
            if step0 is not None and model is not None:
                trace.step0_loss = step0(model)

        def on_step_begin(self, args, state, control, **kwargs):
            self.c0 = time.process_time()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            trace.seconds.append(time.perf_counter() - (self.t0 or time.perf_counter()))
            trace.cpu_seconds.append(time.process_time() - self.c0)
            trace.seen_tokens.append(state.num_input_tokens_seen - self.seen)
            self.seen = state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                trace.losses.append(float(logs["loss"]))

    return StepTimer()


class CountingCollator:
    """Wraps a Trainer's collator and records each batch's real and padded token counts.

    Counted here rather than from ``num_input_tokens_seen``: with ``padding_free`` there is no
    attention mask, and the Trainer's fallback (``input_ids != pad``) misses every ``<|im_end|>``,
    which is this tokenizer's pad token and a real completion token.
    """

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]], trace: Trace) -> None:
        self.inner = inner
        self.trace = trace

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.inner(features)
        self.trace.real_tokens.append(sum(len(f["input_ids"]) for f in features))
        self.trace.padded_tokens.append(int(batch["input_ids"].numel()))
        return batch


def _lora_config(tc: Any, num_layers: int):
    from peft import LoraConfig, TaskType

    from tether.model.train import resolve_layers

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=tc.lora_rank, lora_alpha=tc.lora_alpha, lora_dropout=tc.lora_dropout,
        target_modules=list(tc.target_modules), layers_to_transform=resolve_layers(tc.layers_to_transform, num_layers),
        bias="none",
    )


def _pipeline_step0(work: Workload, batch: int) -> Callable[[torch.nn.Module], float]:
    """The pipeline's loss (what its Trainer's ``compute_loss`` calls) on the first ``batch`` rows, untrained."""
    from tether.model.train import CompletionCollator, completion_loss

    def run(model: torch.nn.Module) -> float:
        with torch.no_grad():
            s, n = completion_loss(model, CompletionCollator(work.pad_token_id)(work.train_rows[:batch]))
        return float(s / n)

    return run


def run_pipeline(model, tokenizer, work: Workload, tc, out_dir: Path, seed: int, batch: int) -> tuple[Trace, Any]:
    """:func:`tether.model.train.fit` as the pipeline calls it."""
    from tether.model.train import SeededLengthGroupedSampler, fit

    trace = Trace()
    fitted = fit(model, tokenizer, work.train_rows, None, tc, out_dir, seed=seed,
                 callbacks=[_timer_callback(trace, _pipeline_step0(work, batch))])
    # fit's collator is internal: real tokens come from its Trainer's exact count (left padding with an
    # attention mask); padded widths are those of its batches, which its seeded sampler reproduces.
    trace.real_tokens = list(trace.seen_tokens)
    lengths = [len(r["input_ids"]) for r in work.train_rows]
    order = list(SeededLengthGroupedSampler(lengths, batch, seed))
    collate = _pipeline_collator(work, tc)
    trace.padded_tokens = [_computed_tokens(collate([work.train_rows[i] for i in order[k : k + batch]]))
                           for k in range(0, len(order), batch)]
    trace.settings = {"precision": fitted.precision, "shared_prefix_tokens": fitted.prefix_tokens}
    return trace, fitted.model


def _pipeline_collator(work: Workload, tc):
    """The collator :func:`fit` builds: the shared prompt prefix stripped when ``share_prompt_prefix``."""
    from tether.model.prefix import shared_prefix
    from tether.model.train import CompletionCollator

    return CompletionCollator(work.pad_token_id, prefix=shared_prefix(work.train_rows) if tc.share_prompt_prefix else ())


def _computed_tokens(b: dict[str, torch.Tensor]) -> int:
    """Token positions a batch computes: its padded width x rows, plus the shared prefix once."""
    return int(b["input_ids"].numel()) + (b["prefix_ids"].shape[1] if "prefix_ids" in b else 0)


def run_bare(model, tokenizer, work: Workload, tc, out_dir: Path, seed: int, batch: int) -> tuple[Trace, Any]:
    """A plain loop over the pipeline's batches (its sampler, collator and loss), no Trainer."""
    from tether.model.prefix import real_tokens
    from tether.model.train import SeededLengthGroupedSampler, build_lora_model, completion_loss

    trace = Trace()
    steps = len(work.train_rows) // batch
    peft_model = build_lora_model(model, tc, seed=seed)
    peft_model.train()
    trace.step0_loss = _pipeline_step0(work, batch)(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    order = list(SeededLengthGroupedSampler([len(r["input_ids"]) for r in work.train_rows], batch, seed))
    collate = _pipeline_collator(work, tc)
    autocast = tc.precision == "bf16"
    for k in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        rows = [work.train_rows[i] for i in order[k * batch : (k + 1) * batch]]
        b = collate(rows)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            s, n = completion_loss(peft_model, b)
        loss = s / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        trace.seconds.append(time.perf_counter() - t0)
        trace.cpu_seconds.append(time.process_time() - c0)
        trace.real_tokens.append(int(real_tokens(b)))
        trace.padded_tokens.append(_computed_tokens(b))
        trace.losses.append(float(loss))
    return trace, peft_model


def _effective(trainer) -> dict[str, Any]:
    """Settings read back from a built Trainer (not what was asked for: what it will do)."""
    inner = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    return {
        "sampler": type(trainer._get_train_sampler()).__name__,
        "gradient_checkpointing": bool(getattr(inner, "is_gradient_checkpointing", False)),
        "bf16": bool(trainer.args.bf16),
        "dtype": str(next(trainer.model.parameters()).dtype),
        "attn_implementation": getattr(inner.config, "_attn_implementation", None),
        "collator": type(trainer.data_collator).__name__,
    }


def _step0_via_trainer(trainer, rows: list[dict[str, Any]]) -> float:
    """A Trainer's own ``compute_loss`` on ``rows`` collated by its own collator, before any update."""
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def run_stock(model, tokenizer, work: Workload, tc, out_dir: Path, seed: int, batch: int) -> tuple[Trace, Any]:
    """HF Trainer + peft as the documentation shows it, with length grouping."""
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from tether.model.train import FeatureDataset

    trace = Trace()
    set_seed(seed)
    peft_model = get_peft_model(model, _lora_config(tc, model.config.num_hidden_layers))
    targs = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=batch, learning_rate=tc.learning_rate,
        weight_decay=tc.weight_decay, max_grad_norm=tc.max_grad_norm, lr_scheduler_type="linear", warmup_steps=0,
        max_steps=len(work.train_rows) // batch, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        seed=seed, remove_unused_columns=False, train_sampling_strategy="group_by_length", disable_tqdm=True,
    )
    rows = [{"input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"]), "labels": r["labels"]}
            for r in work.train_rows]
    trainer = Trainer(
        model=peft_model, args=targs, train_dataset=FeatureDataset(rows), processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True), callbacks=[_timer_callback(trace)],
    )
    trace.step0_loss = _step0_via_trainer(trainer, rows[:batch])
    trace.settings = _effective(trainer)
    trainer.data_collator = CountingCollator(trainer.data_collator, trace)
    trainer.train()
    return trace, trainer.model


def run_trl(model, tokenizer, work: Workload, tc, out_dir: Path, seed: int, batch: int,
            padding_free: bool = False) -> tuple[Trace, Any]:
    """TRL's ``SFTTrainer`` on prompt-completion rows: completion-only loss, grouping or padding-free.

    In float32, or with ``train.precision: bf16`` in bf16 autocast (TRL's own default ``bf16=True``).
    """
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    trace = Trace()
    set_seed(seed)
    rows = [{"input_ids": r["input_ids"], "completion_mask": [int(t != IGNORE_INDEX) for t in r["labels"]]}
            for r in work.train_rows]
    # The first token of a row is never a target (nothing predicts it): its mask bit does not matter.
    sampling = {} if padding_free else {"train_sampling_strategy": "group_by_length"}
    args = SFTConfig(
        output_dir=str(out_dir), per_device_train_batch_size=batch, learning_rate=tc.learning_rate,
        weight_decay=tc.weight_decay, max_grad_norm=tc.max_grad_norm, lr_scheduler_type="linear", warmup_steps=0,
        max_steps=len(work.train_rows) // batch, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        seed=seed, disable_tqdm=True, bf16=tc.precision == "bf16", gradient_checkpointing=False, completion_only_loss=True,
        padding_free=padding_free, max_length=None if padding_free else tc.max_length, **sampling,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=_lora_config(tc, model.config.num_hidden_layers), callbacks=[_timer_callback(trace)],
    )
    first = [trainer.train_dataset[i] for i in range(batch)]
    trace.step0_loss = _step0_via_trainer(trainer, first)
    trainer._metrics["train"].clear()  # the objective check above is not a training step
    trainer._total_train_tokens = 0
    trace.settings = dict(_effective(trainer), completion_only_loss=trainer.completion_only_loss,
                          padding_free=trainer.padding_free)
    trainer.data_collator = CountingCollator(trainer.data_collator, trace)
    trainer.train()
    return trace, trainer.model


RUNNERS: dict[str, Callable[..., tuple[Trace, Any]]] = {
    "pipeline": run_pipeline,
    "bare": run_bare,
    "stock": run_stock,
    "trl": run_trl,
    "trl_padding_free": lambda *a, **k: run_trl(*a, padding_free=True, **k),
}
