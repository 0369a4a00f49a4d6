"""Greedy generation for the health checks: deterministic, batch-invariant, new tokens only, base via disable_adapter.

Real generation with the tiny random Llama and ChatML tokenizer of ``tests/tiny.py``. A random
model produces different text for every prompt, so any error in padding side, attention mask,
position ids or the slicing of new tokens changes some output and fails a comparison.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny import build_tiny_model, make_examples

from tether.eval.generation import (
    GOLDEN_PROMPTS_PATH,
    GoldenPrompt,
    GoldenPromptError,
    free_generation_titles,
    generate,
    generation_health,
    load_golden_prompts,
    side_by_side,
)
from tether.eval.scoring import encode_prompt

N_NEW = 12


@pytest.fixture(scope="module")
def prompts() -> list[list[dict[str, str]]]:
    # Golden prompts of quite different token lengths, so batches of 4 need real padding.
    golden = load_golden_prompts()
    picked = [golden[i] for i in (0, 24, 35, 28, 12, 43)]
    return [p.messages for p in picked]


def _hand_greedy(model, tokenizer, messages, n_new: int) -> str:
    """Greedy decoding written out: one full forward pass per step, argmax, stop at end-of-turn."""
    ids = encode_prompt(tokenizer, messages)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(torch.tensor([ids + new])).logits[0, -1]
            nxt = int(torch.argmax(logits))
            new.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
    return tokenizer.decode(new, skip_special_tokens=True).strip()


# --------------------------------------------------------------------------- generate


def test_generate_is_deterministic_and_batch_size_invariant(model, tokenizer, prompts) -> None:
    one = generate(model, tokenizer, prompts, max_new_tokens=N_NEW, batch_size=1, progress=False)
    four = generate(model, tokenizer, prompts, max_new_tokens=N_NEW, batch_size=4, progress=False)
    again = generate(model, tokenizer, prompts, max_new_tokens=N_NEW, batch_size=4, progress=False)
    assert len(one) == len(prompts)
    # Per prompt: left padding, mask and positions must not change a single greedy token.
    for i, (a, b, c) in enumerate(zip(one, four, again)):
        assert a == b, f"prompt {i}: batch size 1 gave {a!r}, batch size 4 gave {b!r}"
        assert b == c, f"prompt {i}: two identical calls differ"
    assert len(set(one)) == len(one), "a random model should answer every prompt differently"
    assert tokenizer.padding_side == "right", "generate must restore the tokenizer's padding side"


def test_generate_returns_only_the_new_tokens(model, tokenizer, prompts) -> None:
    got = generate(model, tokenizer, prompts[:3], max_new_tokens=N_NEW, batch_size=3, progress=False)
    for messages, text in zip(prompts[:3], got):
        assert text == _hand_greedy(model, tokenizer, messages, N_NEW)
        assert messages[-1]["content"][:20] not in text
        assert "<|im_start|>" not in text and "<|im_end|>" not in text


def test_system_prompt_is_added_where_missing(model, tokenizer, prompts) -> None:
    system = "You are a movie recommender."
    added = generate(model, tokenizer, prompts[:2], max_new_tokens=6, system_prompt=system, progress=False)
    explicit = [[{"role": "system", "content": system}, *p] for p in prompts[:2]]
    assert added == generate(model, tokenizer, explicit, max_new_tokens=6, progress=False)
    # A conversation that has its own system message keeps it.
    kept = generate(model, tokenizer, explicit, max_new_tokens=6, system_prompt="Something else.", progress=False)
    assert kept == added


def test_generate_refuses_a_budget_beyond_the_context(model, tokenizer, prompts) -> None:
    with pytest.raises(ValueError, match="context"):
        generate(model, tokenizer, prompts[:1], max_new_tokens=model.config.max_position_embeddings, progress=False)
    assert generate(model, tokenizer, [], progress=False) == []


def test_base_under_disable_adapter_equals_the_plain_base_model(tokenizer, prompts) -> None:
    peft = pytest.importorskip("peft")
    plain = build_tiny_model(tokenizer, seed=0)
    candidate = peft.get_peft_model(
        build_tiny_model(tokenizer, seed=0),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    # A fresh LoRA has B = 0 (a no-op); randomise B so the adapter really changes the outputs.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in candidate.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    kwargs = {"max_new_tokens": N_NEW, "batch_size": 3, "progress": False}
    base_texts = generate(plain, tokenizer, prompts, **kwargs)
    cand_texts = generate(candidate, tokenizer, prompts, **kwargs)
    with candidate.disable_adapter():
        disabled = generate(candidate, tokenizer, prompts, **kwargs)
    assert disabled == base_texts
    assert sum(c != b for c, b in zip(cand_texts, base_texts)) >= len(prompts) // 2, "the adapter changed nothing"
    # The adapter is back on after the block.
    assert generate(candidate, tokenizer, prompts, **kwargs) == cand_texts


def test_free_generation_titles_generates_from_each_prompt(model, tokenizer) -> None:
    examples = make_examples(3, seed=0, split="test")
    titles = free_generation_titles(model, tokenizer, examples, max_new_tokens=8, batch_size=2, progress=False)
    assert titles == [_hand_greedy(model, tokenizer, ex["prompt"], 8) for ex in examples]
    with pytest.raises(ValueError, match="example 1"):
        free_generation_titles(model, tokenizer, [examples[0], {"user_id": "9"}], progress=False)


# --------------------------------------------------------------------------- health and rows


def test_generation_health_numbers() -> None:
    texts = ["a b c d a b c d", "..."]
    health = generation_health(texts, base_texts=["a b", "c d"])
    assert health["n"] == 2
    assert health["distinct_1"] == pytest.approx(5 / 9)  # "..." is a token of its own
    assert health["distinct_2"] == pytest.approx(4 / 7)
    assert health["repeated_4gram_rate"] == pytest.approx(1 / 5)  # "a b c d" twice among 5 4-grams
    assert health["empty_rate"] == pytest.approx(0.5)
    assert health["mean_length"] == pytest.approx(4.5)
    assert health["length_ratio"] == pytest.approx(9 / 4)
    assert "length_ratio" not in generation_health(texts)
    with pytest.raises(ValueError):
        generation_health([])
    with pytest.raises(ValueError):
        generation_health(["a"], ["a", "b"])


def test_side_by_side_rows() -> None:
    golden = [GoldenPrompt("gp01", "explain", "Why?"), GoldenPrompt("gp02", "creative", "A poem.")]
    rows = side_by_side(golden, ["b1", "b2"], ["c1", "c2"])
    assert rows[1] == {"id": "gp02", "category": "creative", "prompt": "A poem.", "base": "b2", "candidate": "c2"}
    conv = [[{"role": "system", "content": "S"}, {"role": "user", "content": "Hello?"}]]
    assert side_by_side(conv, ["b"], ["c"])[0]["prompt"] == "Hello?"
    with pytest.raises(ValueError, match="1 prompts, 2 base"):
        side_by_side(golden[:1], ["b1", "b2"], ["c1"])


# --------------------------------------------------------------------------- golden prompts


def test_packaged_golden_prompts_load() -> None:
    golden = load_golden_prompts()
    assert len(golden) >= 40
    assert len({g.id for g in golden}) == len(golden)
    assert load_golden_prompts(GOLDEN_PROMPTS_PATH) == golden
    assert golden[0].messages == [{"role": "user", "content": golden[0].prompt}]


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "golden.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(pid: str, **extra) -> str:
    return json.dumps({"id": pid, "category": "c", "prompt": f"prompt {pid}", **extra})


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"id": "x", "category": "c", "prompt": ', "invalid JSON"),
        ('{"id": "x", "prompt": "p"}', r"missing key\(s\) \['category'\]"),
        ('{"id": "x", "category": "c", "promt": "p", "prompt": "p"}', r"unknown key\(s\) \['promt'\]"),
        ('{"id": "x", "category": "c", "prompt": "  "}', "'prompt' must be a non-empty string"),
        ('["x"]', "expected a JSON object"),
        (_row("a"), r"duplicate id 'a' \(first used on line 1\)"),
    ],
)
def test_golden_prompt_errors_name_file_and_line(tmp_path, bad_line: str, message: str) -> None:
    # Line 2 is blank (skipped but counted), so the bad line is line 4.
    path = _write(tmp_path, [_row("a"), "", _row("b"), bad_line, _row("c")])
    with pytest.raises(GoldenPromptError, match=message) as err:
        load_golden_prompts(path)
    assert f"{path}, line 4" in str(err.value)


def test_golden_prompts_empty_file(tmp_path) -> None:
    with pytest.raises(GoldenPromptError, match="no golden prompts"):
        load_golden_prompts(_write(tmp_path, ["", "  "]))
