"""Chat messages to text to token ids: the one encoding that training, scoring, generation, serving
and the example statistics share.

A prompt is the example's messages rendered by the tokenizer's chat template with the generation
prompt (``<|im_start|>assistant\\n`` for ChatML). Its completion is the assistant turn that the
template renders after it, cut right after the end-of-turn token (``tokenizer.eos_token``) that
ends the assistant's text: the title and ``<|im_end|>``; the template's separator after it
(ChatML's newline) is not something the model must predict, so it is neither trained nor scored.
The two parts are tokenized *separately* and their ids concatenated: tokenizing the joined text
could merge tokens across the boundary, and then training would label, and scoring would score,
different tokens. Because training (:func:`encode_example`) and scoring
(:func:`encode_prompt` + :func:`encode_completion`) call the same functions, they see the same
token sequences for every tokenizer, not just for the ones a test tried.

Special-token strings in the rendered text map to their ids and no BOS/EOS is added: the chat
template already wrote every special token it wants.

Nothing here imports torch or transformers; a tokenizer is passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.model.errors import TrainDataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, str]]

# The label of a token nothing is learned at: PyTorch's cross-entropy ignore index, which the
# Hugging Face models and Trainer use too.
IGNORE_INDEX = -100


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot encode these messages; the message says why."""


# --------------------------------------------------------------------------- rendering and ids


def _check_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ChatTemplateError(
            f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) has no chat "
            "template: prompts are rendered with it, in training and in scoring alike"
        )


def render(tokenizer: PreTrainedTokenizerBase, messages: Messages, *, generation_prompt: bool) -> str:
    """One conversation rendered by the chat template (text, not ids).

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: ``role``/``content`` messages.
        generation_prompt: append the template's opening of the assistant turn.

    Raises:
        ChatTemplateError: the tokenizer has no chat template.
    """
    _check_template(tokenizer)
    return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                         add_generation_prompt=generation_prompt)


def render_many(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages], *, generation_prompt: bool
) -> list[str]:
    """Many conversations rendered in one call of the template (the example statistics render thousands)."""
    _check_template(tokenizer)
    if not conversations:
        return []
    return list(tokenizer.apply_chat_template([[dict(m) for m in c] for c in conversations], tokenize=False,
                                              add_generation_prompt=generation_prompt))


