"""Rank every user's candidates: one scorer call per user, the shared prompt prefix run once."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from tether.eval.scoring.naive import score_candidates_naive
from tether.eval.scoring.packed import score_candidates, shared_prompt_prefix
from tether.eval.scoring.result import ScoreResult

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

def rank_users(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping[str, Any]],
    candidates_per_user: Sequence[Sequence[str]],
    batch_size: int = 32,
    *,
    method: Literal["cached", "naive"] = "cached",
    progress: bool = True,
    desc: str = "scoring candidates",
) -> list[ScoreResult]:
    """Score each user's candidates under that user's prompt.

    Args:
        model: a causal LM (transformers or peft; call inside ``disable_adapter()`` for the base).
        tokenizer: its tokenizer, with a chat template.
        examples: one example per user in the CONVENTIONS JSONL shape (``prompt`` = chat
            messages; other keys are ignored).
        candidates_per_user: the candidate titles of each user, aligned with ``examples``.
        batch_size: candidates per forward pass.
        method: ``cached`` (prefix KV cache, the default) or ``naive`` (full sequences).
        progress: show a tqdm progress bar over users.
        desc: the progress bar's label.

    Returns:
        One :class:`ScoreResult` per user, aligned with ``examples``; each in the order of
        that user's candidate titles.
    """
    from tether.console import progress_bar  # a bar on a terminal, else a summary line now and then

    if len(examples) != len(candidates_per_user):
        raise ValueError(
            f"{len(examples)} examples but {len(candidates_per_user)} candidate lists: they must be aligned, one per user"
        )
    if method not in ("cached", "naive"):
        raise ValueError(f"unknown scoring method {method!r}: expected 'cached' or 'naive'")
    for i, example in enumerate(examples):
        if not example.get("prompt"):
            raise ValueError(f"example {i} (user {example.get('user_id', '?')!r}) has no 'prompt' messages")
    if method == "cached":
        # The system prompt and the template's first line are the same for every user: run them once.
        prefix = shared_prompt_prefix(model, tokenizer, [e["prompt"] for e in examples])
        score = functools.partial(score_candidates, prefix=prefix)
        logger.info("shared prompt prefix: %d tokens", len(prefix) if prefix else 0)
    else:
        score = score_candidates_naive
    results = []
    n_scored = 0
    bar = progress_bar(zip(examples, candidates_per_user), total=len(examples), desc=desc, unit="user", disable=not progress)
    for example, titles in bar:
        results.append(score(model, tokenizer, example["prompt"], list(titles), batch_size=batch_size))
        n_scored += len(titles)
        bar.set_postfix(candidates=n_scored, refresh=False)
    logger.info("scored %d candidates for %d users (%s)", n_scored, len(examples), method)
    return results
