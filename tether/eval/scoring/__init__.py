"""Score candidate item titles under a user's prompt: the ranking protocol's likelihood.

An item's score is the log-likelihood of its *completion tokens* given the prompt, where the
completion is tokenized exactly like a training completion: the prompt is rendered by the chat
template with the generation prompt (``<|im_start|>assistant\\n`` for ChatML), the assistant turn
that the template renders after it is cut right after the end-of-turn token (the title followed
by ``<|im_end|>``; the template's trailing newline is not part of what the model must predict),
and the two parts are tokenized *separately* and their ids concatenated. Tokenizing the joined
text instead could merge tokens across the boundary and change the scores.

Two rules come out of one pass (the pinned protocol ranks by the mean; a config
setting may pick the sum, which favours titles with unpredictable endings less):

* ``mean``: mean log-likelihood per completion token (end-of-turn included);
* ``sum``: summed log-likelihood of the completion tokens.

Two implementations return the same numbers (within float error; the tests hold them to 1e-4):

* :func:`score_candidates_naive` runs every prompt + candidate sequence in full;
* :func:`score_candidates` runs the prompt once, keeps its KV cache and scores the
  candidates *packed* against it: their tokens are concatenated into one row, position ids
  continue after the prompt for each candidate, and a 4D attention mask lets each candidate
  see the prompt and its own earlier tokens only, so no padding is computed and the cache is
  never copied per candidate. The last completion token never has to be fed, and the first
  one is predicted by the prompt's last logits, so a one-token completion costs no forward
  pass at all. :func:`rank_users` also runs the prefix that every user's prompt shares (the
  system prompt, the template's first line) once per model, via :func:`shared_prompt_prefix`.
  See ``bench/bench_eval.py`` for the speed-ups on SmolLM2-135M.

Both work on a plain ``transformers`` causal LM, on a ``peft`` model (the candidate) and
inside ``with peft_model.disable_adapter():`` (the base model, without reloading it).

The modules: :mod:`~tether.eval.scoring.result` (:class:`ScoreResult`, the two rules),
:mod:`~tether.eval.scoring.naive` (the reference), :mod:`~tether.eval.scoring.packed` (the
KV-cached packed scorer and the shared prefix), :mod:`~tether.eval.scoring.rank` (every user).
"""

from __future__ import annotations

# One chat encoding for training and scoring (tether.chat) and one device / eval-mode /
# logits_to_keep lookup (tether.model.device), re-exported under the names this module has always had.
from tether.chat import Messages, completion_text, encode_completion, encode_prompt
from tether.chat import render as _render
from tether.chat import token_ids as _ids
from tether.eval.scoring.naive import score_candidates_naive
from tether.eval.scoring.packed import PromptPrefix, score_candidates, shared_prompt_prefix
from tether.eval.scoring.rank import rank_users
from tether.eval.scoring.result import ScoreResult, ScoreRule
from tether.model.device import base_of as _base_of
from tether.model.device import eval_mode, supports_logits_to_keep
from tether.model.device import input_device as _input_device

__all__ = [
    "Messages",
    "PromptPrefix",
    "ScoreResult",
    "ScoreRule",
    "completion_text",
    "encode_completion",
    "encode_prompt",
    "eval_mode",
    "rank_users",
    "score_candidates",
    "score_candidates_naive",
    "shared_prompt_prefix",
    "supports_logits_to_keep",
    "_base_of",
    "_ids",
    "_input_device",
    "_render",
]
