"""Candidate scoring: prefix-cached scores equal full-sequence scores and a hand computation.

The unit tests use the tiny random Llama and ChatML tokenizer from ``tests/tiny.py`` (real
forward passes, a few ms each). A random model gives candidates clearly different scores, so
any mistake in positions, masks, cache expansion or token alignment shows up as a mismatch.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from tiny import TITLES, build_tiny_model, make_example

from tether.eval.scoring import (
    ScoreResult,
    completion_text,
    encode_completion,
    encode_prompt,
    rank_users,
    score_candidates,
    score_candidates_naive,
    shared_prompt_prefix,
)

# Different lengths (1 to ~15 tokens), titles that share prefixes, a title that is a prefix
# of another, and a duplicate.
CANDIDATES = [
    "Silent Harbor Part 1",
    "Silent Harbor Part 12",
    "Silent Harbor",
    "Silent",
    "Glass River Part 3",
    "Z",
    "A considerably longer title than all of the others, with punctuation: Part 7",
    "Silent Harbor Part 1",
    "Iron Meadow Part 2",
]


@pytest.fixture(scope="module")
def prompt():
    return make_example(TITLES[:4], TITLES[4])["prompt"]


def _hand_scores(model, tokenizer, prompt, title) -> tuple[float, int]:
    """The summed log-likelihood from log_softmax of one forward pass over prompt + completion."""
    p = encode_prompt(tokenizer, prompt)
    c = encode_completion(tokenizer, prompt, title)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + c])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    total = sum(float(logp[len(p) - 1 + j, tok]) for j, tok in enumerate(c))
    return total, len(c)


def test_completion_is_title_then_end_of_turn(tokenizer, prompt):
    assert completion_text(tokenizer, prompt, "Glass River Part 3") == "Glass River Part 3<|im_end|>"
    ids = encode_completion(tokenizer, prompt, "Glass River Part 3")
    assert ids[-1] == tokenizer.eos_token_id
    assert ids == tokenizer("Glass River Part 3<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(encode_prompt(tokenizer, prompt)).endswith("<|im_start|>assistant\n")


def test_tokenization_matches_training(tokenizer):
    """Scores are comparable with training: same prompt ids, same completion ids as encode_example."""
    train = pytest.importorskip("tether.model.train")
    for history, target in [(TITLES[:3], TITLES[3]), (TITLES[10:12], "Z"), (TITLES[:1], CANDIDATES[6])]:
        example = make_example(history, target)
        enc = train.encode_example(tokenizer, example, max_length=1024)
        assert enc.input_ids[: enc.prompt_length] == encode_prompt(tokenizer, example["prompt"])
        assert enc.input_ids[enc.prompt_length :] == encode_completion(tokenizer, example["prompt"], target)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 32])
def test_cached_equals_naive(model, tokenizer, prompt, batch_size):
    naive = score_candidates_naive(model, tokenizer, prompt, CANDIDATES, batch_size=batch_size)
    cached = score_candidates(model, tokenizer, prompt, CANDIDATES, batch_size=batch_size)
    np.testing.assert_array_equal(cached.n_tokens, naive.n_tokens)
    np.testing.assert_allclose(cached.sum, naive.sum, atol=1e-4, rtol=0)
    np.testing.assert_allclose(cached.mean, naive.mean, atol=1e-4, rtol=0)
    # The comparison means something only if the candidates are told apart.
    assert np.ptp(naive.mean) > 0.05
    assert len(set(naive.n_tokens.tolist())) >= 4
    # The duplicate title gets the same score wherever it lands in a batch.
    assert cached.sum[0] == pytest.approx(cached.sum[7], abs=1e-5)


def test_batch_size_does_not_change_scores(model, tokenizer, prompt):
    one = score_candidates(model, tokenizer, prompt, CANDIDATES, batch_size=1)
    many = score_candidates(model, tokenizer, prompt, CANDIDATES, batch_size=32)
    np.testing.assert_allclose(one.sum, many.sum, atol=1e-4, rtol=0)


def test_packed_candidates_do_not_see_each_other(model, tokenizer, prompt):
    """A candidate's score is the same alone and packed beside others (the 4D mask isolates them)."""
    packed = score_candidates(model, tokenizer, prompt, CANDIDATES, batch_size=len(CANDIDATES))
    for i, title in enumerate(CANDIDATES):
        alone = score_candidates(model, tokenizer, prompt, [title])
        assert packed.sum[i] == pytest.approx(float(alone.sum[0]), abs=1e-4)


