"""Chat examples (content, truncation, genres, stats) and the prepare stage end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tether.config import ExamplesConfig, load_config
from tether.data.examples import build_examples, example_stats
from tether.data.generate import generate_tables
from tether.data.prepare import run_prepare
from tether.data.split import leave_last_out

SYSTEM = "You recommend movies."
TITLES = ["Alpha (2001)", "Bravo (2002)", "Charlie (2003)", "Delta (2004)", "Echo (2005)", "Foxtrot (2006)"]


@pytest.fixture
def one_user() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame({
        "item_id": [f"m{k}" for k in range(6)],
        "title": TITLES,
        "genres": ["Drama", "Crime|Drama", "", "Comedy", "Drama", "Sci-Fi"],
        "description": [""] * 6,
        "source_row": np.arange(1, 7, dtype=np.int64),
    })
    # Watched m0..m5 in that order (rows shuffled): train m0-m3, validation m4, test m5.
    order = [3, 0, 5, 1, 4, 2]
    inter = pd.DataFrame({
        "user_id": ["u1"] * 6,
        "item_id": [f"m{k}" for k in order],
        "timestamp": np.array([100 * (k + 1) for k in order], dtype=np.int64),
        "rating": np.full(6, 4.0),
        "source_row": np.arange(1, 7, dtype=np.int64),
    })
    return leave_last_out(inter), items


def _user_msg(*titles: str) -> str:
    lines = "\n".join(f"- {t}" for t in titles)
    return f"Movies the user watched, oldest first:\n{lines}\nWhich movie will they watch next?"


def test_examples_of_one_user_exactly(one_user) -> None:
    inter, items = one_user
    cfg = ExamplesConfig(history_length=2, system_prompt=SYSTEM)
    ex = build_examples(inter, items, cfg)
    assert [(e["split"], e["history_item_ids"], e["item_id"]) for e in ex] == [
        ("train", ["m0"], "m1"),
        ("train", ["m0", "m1"], "m2"),
        ("train", ["m1", "m2"], "m3"),  # history truncated to the 2 most recent
        ("validation", ["m2", "m3"], "m4"),  # the last 2 train items
        ("test", ["m3", "m4"], "m5"),  # the last 2 items before it: train + validation
    ]
    assert ex[-1] == {
        "user_id": "u1",
        "split": "test",
        "item_id": "m5",
        "history_item_ids": ["m3", "m4"],
        "prompt": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": _user_msg("Delta (2004)", "Echo (2005)")},
        ],
        "completion": [{"role": "assistant", "content": "Foxtrot (2006)"}],
    }
    assert ex[0]["prompt"][1]["content"] == _user_msg("Alpha (2001)")
    assert list(ex[0]) == ["user_id", "split", "item_id", "history_item_ids", "prompt", "completion"]
    json.dumps(ex)  # JSONL-ready


def test_train_cap_keeps_the_latest_positions(one_user) -> None:
    inter, items = one_user
    ex = build_examples(inter, items, ExamplesConfig(history_length=5, max_train_examples_per_user=1))
    assert [(e["split"], e["item_id"]) for e in ex] == [("train", "m3"), ("validation", "m4"), ("test", "m5")]
    assert ex[0]["history_item_ids"] == ["m0", "m1", "m2"]
    assert ex[2]["history_item_ids"] == ["m0", "m1", "m2", "m3", "m4"]


def test_genres_go_into_the_prompt_only(one_user) -> None:
    inter, items = one_user
    ex = build_examples(inter, items, ExamplesConfig(history_length=3, include_genres=True))
    val = next(e for e in ex if e["split"] == "validation")
    assert val["prompt"][1]["content"] == _user_msg("Bravo (2002) (Crime, Drama)", "Charlie (2003)", "Delta (2004) (Comedy)")
    assert val["completion"][0]["content"] == "Echo (2005)"


def test_stats_without_tokenizer_count_words(one_user) -> None:
    inter, items = one_user
    ex = build_examples(inter, items, ExamplesConfig(history_length=2, system_prompt=SYSTEM))
    stats = example_stats(ex)
    assert stats["examples"] == {"train": 3, "validation": 1, "test": 1, "total": 5}
    assert stats["users"] == {"train": 1, "validation": 1, "test": 1, "total": 1}
    assert stats["length_unit"] == "whitespace_words"
    test_len = stats["lengths"]["test"]
    # System 3 words; user: header 6 + two "- Title (Year)" lines of 3 + question 6; completion 2.
    assert test_len["prompt"]["max"] == 3 + 6 + 2 * 3 + 6 and test_len["completion"]["max"] == 2
    assert test_len["total"]["max"] == 23


def _tiny_chat_tokenizer(lines: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


def test_stats_with_a_tokenizer_count_chat_template_tokens(one_user) -> None:
    inter, items = one_user
    ex = build_examples(inter, items, ExamplesConfig(history_length=2, system_prompt=SYSTEM))
    corpus = [m["content"] for e in ex for m in e["prompt"] + e["completion"]] + ["system user assistant"]
    tok = _tiny_chat_tokenizer(corpus)
    stats = example_stats(ex, tokenizer=tok)
    assert stats["length_unit"] == "tokens"
    test_ex = ex[-1]
    prompt_ids = tok(tok.apply_chat_template(test_ex["prompt"], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    assert stats["lengths"]["test"]["prompt"]["max"] == len(prompt_ids)
    # Completion: "Foxtrot ( 2006 )" + <|im_end|> -> 5 tokens (no [UNK]: all words were in the corpus).
    assert stats["lengths"]["test"]["completion"]["max"] == 5
    assert tok.unk_token_id not in prompt_ids
    all_len = stats["lengths"]["all"]
    assert all_len["total"]["min"] == all_len["prompt"]["min"] + 5
    assert all_len["prompt"]["min"] <= all_len["prompt"]["p50"] <= all_len["prompt"]["p95"] <= all_len["prompt"]["max"]
    assert stats["lengths_measured_on"] == {"train": 3, "validation": 1, "test": 1, "total": 5}

    # A cap measures an evenly spaced sample per split; counts still cover every example.
    capped = example_stats(ex, tokenizer=tok, max_token_examples=2)
    assert capped["lengths_measured_on"] == {"train": 2, "validation": 1, "test": 1, "total": 4}
    assert capped["examples"]["train"] == 3
    assert capped["lengths"]["test"] == stats["lengths"]["test"]


def _write_validated(root: Path, cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = generate_tables(cfg.generate, cfg.seed)
    inter = data.interactions.copy()
    # A duplicate and a short user, so cleaning has something to remove.
    dup = inter.iloc[[0]].assign(timestamp=inter["timestamp"].iloc[0] + 10, source_row=len(inter) + 1)
    short = inter.iloc[[0, 1]].assign(user_id="short", source_row=[len(inter) + 2, len(inter) + 3])
    inter = pd.concat([inter, dup, short], ignore_index=True)
    validated = root / "data" / "validated"
    validated.mkdir(parents=True)
    inter.to_parquet(validated / "interactions.parquet", index=False)
    data.items.to_parquet(validated / "items.parquet", index=False)
    return inter, data.items


def test_run_prepare_writes_every_output(tmp_path: Path) -> None:
    cfg = load_config(profile="test")
    inter, items = _write_validated(tmp_path, cfg)
    summary = run_prepare(cfg, tmp_path)

    processed = tmp_path / "data" / "processed"
    acc = summary.accounting
    assert acc["interactions"]["rows_in"] == len(inter) == summary.interactions_kept + summary.interactions_removed
    assert acc["items"]["rows_in"] == len(items) == acc["items"]["kept"] + acc["items"]["quarantined"]
    assert summary.removed_by_stage == {"duplicate": 1, "k_core": 2}
    df = pd.read_parquet(processed / "interactions.parquet")
    assert len(df) == summary.interactions_kept and set(df["split"]) == {"train", "validation", "test"}
    assert len(pd.read_parquet(processed / "items.parquet")) == acc["items"]["kept"]
    quarantine = pd.read_csv(tmp_path / "data" / "quarantine" / "cleaning.csv")
    assert len(quarantine) == summary.interactions_removed + acc["items"]["quarantined"]
    assert {"table", "stage", "reason", "source_row"} <= set(quarantine.columns)

    for split in ("train", "validation", "test"):
        lines = (processed / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == summary.examples[split]
        first = json.loads(lines[0])
        assert first["split"] == split and first["prompt"][0]["role"] == "system"
    assert summary.examples["test"] == summary.users == cfg.generate.n_users
    stats = json.loads((processed / "stats.json").read_text(encoding="utf-8"))
    assert stats["cleaning"]["interactions_in"] == len(inter)
    assert stats["examples"]["examples"]["train"] == summary.examples["train"]
    assert stats["split"]["rows"]["test"] == summary.users
    assert any("kept" in line for line in summary.lines())
    json.dumps(summary.to_dict())


def test_run_prepare_without_validated_data_says_what_to_do(tmp_path: Path) -> None:
    from tether.data.errors import DataError

    with pytest.raises(DataError, match="run the validate stage first"):
        run_prepare(load_config(profile="test"), tmp_path)


def test_prompt_template_needs_the_history_placeholder() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="history"):
        ExamplesConfig(prompt_template="What next?")
    cfg = ExamplesConfig(prompt_template="Seen:\n{history}\nNext?", system_prompt=SYSTEM)
    from tether.data.examples import build_prompt

    assert build_prompt(["A (1)", "B (2)"], cfg)[1]["content"] == "Seen:\n- A (1)\n- B (2)\nNext?"
