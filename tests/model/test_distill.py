"""Learning-without-Forgetting distillation: the loss, the rows, and training with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import GENERAL_TEXT, build_tiny_model, build_tiny_tokenizer, make_examples

from tether.config import load_config
from tether.model.loss import IGNORE_INDEX, completion_loss, kl_to_teacher
from tether.model.replay import build_replay_chunks, chat_rows, distill_prompt_tokens, is_replay, mix_replay
from tether.model.train import CompletionCollator, build_lora_model, encode_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _peft(tokenizer, b_scale: float = 0.3, seed: int = 0):
    model = build_lora_model(build_tiny_model(tokenizer), load_config(profile="test").train, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * b_scale)
    return model


def _batch(tokenizer, tmp_path):
    corpus = tmp_path / "replay"
    corpus.mkdir(exist_ok=True)
    (corpus / "a.txt").write_text(" ".join(GENERAL_TEXT * 2), encoding="utf-8")
    replay = build_replay_chunks(tokenizer, corpus, chunk_tokens=24, distill=True)[:2]
    task = encode_examples(tokenizer, make_examples(2, seed=3), 128)
    return replay, task, CompletionCollator(tokenizer.pad_token_id)(task + replay)


def test_distilled_loss_equals_a_hand_computed_kl_plus_the_task_cross_entropy(tokenizer, tmp_path) -> None:
    model = _peft(tokenizer)
    replay, task, batch = _batch(tokenizer, tmp_path)
    assert batch["distill_mask"].dtype == torch.bool and batch["distill_mask"][:2].sum() == 0
    with torch.no_grad():
        total, n = completion_loss(model, batch, distill_weight=0.7)
        # By hand, one row at a time with full logits: the base is the same weights without LoRA.
        ce = kl = 0.0
        for row in task:
            ids = torch.tensor([row["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            labels = torch.tensor(row["labels"][1:])
            keep = labels != IGNORE_INDEX
            ce += F.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
        for row in replay:
            ids = torch.tensor([row["input_ids"]])
            student = model(input_ids=ids).logits[0, :-1]
            with model.disable_adapter():
                teacher = model(input_ids=ids).logits[0, :-1]
            p = torch.softmax(teacher, -1)
            kl += (p * (torch.log(p) - torch.log_softmax(student, -1))).sum().item()
    assert kl > 0.01  # the adapter moved the model: there is something to distil back
    assert float(total) == pytest.approx(ce + 0.7 * kl, rel=1e-4)
    assert int(n) == sum(sum(1 for t in r["labels"][1:] if t != IGNORE_INDEX) for r in task + replay)


def test_at_initialisation_the_distilled_rows_cost_and_pull_nothing(tokenizer, tmp_path) -> None:
    """LoRA starts at B = 0: the model *is* the base, the KL is 0 and so is its gradient."""
    model = _peft(tokenizer, b_scale=0.0)
    replay, _, _ = _batch(tokenizer, tmp_path)
    batch = CompletionCollator(tokenizer.pad_token_id)(replay)
    loss, _ = completion_loss(model, batch)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)
    loss.backward()
    grads = [p.grad.abs().max().item() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    assert grads and max(grads) < 1e-6
    # The same rows learned as tokens (cross-entropy) are a language-modelling loss, not zero.
    as_tokens = CompletionCollator(tokenizer.pad_token_id)([{k: r[k] for k in ("input_ids", "labels")} for r in replay])
    assert float(completion_loss(model, as_tokens)[0]) > 1.0


def test_kl_to_teacher_matches_torch_kl_div() -> None:
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 11, generator=gen), torch.randn(5, 11, generator=gen)
    ref = F.kl_div(torch.log_softmax(s, -1), torch.log_softmax(t, -1), log_target=True, reduction="sum")
    assert float(kl_to_teacher(s, t)) == pytest.approx(float(ref), rel=1e-5)


def test_chat_rows_prompt_distillation_and_mixing(tokenizer) -> None:
    from tether.eval.selfsamples import SampleRow

    rows = chat_rows([SampleRow("ss1-0", [1, 2, 3], [4, 5, 6, 7])], max_length=5)
    assert rows == [{"input_ids": [3, 4, 5, 6, 7], "labels": [3, 4, 5, 6, 7], "distill_mask": [1] * 5}]
    task = encode_examples(tokenizer, make_examples(3, seed=1), 128)
    distilled = distill_prompt_tokens(task)
    for before, after in zip(task, distilled):
        n_prompt = sum(1 for t in before["labels"] if t == IGNORE_INDEX)
        assert after["distill_mask"] == [1] * n_prompt + [0] * (len(before["labels"]) - n_prompt)
        assert after["labels"][n_prompt:] == before["labels"][n_prompt:] and after["labels"][:n_prompt] == before["input_ids"][:n_prompt]
        assert not is_replay(after) and is_replay(rows[0])
    mixed = mix_replay(task * 3, rows, 0.25, seed=0)
    assert sum(is_replay(r) for r in mixed) == 3


def test_training_with_distilled_replay_keeps_text_closer_to_the_base_than_token_replay(tokenizer, tmp_path) -> None:
    """Same steps, same rows: distilled replay moves the model's text distribution less than token replay."""
    from tether.model.train import fit

    corpus = tmp_path / "replay"
    corpus.mkdir()
    (corpus / "a.txt").write_text(" ".join(GENERAL_TEXT * 4), encoding="utf-8")
    task = encode_examples(tokenizer, make_examples(24, seed=1), 128)
    held = CompletionCollator(tokenizer.pad_token_id)(build_replay_chunks(tokenizer, corpus, 24)[-2:])
    drift = {}
    for mode in ("tokens", "distill"):
        cfg = load_config(profile="test", overrides={"train": {"max_steps": 12, "learning_rate": 0.02, "eval_every": 12,
                                                               "save_every": 12, "replay": {"ratio": 0.5, "mode": mode}}})
        replay = build_replay_chunks(tokenizer, corpus, 24, distill=mode == "distill")[:-2]
        rows = mix_replay(task, replay, 0.5, seed=0)
        out = fit(build_tiny_model(tokenizer), tokenizer, rows, None, cfg.train, tmp_path / mode, seed=0)
        with torch.no_grad():
            student = out.model(**{k: held[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
            with out.model.disable_adapter():
                teacher = out.model(**{k: held[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
        mask = held["attention_mask"].bool()
        drift[mode] = float(kl_to_teacher(student[mask], teacher[mask]) / mask.sum())
    assert drift["distill"] < 0.5 * drift["tokens"], drift
