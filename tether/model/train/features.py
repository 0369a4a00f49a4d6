"""The train stage's rows: example files read, validation subsampled, encoded, replay mixed in.

Examples are encoded with :func:`tether.chat.encode_examples` (the chat template, labels on the
completion only); replay rows come from :mod:`tether.model.replay` (text chunks of the replay
corpus and, in distill mode, the base model's own chat answers).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.chat import encode_examples
from tether.model.replay import TrainDataError, build_replay_chunks, chat_rows, distill_prompt_tokens, mix_replay

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tether.config import TetherConfig

log = logging.getLogger(__name__)

Feature = dict[str, list[int]]


def read_examples(path: Path) -> list[dict[str, Any]]:
    """Read an example JSONL file (docs/CONVENTIONS.md); raises naming the file and line.

    Raises:
        TrainDataError: the file is missing, or a line is not valid JSON.
    """
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


def subsample(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """``n`` of ``rows`` drawn with ``seed``, in their original order (all of them when ``n`` is None or enough)."""
    if n is None or len(rows) <= n:
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


@dataclass
class StageFeatures:
    """Encoded rows of one training run.

    Attributes:
        task: the encoded training examples.
        train: ``task`` with the replay rows mixed in (what the Trainer sees).
        eval: the encoded validation examples.
        n_replay: replay rows in ``train``.
    """

    task: list[Feature]
    train: list[Feature]
    eval: list[Feature]
    n_replay: int


def build_features(
    cfg: "TetherConfig",
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    train_rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]],
    replay_dir: Path,
    *,
    seed: int,
    base_hash: str,
    device: str,
    dtype: Any,
) -> StageFeatures:
    """Encode examples and mix replay as ``cfg.train`` says.

    Args:
        cfg: the config (``train`` section; ``model`` for the self-sample cache).
        model: the base model (generates the chat answers of distill mode, cached by ``base_hash``).
        tokenizer: its tokenizer.
        train_rows: training examples.
        val_rows: validation examples.
        replay_dir: the replay corpus (already checked against the held-out text).
        seed: seeds the mixing and the self-samples.
        base_hash: the base model's content hash (keys the self-sample cache).
        device: where the model is.
        dtype: its dtype (part of the self-sample cache key).
    """
    tc = cfg.train
    task = encode_examples(tokenizer, train_rows, tc.max_length)
    distill = tc.replay.mode == "distill"
    if distill and tc.replay.distill_prompts:
        task = distill_prompt_tokens(task)
    replay: list[Feature] = []
    n_chat = 0
    if tc.replay.ratio > 0:
        replay = build_replay_chunks(tokenizer, replay_dir, min(tc.replay.chunk_tokens, tc.max_length), distill=distill)
        if distill and tc.replay.chat_samples:
            from tether.eval.selfsamples import cached_samples

            samples, _ = cached_samples(
                model, tokenizer, split="train", n_samples=tc.replay.chat_samples,
                max_new_tokens=tc.replay.chat_max_new_tokens, seed=seed, base_hash=base_hash,
                cache_dir=cfg.model.resolved_cache_dir(), device=device, dtype=str(dtype),
            )
            chat = chat_rows(samples, tc.max_length)
            n_chat = len(chat)
            replay += chat
    train = mix_replay(task, replay, tc.replay.ratio, seed)
    n_replay = len(train) - len(task)
    eval_ = encode_examples(tokenizer, val_rows, tc.max_length)
    log.info(
        "training on %d examples + %d replay rows (%s; pool: %d text chunks, %d chat answers of the base), "
        "validating on %d, device %s",
        len(task), n_replay, tc.replay.mode, len(replay) - n_chat, n_chat, len(eval_), device,
    )
    return StageFeatures(task=task, train=train, eval=eval_, n_replay=n_replay)
