"""Test helpers: a tiny random Llama, a small ChatML tokenizer trained on the spot, example fixtures.

Imported in tests as ``from tiny import ...`` (pytest puts ``tests/`` on ``sys.path``).
Everything is seeded: the same call builds the same model, tokenizer and examples.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# The same shape as SmolLM2's template: ChatML, an end-of-turn token after every message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SYSTEM_PROMPT = "You are a movie recommender. Reply with the title of the movie they will watch next."

# Numbered series make the next item predictable, so a tiny model can learn something in a few steps.
_SERIES = ["Silent Harbor", "Iron Meadow", "Crimson Tide Falls", "Paper Moon Road", "Glass River",
           "Northern Lights", "Hidden Garden", "Last Orchard"]
TITLES = [f"{name} Part {i}" for name in _SERIES for i in range(1, 7)]

GENERAL_TEXT = [
    "The river ran quietly past the old mill, where children once gathered to watch the wheel turn.",
    "A good recipe begins with patience: the onions need time before the garlic joins them.",
    "In the spring the hills turn green and the farmers count the lambs born overnight.",
    "Libraries keep more than books; they keep the habits of a town and the questions of its people.",
    "The train was late again, so the passengers shared their bread and told each other stories.",
    "Mathematics rewards those who write down every step, even the ones that seem obvious.",
]


def _training_lines(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = rng.randint(2, 5)
        lines.append(", ".join(rng.choice(TITLES) for _ in range(k)))
        lines.append(rng.choice(GENERAL_TEXT))
    lines += [SYSTEM_PROMPT, "user", "assistant", "system", "They watched:", "Next:"] * 5
    return lines


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with ChatML specials; pad = eos = ``<|im_end|>`` like SmolLM2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_lines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=IM_END,
        unk_token=None,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        model_max_length=int(1e30),  # like SmolLM2: code must truncate explicitly
    )


def build_tiny_model(tokenizer, seed: int = 0, num_layers: int = 2):
    """A randomly initialised Llama: 2 layers, hidden 64, intermediate 128, 4 heads, tied embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # 10x the usual 0.02: with tied embeddings that small, a LoRA on a 64-wide model can move
        # the logits by barely a nat, and "the loss decreases" would need hundreds of steps.
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def build_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """Save a tiny model + tokenizer (safetensors, ``save_pretrained``) into ``path``; returns it."""
    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_example(history: list[str], target: str, user_id: str = "1", split: str = "train") -> dict[str, Any]:
    """One example in the CONVENTIONS JSONL shape."""
    return {
        "user_id": user_id,
        "split": split,
        "item_id": str(TITLES.index(target)) if target in TITLES else "0",
        "history_item_ids": [str(TITLES.index(t)) for t in history if t in TITLES],
        "prompt": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "They watched: " + "; ".join(history) + ". Next:"},
        ],
        "completion": [{"role": "assistant", "content": target}],
    }


def make_examples(n: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """``n`` learnable examples: the history is parts of one series, the target is the next part."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = rng.choice(_SERIES)
        last = rng.randint(2, 6)
        first = max(1, last - rng.randint(1, 4))
        history = [f"{name} Part {j}" for j in range(first, last)]
        out.append(make_example(history, f"{name} Part {last}", user_id=str(i), split=split))
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_project(root: Path, n_train: int = 32, n_val: int = 8, corpus: bool = True) -> Path:
    """A project root with ``data/processed/{train,validation}.jsonl`` and replay/heldout corpora."""
    root = Path(root)
    write_jsonl(root / "data/processed/train.jsonl", make_examples(n_train, seed=1))
    write_jsonl(root / "data/processed/validation.jsonl", make_examples(n_val, seed=2, split="validation"))
    if corpus:
        replay = root / "tether/resources/corpus/replay"
        heldout = root / "tether/resources/corpus/heldout"
        replay.mkdir(parents=True, exist_ok=True)
        heldout.mkdir(parents=True, exist_ok=True)
        (replay / "general.txt").write_text("\n\n".join(GENERAL_TEXT[:4] * 6), encoding="utf-8")
        (heldout / "heldout.txt").write_text(
            "A held-out paragraph about lighthouses and the keepers who tended them through long winters.\n\n"
            + GENERAL_TEXT[5],
            encoding="utf-8",
        )
    return root


def reset_mlflow_globals():
    """A generator fixture body: restore MLflow's process-wide tracking URI, registry URI and experiment afterwards.

    ``setup_tracking`` (like ``mlflow.set_tracking_uri``) sets process globals; a test that points
    them at its tmp_path must not leave later tests writing into a deleted folder. The same holds
    for ``mlflow.set_registry_uri``: left set, every later ``MlflowClient(uri)`` built without a
    ``registry_uri`` would read model versions from this test's store instead of its own.
    """
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking.fluent as fluent

    import os

    before = mlflow.get_tracking_uri()
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    # The raw setting (None = "follow the tracking URI"), not get_registry_uri()'s resolved value.
    registry_before = registry_utils._registry_uri
    registry_env_before = os.environ.get("MLFLOW_REGISTRY_URI")
    yield
    mlflow.set_tracking_uri(before)
    # set_tracking_uri / set_registry_uri also write the environment variables: put back exactly what was there.
    for name, value in (("MLFLOW_TRACKING_URI", env_before), ("MLFLOW_REGISTRY_URI", registry_env_before)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    registry_utils._registry_uri = registry_before
    fluent._active_experiment_id = None
