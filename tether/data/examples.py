"""Chat-formatted prompt/completion examples (TRL's conversational prompt-completion shape).

One example = the user's most recent ``history_length`` items (titles, oldest first) in
the prompt, and the next item's title as the completion::

    {"user_id": "17", "split": "train", "item_id": "42", "history_item_ids": ["3", "9", "12"],
     "prompt": [{"role": "system", "content": <cfg.system_prompt>},
                {"role": "user", "content": "Movies the user watched, oldest first:\\n- A (1999)\\n..."}],
     "completion": [{"role": "assistant", "content": "The Silent Harbor (2004)"}]}

* train: every position t >= 1 of the user's train items (history = up to N train items
  before it); ``max_train_examples_per_user`` keeps the latest positions.
* validation: target = the validation item, history = the last N train items.
* test: target = the test item, history = the last N items before it (train + validation).

The system message is always explicit, so a tokenizer's default system prompt never
sneaks in. ``include_genres`` appends ``(Genre A, Genre B)`` to prompt titles only: the
completion is always the bare title, so a generation maps back to a catalog title.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tether.chat import count_tokens, render_many  # the chat encoding training and scoring use
from tether.config import ExamplesConfig

logger = logging.getLogger(__name__)

Message = dict[str, str]
Example = dict[str, Any]


def item_text(title: str, genres: str = "", include_genres: bool = False) -> str:
    """How an item appears in a prompt: its title, optionally followed by ``(Genre A, Genre B)``."""
    if include_genres and genres:
        return f"{title} ({', '.join(g for g in genres.split('|') if g)})"
    return title


def build_prompt(history_texts: Sequence[str], cfg: ExamplesConfig) -> list[Message]:
    """The prompt messages for a history (oldest first): the system message, then the user message.

    Evaluation builds its prompts with this same function, so training and scoring agree.
    """
    history = "\n".join(f"- {t}" for t in history_texts)
    return [
        {"role": "system", "content": cfg.system_prompt},
        {"role": "user", "content": cfg.prompt_template.replace("{history}", history)},
    ]


def _example(
    user: str, split: str, target: str, history: Sequence[str], texts: dict[str, str], titles: dict[str, str],
    cfg: ExamplesConfig,
) -> Example:
    return {
        "user_id": user,
        "split": split,
        "item_id": target,
        "history_item_ids": list(history),
        "prompt": build_prompt([texts[i] for i in history], cfg),
        "completion": [{"role": "assistant", "content": titles[target]}],
    }


def build_examples(interactions: pd.DataFrame, items: pd.DataFrame, cfg: ExamplesConfig) -> list[Example]:
    """Build train, validation and test examples from split interactions.

    Args:
        interactions: interactions with a ``split`` column (see :func:`tether.data.split.leave_last_out`).
        items: the (cleaned) catalog: ``item_id``, ``title``, optional ``genres``.
        cfg: history length, genres option, system prompt, template, train cap.

    Returns:
        Examples ordered by user, then train positions, validation, test.
    """
    titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
    genres = (
        dict(zip(items["item_id"].astype(str), items["genres"].fillna("").astype(str)))
        if "genres" in items else {}
    )
    texts = {i: item_text(t, genres.get(i, ""), cfg.include_genres) for i, t in titles.items()}
    n_hist = cfg.history_length
    cap = cfg.max_train_examples_per_user

    codes, _ = pd.factorize(interactions["user_id"], sort=True)
    ts = interactions["timestamp"].to_numpy(dtype=np.int64)
    src = (
        interactions["source_row"].to_numpy(dtype=np.int64)
        if "source_row" in interactions else np.arange(len(interactions), dtype=np.int64)
    )
    # Per user: train rows (chronological), then validation, then test.
    rank = interactions["split"].map({"train": 0, "validation": 1, "test": 2}).to_numpy()
    order = np.lexsort((src, ts, rank, codes))
    users = interactions["user_id"].astype(str).to_numpy()[order]
    item_ids = interactions["item_id"].astype(str).to_numpy()[order]
    ranks = rank[order]
    sc = codes[order]
    starts = np.r_[0, np.flatnonzero(sc[1:] != sc[:-1]) + 1] if len(sc) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(sc)]

    out: list[Example] = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        user = users[s]
        seq = item_ids[s:e].tolist()
        r = ranks[s:e]
        n_train = int((r == 0).sum())
        first = 1 if cap is None else max(1, n_train - cap)
        for t in range(first, n_train):
            out.append(_example(user, "train", seq[t], seq[max(0, t - n_hist):t], texts, titles, cfg))
        for pos, split in ((n_train, "validation"), (n_train + 1, "test")):
            if pos < len(seq) and r[pos] == {"validation": 1, "test": 2}[split]:
                out.append(_example(user, split, seq[pos], seq[max(0, pos - n_hist):pos], texts, titles, cfg))
    return out


def _summary(values: Iterable[float]) -> dict[str, float]:
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return {"min": 0.0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "min": float(a.min()),
        "mean": round(float(a.mean()), 2),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
    }


def _lengths(examples: Sequence[Example], tokenizer: Any | None) -> tuple[list[int], list[int]]:
    """Prompt and total lengths: chat-template tokens with a tokenizer, else whitespace words."""
    if tokenizer is None:
        def words(msgs: list[Message]) -> int:
            return sum(len(m["content"].split()) for m in msgs)
        prompt = [words(ex["prompt"]) for ex in examples]
        total = [p + words(ex["completion"]) for p, ex in zip(prompt, examples)]
        return prompt, total
    if not examples:
        return [], []
    prompt_texts = render_many(tokenizer, [ex["prompt"] for ex in examples], generation_prompt=True)
    full_texts = render_many(tokenizer, [ex["prompt"] + ex["completion"] for ex in examples], generation_prompt=False)
    prompt = count_tokens(tokenizer, prompt_texts)
    # Chat templates render the prompt as a prefix of the conversation: tokenizing only the
    # rest is exact at that special-token boundary and saves most of the work; else the whole.
    prefix = [f.startswith(p) for p, f in zip(prompt_texts, full_texts)]
    rest = [f[len(p):] if ok else f for p, f, ok in zip(prompt_texts, full_texts, prefix)]
    rest_len = count_tokens(tokenizer, rest)
    total = [p + r if ok else r for p, r, ok in zip(prompt, rest_len, prefix)]
    return prompt, total


def example_stats(
    examples: Sequence[Example], tokenizer: Any | None = None, max_token_examples: int | None = 20_000
) -> dict[str, Any]:
    """Counts and length distributions of a set of examples.

    Args:
        examples: as built by :func:`build_examples`.
        tokenizer: a Hugging Face tokenizer with a chat template. With it, lengths are
            tokens of ``apply_chat_template`` (prompt with the generation prompt; completion
            = full conversation minus prompt, so it includes the end-of-turn tokens the model
            is trained to emit). Without it, whitespace-separated words of the message contents.
        max_token_examples: with a tokenizer, measure at most this many examples per split
            (evenly spaced, deterministic; None = all): tokenizing the ~400k examples of a
            GPU-size log would take minutes for numbers that a sample pins down.

    Returns:
        ``examples`` (count per split and total), ``users`` (distinct users per split and
        total), ``length_unit`` (``tokens`` | ``whitespace_words``), ``lengths_measured_on``
        (examples measured per split), and ``lengths`` per split and ``all``:
        ``prompt``/``completion``/``total`` with min, mean, p50, p95, max.
    """
    order = {"train": 0, "validation": 1, "test": 2}
    splits = sorted({ex["split"] for ex in examples}, key=lambda s: order.get(s, 3))
    by_split: dict[str, list[int]] = {s: [] for s in splits}
    for k, ex in enumerate(examples):
        by_split[ex["split"]].append(k)
    measured = dict(by_split)
    if tokenizer is not None and max_token_examples is not None:
        for s, idx in by_split.items():
            if len(idx) > max_token_examples:
                pick = np.unique(np.linspace(0, len(idx) - 1, max_token_examples).round().astype(int))
                measured[s] = [idx[i] for i in pick]
    all_measured = sorted(i for idx in measured.values() for i in idx)
    p_list, t_list = _lengths([examples[i] for i in all_measured], tokenizer)
    prompt_len = dict(zip(all_measured, p_list))
    total_len = dict(zip(all_measured, t_list))

    def block(idx: Sequence[int]) -> dict[str, dict[str, float]]:
        p = [prompt_len[i] for i in idx]
        t = [total_len[i] for i in idx]
        return {"prompt": _summary(p), "completion": _summary(b - a for a, b in zip(p, t)), "total": _summary(t)}

    return {
        "examples": {**{s: len(by_split[s]) for s in splits}, "total": len(examples)},
        "users": {
            **{s: len({examples[i]["user_id"] for i in by_split[s]}) for s in splits},
            "total": len({ex["user_id"] for ex in examples}),
        },
        "length_unit": "tokens" if tokenizer is not None else "whitespace_words",
        "lengths_measured_on": {**{s: len(measured[s]) for s in splits}, "total": len(all_measured)},
        "lengths": {**{s: block(measured[s]) for s in splits}, "all": block(all_measured)},
    }