def test_shared_prompt_prefix(model, tokenizer):
    prompts = [make_example(TITLES[i : i + 3], TITLES[i + 3])["prompt"] for i in (0, 10, 20)]
    prefix = shared_prompt_prefix(model, tokenizer, prompts)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    assert prefix is not None and len(prefix) >= 8
    # The longest common prefix of the three prompts' ids, one token short of where they differ.
    assert all(tuple(ids[: len(prefix)]) == prefix.ids for ids in encoded)
    assert len({ids[len(prefix)] for ids in encoded}) > 1 or len(prefix) == min(map(len, encoded)) - 1
    assert len(prefix.kv) == model.config.num_hidden_layers
    for p in prompts:
        with_prefix = score_candidates(model, tokenizer, p, CANDIDATES, prefix=prefix)
        without = score_candidates_naive(model, tokenizer, p, CANDIDATES)
        np.testing.assert_allclose(with_prefix.sum, without.sum, atol=1e-4, rtol=0)
    # A prefix from other prompts (a different system message) is not used: scores stay right.
    other = [[{"role": "system", "content": "Something else entirely, long enough to share"}, *p[1:]] for p in prompts]
    foreign = shared_prompt_prefix(model, tokenizer, other)
    assert foreign is not None and foreign.ids != prefix.ids
    result = score_candidates(model, tokenizer, prompts[0], CANDIDATES[:4], prefix=foreign)
    np.testing.assert_allclose(result.sum, score_candidates_naive(model, tokenizer, prompts[0], CANDIDATES[:4]).sum,
                               atol=1e-4, rtol=0)
    # Too little in common, or a single prompt: no cache.
    assert shared_prompt_prefix(model, tokenizer, prompts[:1]) is None
    assert shared_prompt_prefix(model, tokenizer, prompts, min_tokens=10_000) is None


def test_attention_that_ignores_4d_masks_is_refused(tokenizer, prompt, monkeypatch):
    model = build_tiny_model(tokenizer, seed=2)
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2", raising=False)
    with pytest.raises(TypeError, match="4D attention mask"):
        score_candidates(model, tokenizer, prompt, ["Z", "Silent"])


@pytest.mark.parametrize("title", ["Glass River Part 3", "Z", CANDIDATES[6]])
def test_score_by_hand(model, tokenizer, prompt, title):
    expected_sum, n = _hand_scores(model, tokenizer, prompt, title)
    for score in (score_candidates, score_candidates_naive):
        result = score(model, tokenizer, prompt, ["Silent", title], batch_size=2)
        assert result.n_tokens[1] == n
        assert result.sum[1] == pytest.approx(expected_sum, abs=1e-4)
        assert result.mean[1] == pytest.approx(expected_sum / n, abs=1e-4)
        assert result.scores("mean") is result.mean and result.scores("sum") is result.sum


def test_scores_depend_on_the_prompt(model, tokenizer, prompt):
    other = make_example(TITLES[20:24], TITLES[24])["prompt"]
    a = score_candidates(model, tokenizer, prompt, CANDIDATES[:3])
    b = score_candidates(model, tokenizer, other, CANDIDATES[:3])
    assert np.abs(a.sum - b.sum).max() > 1e-3


