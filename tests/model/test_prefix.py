"""The shared prompt prefix: found, stripped at collation, run once per batch, and the same loss as full rows."""

from __future__ import annotations

import pytest
import torch
from tiny import GENERAL_TEXT, build_tiny_model, build_tiny_tokenizer, make_examples

from tether.config import load_config
from tether.model.loss import IGNORE_INDEX, completion_loss
from tether.model.prefix import common_prefix, real_tokens, shared_prefix, shares_prefix
from tether.eval.selfsamples import SampleRow
from tether.model.replay import build_replay_chunks, chat_rows
from tether.model.train import CompletionCollator, build_lora_model, encode_examples, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _peft(tokenizer, seed: int = 0):
    model = build_lora_model(build_tiny_model(tokenizer), load_config(profile="test").train, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a non-zero adapter, so the prefix's keys and values depend on trained weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.train()


def _rows(tokenizer, tmp_path, distill: bool = False):
    corpus = tmp_path / "replay"
    corpus.mkdir(exist_ok=True)
    (corpus / "a.txt").write_text(" ".join(GENERAL_TEXT * 2), encoding="utf-8")
    replay = build_replay_chunks(tokenizer, corpus, chunk_tokens=24, distill=distill)[:2]
    task = encode_examples(tokenizer, make_examples(5, seed=3), 128)
    return task, replay


def test_common_prefix_keeps_every_sequence_a_token_of_its_own() -> None:
    assert common_prefix([[1, 2, 3, 4, 9], [1, 2, 3, 5, 9]], min_tokens=2) == [1, 2, 3]
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]], min_tokens=2) == [1, 2]  # one short of the shortest
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]], min_tokens=3) == []
    assert common_prefix([[7, 1], [8, 1]], min_tokens=0) == []
    assert common_prefix([], min_tokens=0) == []


def test_the_prefix_is_the_longest_common_start_of_the_prompt_rows(tokenizer, tmp_path) -> None:
    task, replay = _rows(tokenizer, tmp_path)
    prefix = shared_prefix(task + replay)  # replay rows (no ignored label) do not shorten it
    assert len(prefix) >= 8
    assert all(r["input_ids"][: len(prefix)] == prefix for r in task)
    # It is the longest: the next token differs between two prompt rows.
    assert len({tuple(r["input_ids"][: len(prefix) + 1]) for r in task}) > 1
    assert tokenizer.decode(prefix).startswith("<|im_start|>system")
    assert all(shares_prefix(r, prefix) for r in task)
    assert not any(shares_prefix(r, prefix) for r in replay)


def test_rows_that_learn_from_inside_the_prefix_do_not_share_it(tokenizer, tmp_path) -> None:
    task, _ = _rows(tokenizer, tmp_path)
    prefix = shared_prefix(task)
    labelled = dict(task[0], labels=list(task[0]["labels"]))
    labelled["labels"][3] = labelled["input_ids"][3]
    distilled = dict(task[1], distill_mask=[0] * 5 + [1] + [0] * (len(task[1]["input_ids"]) - 6))
    only_prefix = {"input_ids": prefix, "labels": [IGNORE_INDEX] * len(prefix)}
    assert not shares_prefix(labelled, prefix)
    assert not shares_prefix(distilled, prefix)
    assert not shares_prefix(only_prefix, prefix)
    # Distilled prompt rows are not prompt rows for the search either, and a short common start is no prefix.
    assert shared_prefix([distilled]) == []
    assert shared_prefix(task, min_tokens=10_000) == []


@pytest.mark.parametrize("distill", [False, True])
def test_loss_and_gradients_equal_those_of_the_full_rows(tokenizer, tmp_path, distill) -> None:
    task, replay = _rows(tokenizer, tmp_path, distill=distill)
    rows = task[:3] + replay + task[3:]
    prefix = shared_prefix(rows)
    full = CompletionCollator(tokenizer.pad_token_id)(rows)
    shared = CompletionCollator(tokenizer.pad_token_id, prefix=prefix)(rows)
    assert shared["prefix_rows"].tolist() == [True] * 3 + [False] * 2 + [True] * 2
    assert shared["input_ids"].shape[1] < full["input_ids"].shape[1]
    assert int(real_tokens(shared)) == int(full["attention_mask"].sum()) == sum(len(r["input_ids"]) for r in rows)

    model = _peft(tokenizer)
    grads = []
    for batch in (full, shared):
        model.zero_grad()
        loss_sum, n = completion_loss(model, batch)
        loss_sum.backward()
        grads.append((float(loss_sum), int(n), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}))
    (s_full, n_full, g_full), (s_shared, n_shared, g_shared) = grads
    assert n_full == n_shared
    assert s_shared == pytest.approx(s_full, rel=1e-5)
    for name, g in g_full.items():
        # float32 sums in another order: equal to ~1e-6 of the gradient's scale
        assert float((g_shared[name] - g).abs().max()) <= 1e-4 * float(g.abs().max()), name


def test_distilled_rows_that_start_like_a_prompt_keep_their_own_tokens(tokenizer) -> None:
    task = encode_examples(tokenizer, make_examples(3, seed=1), 128)
    # A chat answer of the base under the same system prompt: every token distilled (tether.model.replay.chat_rows).
    chat = chat_rows([SampleRow("s", task[0]["input_ids"][:-4], task[0]["input_ids"][-4:])], 128)
    prefix = shared_prefix(task + chat)
    assert chat[0]["input_ids"][: len(prefix)] == prefix
    batch = CompletionCollator(tokenizer.pad_token_id, prefix=prefix)(task + chat)
    assert batch["prefix_rows"].tolist() == [True, True, True, False]


def test_training_with_the_shared_prefix_follows_the_same_curve(tokenizer, tmp_path) -> None:
    from transformers import TrainerCallback

    class Seen(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            self.tokens = state.num_input_tokens_seen

    feats = encode_examples(tokenizer, make_examples(16, seed=2), 128)
    curves, seen = {}, {}
    for share in (False, True):
        cfg = load_config(profile="test", overrides={"train": {
            "max_steps": 4, "batch_size": 4, "learning_rate": 0.05, "share_prompt_prefix": share, "precision": "fp32",
            "save_every": 100, "eval_every": 100, "early_stopping_patience": None}}).train
        counter = Seen()
        result = fit(build_tiny_model(tokenizer), tokenizer, feats, None, cfg, tmp_path / f"run{share}", seed=0,
                     callbacks=[counter])
        assert result.prefix_tokens == (len(shared_prefix(feats)) if share else 0)
        curves[share] = [loss for _, loss in result.train_loss]
        seen[share] = counter.tokens
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)
    assert curves[True][-1] < curves[True][0]
    # Throughput counts every row's real tokens, the shared prefix once per row: 4 steps x 4 rows = all 16.
    assert seen[True] == seen[False] == sum(len(f["input_ids"]) for f in feats)
