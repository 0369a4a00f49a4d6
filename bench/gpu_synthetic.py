"""Synthetic inputs for ``bench/gpu_check.py``: a tokenizer, a catalog, users and training rows (a helper).

The lent GPU machine has no model files and gets 64 MiB of files per call, so the check builds
everything it needs here, at the sizes that decide speed, from libraries it has (``tokenizers``
and ``transformers``; no pydantic, no tether config):

* a word-level tokenizer (``tokenizers.WordLevel``, one token per whitespace word) with SmolLM2's
  ChatML chat template and ``<|im_end|>`` as end-of-turn and pad token, so the pipeline's own
  encoders (:func:`tether.model.train.encode_example`, :mod:`tether.eval.scoring`) run unchanged;
* titles whose token count matches the real ones: the sample catalog's completions (title +
  ``<|im_end|>``) are 13.2 tokens on average with SmolLM2's tokenizer (``bench/results/eval.json``,
  ``completion_tokens_mean``), so a title here is 7-17 words (mean 12) + the end-of-turn token;
* prompts shaped like the pipeline's: a system message of 38 words (the shared prefix is then
  ~48 tokens, as measured for the real prompts) and the last 5 titles of a history (~125 tokens
  in all; real prompts: 128.2 on average);
* an ML-100k-sized log: 943 users x 1,682 items, 20-190 interactions per user (ML-100k: at least 20,
  106 on average).
"""

from __future__ import annotations

import random
from typing import Any

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
ROLE_WORDS = ["system", "user", "assistant"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SYSTEM_WORDS = 38
HISTORY = 5
TITLE_WORDS = (7, 17)


def make_tokenizer(vocab_size: int) -> Any:
    """A fast word-level tokenizer of exactly ``vocab_size`` ids with a ChatML chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + ROLE_WORDS
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  unk_token="[UNK]", additional_special_tokens=SPECIALS[:2])
    tok.chat_template = CHATML
    return tok


def _words(rng: random.Random, n: int, vocab_words: int) -> str:
    return " ".join(f"w{rng.randrange(vocab_words)}" for _ in range(n))


def catalog(n_items: int, vocab_size: int, seed: int) -> list[str]:
    """``n_items`` distinct titles of 7-17 words."""
    rng = random.Random(seed)
    vocab_words = vocab_size - len(SPECIALS) - len(ROLE_WORDS)
    titles: dict[str, None] = {}
    while len(titles) < n_items:
        titles[_words(rng, rng.randint(*TITLE_WORDS), vocab_words)] = None
    return list(titles)


def prompt(history: list[str], system: str) -> list[dict[str, str]]:
    """The pipeline's prompt shape: system message, then the last titles, oldest first."""
    lines = "\n".join(f"- {t}" for t in history[-HISTORY:])
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Movies the user watched, oldest first:\n{lines}\nWhich movie will they watch next?"},
    ]


def users(n_users: int, titles: list[str], vocab_size: int, seed: int,
          min_history: int = 20, max_history: int = 190) -> tuple[list[list[dict[str, str]]], list[set[int]]]:
    """Per user: the prompt (last 5 titles of a random history) and the set of item indices seen."""
    rng = random.Random(seed + 1)
    vocab_words = vocab_size - len(SPECIALS) - len(ROLE_WORDS)
    system = _words(random.Random(seed + 2), SYSTEM_WORDS, vocab_words)
    prompts, seen = [], []
    for _ in range(n_users):
        items = rng.sample(range(len(titles)), min(len(titles) - 1, rng.randint(min_history, max_history)))
        prompts.append(prompt([titles[i] for i in items], system))
        seen.append(set(items))
    return prompts, seen


def training_rows(tokenizer: Any, n_rows: int, titles: list[str], replay_ratio: float, chunk_tokens: int,
                  max_length: int, vocab_size: int, seed: int) -> list[dict[str, list[int]]]:
    """The default training mix: encoded prompt-completion examples + ``replay_ratio`` of all-labelled chunks.

    Examples are encoded by the pipeline's :func:`encode_example` and mixed by its :func:`mix_replay`;
    replay chunks are ``chunk_tokens`` random ids with loss on every token (their length is what matters).
    """
    from tether.model.train import encode_example, mix_replay

    rng = random.Random(seed + 3)
    prompts, _ = users(n_rows, titles, vocab_size, seed)
    n_task = round(n_rows * (1 - replay_ratio))
    task = []
    for p in prompts[:n_task]:
        example = {"prompt": p, "completion": [{"role": "assistant", "content": rng.choice(titles)}]}
        task.append(encode_example(tokenizer, example, max_length).features())
    replay = []
    for _ in range(max(1, n_rows - n_task)):
        ids = [rng.randrange(len(SPECIALS), vocab_size) for _ in range(min(chunk_tokens, max_length))]
        replay.append({"input_ids": ids, "labels": list(ids)})
    return mix_replay(task, replay, replay_ratio, seed)[:n_rows]