def test_empty_candidates_and_bad_rule(model, tokenizer, prompt):
    empty = score_candidates(model, tokenizer, prompt, [])
    assert isinstance(empty, ScoreResult) and len(empty) == 0
    assert len(score_candidates_naive(model, tokenizer, prompt, [])) == 0
    with pytest.raises(ValueError, match="unknown scoring rule"):
        score_candidates(model, tokenizer, prompt, ["Z"]).scores("max")
    with pytest.raises(ValueError, match="batch_size"):
        score_candidates(model, tokenizer, prompt, ["Z"], batch_size=0)


def test_training_mode_is_restored(tokenizer, prompt):
    model = build_tiny_model(tokenizer, seed=1)
    model.train()
    # Dropout is 0 in the tiny config, so equality also holds; what matters is the mode.
    score_candidates(model, tokenizer, prompt, ["Z", "Silent"])
    assert model.training


def test_peft_model_and_disabled_adapter(tokenizer, prompt):
    peft = pytest.importorskip("peft")
    base = build_tiny_model(tokenizer, seed=0)
    reference = score_candidates_naive(base, tokenizer, prompt, CANDIDATES)
    # init_lora_weights=False: B is random, so the adapter really changes the outputs.
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    candidate = peft.get_peft_model(build_tiny_model(tokenizer, seed=0), cfg)
    tuned_naive = score_candidates_naive(candidate, tokenizer, prompt, CANDIDATES, batch_size=4)
    tuned = score_candidates(candidate, tokenizer, prompt, CANDIDATES, batch_size=4)
    np.testing.assert_allclose(tuned.sum, tuned_naive.sum, atol=1e-4, rtol=0)
    assert np.abs(tuned.sum - reference.sum).max() > 1e-2
    with candidate.disable_adapter():
        as_base = score_candidates(candidate, tokenizer, prompt, CANDIDATES, batch_size=4)
    np.testing.assert_allclose(as_base.sum, reference.sum, atol=1e-4, rtol=0)


def test_rank_users(model, tokenizer):
    examples = [make_example(TITLES[i : i + 3], TITLES[i + 3], user_id=str(i)) for i in (0, 10, 20)]
    candidates = [CANDIDATES[:4], CANDIDATES[2:9], ["Z"]]
    results = rank_users(model, tokenizer, examples, candidates, batch_size=3, progress=False)
    assert [len(r) for r in results] == [4, 7, 1]
    for example, titles, result in zip(examples, candidates, results):
        expected = score_candidates_naive(model, tokenizer, example["prompt"], titles)
        np.testing.assert_allclose(result.mean, expected.mean, atol=1e-4, rtol=0)
    naive = rank_users(model, tokenizer, examples, candidates, method="naive", progress=False)
    np.testing.assert_allclose(naive[1].sum, results[1].sum, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="aligned"):
        rank_users(model, tokenizer, examples, candidates[:2], progress=False)
    with pytest.raises(ValueError, match="no 'prompt'"):
        rank_users(model, tokenizer, [{"user_id": "9"}], [["Z"]], progress=False)


@pytest.mark.slow
def test_cached_equals_naive_on_embedded_model():
    from tether.config import ModelConfig
    from tether.model.base import load_base_model

    model, tokenizer, _ = load_base_model(ModelConfig(), device="cpu", dtype="float32", progress=False)
    prompt = [
        {"role": "system", "content": "You are a movie recommender."},
        {"role": "user", "content": "They watched: Silent Harbor Part 1; Iron Meadow. Next:"},
    ]
    titles = ["Silent Harbor Part 2", "Silent Harbor", "Iron Meadow Part 2", "The Clockmaker's Apprentice (1998)", "Up"]
    naive = score_candidates_naive(model, tokenizer, prompt, titles, batch_size=5)
    cached = score_candidates(model, tokenizer, prompt, titles, batch_size=2)
    np.testing.assert_allclose(cached.mean, naive.mean, atol=1e-4, rtol=0)
    np.testing.assert_allclose(cached.sum, naive.sum, atol=1e-4, rtol=0)
