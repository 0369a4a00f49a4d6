"""LoRA fine-tuning with the Hugging Face Trainer: loss on completion tokens only.

The pieces, bottom-up (each usable on its own, and from tests with a tiny model):

* :func:`tether.chat.encode_example` renders an example with the tokenizer's chat template and
  labels exactly the completion tokens (title + end-of-turn). Scoring encodes a candidate with the
  same functions, so training and scoring see identical token sequences.
* :mod:`.batching`: :class:`CompletionCollator` pads dynamically on the *left* and passes explicit
  position ids, so a left-padded row is computed exactly like the unpadded sequence.
  :func:`completion_loss` then asks the model for logits at only the positions that predict a
  label (a boolean ``logits_to_keep``, a standard argument of Hugging Face causal LMs): the
  49k-vocabulary output layer runs on the completion tokens (and replay text) instead of every
  prompt token, through the model's own ``forward``, so peft, DDP and model-specific logit
  processing keep working. ``bench/bench_train.py`` measures what this buys against the stock recipe.
* :mod:`.lora`: which layers and modules get adapters, a fresh peft model, saving the adapter.
* :mod:`.trainer`: ``CompletionTrainer``, the Trainer with that loss, a token-weighted validation
  loss, and a seeded length-grouped sampler that is reproducible across a crash and ``resume``;
  :mod:`.callbacks`: the loss curves and throughput.
* :mod:`.fit`: :func:`fit` trains a model on encoded features; :mod:`.checkpoints` says which
  checkpoint a resume continues from.
* :mod:`.stage`: :func:`train` is the pipeline stage: reads the example JSONL (:mod:`.features`),
  loads the base model, mixes replay text, trains, evaluates adapter and base on the same
  validation examples, saves the adapter and logs everything to MLflow (:mod:`.runs` closes the
  run of a killed process on resume); several processes coordinate through :mod:`.distributed`.

Every name below is importable from ``tether.model.train``; the modules that need transformers at
import time (:mod:`.trainer`, :mod:`.callbacks`) load only when :func:`fit` runs.
"""

# Re-exported: the chat encoding, the loss and the replay rows live in their own modules, callers
# import them from here too.
from tether.chat import EncodedExample, encode_example, encode_examples
from tether.model.loss import IGNORE_INDEX, completion_loss, completion_token_nll
from tether.model.replay import (
    TrainDataError,
    build_replay_chunks,
    chat_rows,
    check_replay_disjoint,
    check_replay_vs_panel,
    distill_prompt_tokens,
    mix_replay,
)
from tether.model.train.batching import (
    CompletionCollator,
    FeatureDataset,
    FixedOrderSampler,
    SeededLengthGroupedSampler,
    evaluate_loss,
)
from tether.model.train.checkpoints import checkpoint_complete, last_checkpoint
from tether.model.train.distributed import is_main_process, process_rank, wait_for_everyone
from tether.model.train.features import read_examples
from tether.model.train.fit import FitResult, fit
from tether.model.train.lora import ADAPTER_SUBDIR, build_lora_model, resolve_layers, save_adapter
from tether.model.train.runs import RUN_MARKER
from tether.model.train.stage import TrainResult, load_model, train

__all__ = [
    "ADAPTER_SUBDIR",
    "IGNORE_INDEX",
    "RUN_MARKER",
    "CompletionCollator",
    "EncodedExample",
    "FeatureDataset",
    "FitResult",
    "FixedOrderSampler",
    "SeededLengthGroupedSampler",
    "TrainDataError",
    "TrainResult",
    "build_lora_model",
    "build_replay_chunks",
    "chat_rows",
    "check_replay_disjoint",
    "check_replay_vs_panel",
    "checkpoint_complete",
    "completion_loss",
    "completion_token_nll",
    "distill_prompt_tokens",
    "encode_example",
    "encode_examples",
    "evaluate_loss",
    "fit",
    "is_main_process",
    "last_checkpoint",
    "load_model",
    "mix_replay",
    "process_rank",
    "read_examples",
    "resolve_layers",
    "save_adapter",
    "train",
    "wait_for_everyone",
]
