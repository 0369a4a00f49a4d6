"""The fixed decoding of the generation checks: greedy, a token budget, stop at end of turn.

Prompts are encoded with :func:`tether.chat.encode_prompt` (as training and scoring encode
them) and batched with LEFT padding, so every row's last prompt token sits at the same position
and new tokens are appended right after it; the attention mask hides the padding.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tether.chat import Messages, encode_prompt
from tether.model.device import eval_mode
from tether.model.device import input_device as _input_device

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

def generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    system_prompt: str | None = None,
    *,
    repetition_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    progress: bool = True,
    desc: str = "generate",
    ids_out: list[list[int]] | None = None,
) -> list[str]:
    """Greedy completions of chat prompts: the fixed decoding of the generation checks.

    Prompts are rendered with the chat template and the generation prompt, grouped into
    batches of similar length (less padding; greedy results do not depend on the grouping),
    left-padded, and decoded greedily until the end-of-turn token or ``max_new_tokens``.
    Only the new tokens are decoded, special tokens dropped, surrounding whitespace stripped.

    Args:
        model: a causal LM, a peft model, or a peft model inside ``disable_adapter()``.
        tokenizer: its tokenizer (with a chat template). Its ``padding_side`` is set to
            ``left`` for the call and restored afterwards.
        prompts: chat conversations (``role``/``content`` dicts), one per output.
        max_new_tokens: token budget per completion.
        batch_size: prompts per ``generate`` call.
        system_prompt: added as the first message of every conversation that has no system
            message (conversations that have one keep theirs); None = add nothing, so the chat
            template's default (if any) applies.
        repetition_penalty: override the model's generation config; None keeps its value.
        no_repeat_ngram_size: override the model's generation config; None keeps its value.
        progress: show a tqdm bar.
        desc: the bar's label.
        ids_out: when given, filled with each completion's token ids (up to and including the
            end-of-turn token), in the order given: what the golden-prompt KL check scores.

    Returns:
        One completion per prompt, in the order given.

    Raises:
        ValueError: on a bad ``max_new_tokens``/``batch_size``, or a prompt that leaves no room
            for ``max_new_tokens`` in the model's context.
    """
    import torch
    from tether.console import progress_bar  # a bar on a terminal, else a summary line now and then

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    conversations = [_with_system(p, system_prompt) for p in prompts]
    encoded = [encode_prompt(tokenizer, c) for c in conversations]
    _check_context(model, encoded, max_new_tokens)
    gen_config = _greedy_config(model, tokenizer, max_new_tokens, repetition_penalty, no_repeat_ngram_size)
    device = _input_device(model)

    # Longest first, so the first batch shows at once whether memory suffices.
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    outputs: list[str | None] = [None] * len(encoded)
    new_ids: list[list[int]] = [[] for _ in encoded]
    eos = set(gen_config.eos_token_id or [])
    with _padding_side(tokenizer, "left"), eval_mode(model), torch.inference_mode():
        bar = progress_bar(total=len(encoded), desc=desc, unit="prompt", disable=not progress, leave=False)
        try:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt")
                input_ids = padded["input_ids"].to(device)
                attention_mask = padded["attention_mask"].to(device)
                out = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config
                )
                # Left padding: every row's prompt ends at column input_ids.shape[1] - 1.
                new_tokens = out[:, input_ids.shape[1] :]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                for i, text, row in zip(batch, texts, new_tokens.tolist()):
                    outputs[i] = text.strip()
                    new_ids[i] = row[: next((k + 1 for k, t in enumerate(row) if t in eos), len(row))]
                bar.update(len(batch))
        finally:
            bar.close()
    if ids_out is not None:
        ids_out[:] = new_ids
    return [t if t is not None else "" for t in outputs]


def free_generation_titles(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 24,
    batch_size: int = 8,
    *,
    progress: bool = True,
) -> list[str]:
    """Greedy free generations from each example's prompt, for the valid-item rate.

    The generation is returned as is (stripped); it is not cut at a newline or otherwise
    repaired, because the pinned valid-item rate asks whether the free generation *is* a
    catalog title (after :func:`tether.eval.metrics.normalize_title`). A model that keeps
    talking after the title does not produce a valid item.

    Args:
        model: a causal LM, a peft model, or a peft model inside ``disable_adapter()``.
        tokenizer: its tokenizer.
        examples: examples in the CONVENTIONS JSONL shape (their ``prompt`` messages are used;
            they carry their own system message).
        max_new_tokens: budget per title; long enough for any catalog title.
        batch_size: prompts per ``generate`` call.
        progress: show a tqdm bar.

    Returns:
        One generation per example, in order.
    """
    prompts = []
    for n, ex in enumerate(examples):
        prompt = ex.get("prompt") if isinstance(ex, Mapping) else None
        if not isinstance(prompt, Sequence) or isinstance(prompt, str) or not prompt:
            user = ex.get("user_id", "?") if isinstance(ex, Mapping) else "?"
            raise ValueError(f"example {n} (user {user!r}) has no 'prompt' messages")
        prompts.append(prompt)
    return generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
        progress=progress, desc="free generation",
    )


def _with_system(messages: Messages, system_prompt: str | None) -> list[dict[str, str]]:
    conv = [dict(m) for m in messages]
    if not conv:
        raise ValueError("generate: a prompt has no messages")
    if system_prompt is not None and not any(m.get("role") == "system" for m in conv):
        conv.insert(0, {"role": "system", "content": system_prompt})
    return conv


def _eos_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-turn ids: the tokenizer's eos (``<|im_end|>`` for ChatML) plus the model's own."""
    ids: list[int] = []
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in ([tokenizer.eos_token_id], cfg_eos if isinstance(cfg_eos, list) else [cfg_eos]):
        for v in value:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


def _greedy_config(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
    repetition_penalty: float | None,
    no_repeat_ngram_size: int | None,
) -> Any:
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    cfg = copy.deepcopy(base) if base is not None else GenerationConfig()
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    # Sampling knobs are set to their neutral values rather than None: generate() refills None
    # from the model's generation config (SmolLM2 ships temperature 0.2, top_p 0.9) and then
    # warns that greedy decoding ignores them. Greedy ignores them either way.
    cfg.update(
        do_sample=False,
        num_beams=1,
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        typical_p=1.0,
        max_new_tokens=max_new_tokens,
        max_length=None,
        min_new_tokens=None,
        min_length=0,
        eos_token_id=eos or None,
        pad_token_id=pad,
        use_cache=True,
    )
    if repetition_penalty is not None:
        cfg.repetition_penalty = repetition_penalty
    if no_repeat_ngram_size is not None:
        cfg.no_repeat_ngram_size = no_repeat_ngram_size
    return cfg


def _check_context(model: Any, encoded: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return
    for n, ids in enumerate(encoded):
        if len(ids) + max_new_tokens > limit:
            raise ValueError(
                f"prompt {n} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} it exceeds the "
                f"model's context of {limit} tokens: shorten the prompt or the budget"
            )


@contextlib.contextmanager
def _padding_side(tokenizer: PreTrainedTokenizerBase, side: str) -> Iterator[None]:
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = old
