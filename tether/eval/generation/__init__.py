"""Free generation for the generation-health gate and the valid-item rate.

Decoding is fixed so candidate and base are compared on equal terms and reruns give the same
text: greedy (``do_sample=False``, one beam), the model's own repetition settings unless the
caller passes others, a fixed token budget, and stopping at the end-of-turn token. Prompts are
rendered with the chat template exactly like training and scoring render them
(:func:`tether.chat.encode_prompt`) and batched with LEFT padding, so every row's
last prompt token sits at the same position and new tokens are appended right after it;
the attention mask hides the padding, and transformers derives position ids from it.

Everything works on a plain ``transformers`` causal LM, on a ``peft`` model (the candidate)
and inside ``with peft_model.disable_adapter():`` (the base model), so one loaded model
serves both sides of the comparis

The modules: :mod:`~tether.eval.generation.golden` (the golden prompts file),
:mod:`~tether.eval.generation.decode` (greedy generation), :mod:`~tether.eval.generation.health`
(health metrics and side-by-side rows).
"""

from __future__ import annotations

from tether.chat import Messages
from tether.eval.generation.decode import (
    _check_context,
    _eos_ids,
    _greedy_config,
    _padding_side,
    _with_system,
    free_generation_titles,
    generate,
)
from tether.eval.generation.golden import GOLDEN_PROMPTS_PATH, GoldenPrompt, GoldenPromptError, load_golden_prompts
from tether.eval.generation.health import generation_health, side_by_side
from tether.model.device import eval_mode
from tether.model.device import input_device as _input_device

__all__ = [
    "GOLDEN_PROMPTS_PATH",
    "GoldenPrompt",
    "GoldenPromptError",
    "Messages",
    "eval_mode",
    "free_generation_titles",
    "generate",
    "generation_health",
    "load_golden_prompts",
    "side_by_side",
    # Private, but tether.eval.selfsamples samples with the same decoding.
    "_check_context",
    "_eos_ids",
    "_greedy_config",
    "_input_device",
    "_padding_side",
    "_with_system",
]