def token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of rendered text: special-token strings become their ids, no BOS/EOS is added."""
    # verbose=False: a text longer than model_max_length is fine here, callers truncate explicitly.
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    """Token counts of many rendered texts, tokenized exactly like :func:`token_ids`."""
    # The Rust backend directly: about twice as fast as tokenizer(...) building a BatchEncoding.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]


# --------------------------------------------------------------------------- prompt and completion


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt_messages: Messages) -> list[int]:
    """Token ids of the prompt rendered with the chat template and the generation prompt.

    Args:
        tokenizer: the model's tokenizer (with a chat template).
        prompt_messages: chat messages (``role``/``content``), e.g. an example's ``prompt``.

    Returns:
        The prompt ids, ending with the generation prompt (``<|im_start|>assistant\\n``).
    """
    return token_ids(tokenizer, render(tokenizer, prompt_messages, generation_prompt=True))


def _as_messages(completion: str | Messages) -> list[dict[str, str]]:
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return [dict(m) for m in completion]


def _completion_tail(
    tokenizer: PreTrainedTokenizerBase, prompt_messages: Messages, completion: list[dict[str, str]], prompt_text: str
) -> str:
    full = render(tokenizer, [*prompt_messages, *completion], generation_prompt=False)
    if not full.startswith(prompt_text):
        raise ChatTemplateError(
            "the chat template does not render the prompt + generation prompt as a prefix of the conversation "
            "with the assistant turn, so the completion tokens are ill-defined; rendered prompt ends with "
            f"{prompt_text[-40:]!r}, conversation continues with {full[len(prompt_text) - 40 : len(prompt_text)]!r}"
        )
    tail = full[len(prompt_text) :]
    eot = tokenizer.eos_token
    text = str(completion[-1].get("content", "")) if completion else ""
    if eot:
        # The end-of-turn that closes the assistant's text, not one inside it.
        at = tail.find(eot, tail.find(text) + len(text) if text and text in tail else 0)
        if at >= 0:
            tail = tail[: at + len(eot)]
    return tail


def completion_text(tokenizer: PreTrainedTokenizerBase, prompt_messages: Messages, completion: str | Messages) -> str:
    """The text of the assistant turn that the chat template renders after the generation prompt.

    The template renders ``prompt + completion``; the part after the rendered generation prompt
    is the completion, cut right after the first end-of-turn token (``tokenizer.eos_token``) that
    follows the assistant's text. The template's separator after it (ChatML's ``\\n``) is not
    something the model must predict.

    Args:
        tokenizer: the model's tokenizer (with a chat template).
        prompt_messages: the prompt messages.
        completion: a candidate title (one assistant message), or the completion messages.

    Raises:
        ChatTemplateError: the template does not render the prompt with the generation prompt as a
            prefix of the full conversation (the completion would be ill-defined).
    """
    prompt_text = render(tokenizer, prompt_messages, generation_prompt=True)
    return _completion_tail(tokenizer, prompt_messages, _as_messages(completion), prompt_text)


def encode_completion(tokenizer: PreTrainedTokenizerBase, prompt_messages: Messages, title: str) -> list[int]:
    """Token ids of a candidate's completion (title + end-of-turn), tokenized on its own."""
    ids = token_ids(tokenizer, completion_text(tokenizer, prompt_messages, title))
    if not ids:
        raise ChatTemplateError(f"candidate {title!r} has no completion tokens under this chat template")
    return ids


# --------------------------------------------------------------------------- training examples


@dataclass(frozen=True)
class EncodedExample:
    """One example as token ids.

    Attributes:
        input_ids: prompt tokens followed by completion tokens.
        labels: ``-100`` on the prompt, the token id on every completion token (end-of-turn included).
        prompt_length: number of prompt tokens (after truncation); ``input_ids[prompt_length:]`` is the completion.
        truncated: whether tokens were dropped to fit ``max_length``.
    """

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    truncated: bool = False

    @property
    def completion_ids(self) -> list[int]:
        return self.input_ids[self.prompt_length :]

    def features(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def example_messages(example: Mapping[str, Any], key: str) -> list[dict[str, str]]:
    """``example[key]`` as a list of ``{role, content}`` messages, or a :class:`TrainDataError` naming it."""
    value = example.get(key)
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise TrainDataError(
            f"example {example.get('user_id', '?')!r}: {key!r} must be a list of {{role, content}} messages "
            "(see docs/CONVENTIONS.md)"
        )
    return value


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Mapping[str, Any], max_length: int) -> EncodedExample:
    """Tokenize a prompt-completion example with the chat template and label its completion.

    The prompt ids are :func:`encode_prompt`'s, the completion ids those of :func:`completion_text`
    tokenized on its own, exactly as scoring encodes a candidate: up to and including the
    end-of-turn token, so the model learns to stop, not to emit the template's newline.

    Truncation keeps the completion: when the example is longer than ``max_length``, the oldest
    prompt tokens are dropped from the left; only a completion longer than ``max_length`` itself
    is cut on the right.

    Args:
        tokenizer: a tokenizer with a chat template.
        example: a dict with ``prompt`` and ``completion`` message lists (docs/CONVENTIONS.md).
        max_length: the maximum number of tokens.

    Returns:
        The encoded example.

    Raises:
        TrainDataError: malformed messages, or a template that cannot encode them; names the example.
    """
    uid = example.get("user_id", "?")
    prompt_msgs = example_messages(example, "prompt")
    completion_msgs = example_messages(example, "completion")
    try:
        prompt_text = render(tokenizer, prompt_msgs, generation_prompt=True)
        completion = token_ids(tokenizer, _completion_tail(tokenizer, prompt_msgs, completion_msgs, prompt_text))
    except ChatTemplateError as exc:
        raise TrainDataError(f"example {uid!r}: {exc}") from None
    prompt_ids = token_ids(tokenizer, prompt_text)
    if not completion:
        raise TrainDataError(f"example {uid!r}: the completion renders to no tokens")

    truncated = False
    if len(completion) >= max_length:
        truncated = True
        completion = completion[: max_length - 1]
        prompt_ids = prompt_ids[-1:]
    elif len(prompt_ids) + len(completion) > max_length:
        truncated = True
        prompt_ids = prompt_ids[len(prompt_ids) + len(completion) - max_length :]
    input_ids = list(prompt_ids) + list(completion)
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(completion)
    return EncodedExample(input_ids, labels, len(prompt_ids), truncated)


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Iterable[Mapping[str, Any]], max_length: int
) -> list[dict[str, list[int]]]:
    """Encode many examples into Trainer features (``input_ids``, ``labels``); logs how many were truncated."""
    out, n_truncated = [], 0
    for ex in examples:
        enc = encode_example(tokenizer, ex, max_length)
        n_truncated += enc.truncated
        out.append(enc.features())
    if n_truncated:
        log.warning("%d of %d examples were longer than max_length=%d and were truncated", n_truncated, len(out), max_length)
    return out
