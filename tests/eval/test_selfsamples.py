"""Self-samples: the base's own chat answers, cached by base hash, and the NLL they are scored by."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny import build_tiny_model, build_tiny_tokenizer

from tether.eval.selfsamples import SPLITS, SampleRow, cached_samples, load_prompts, sample, sequence_nll

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    return build_tiny_model(tok), tok


def test_the_packaged_prompts_split_into_three_disjoint_roles() -> None:
    splits = {s: load_prompts(s) for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [16, 8, 24]
    ids = [pid for rows in splits.values() for pid, _ in rows]
    texts = [p for rows in splits.values() for _, p in rows]
    assert len(set(ids)) == len(ids) and len(set(texts)) == len(texts)


def test_a_malformed_prompts_file_names_the_line(tmp_path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "split": "gate", "prompt": "Hi?"}\n{"id": "b", "split": "exam", "prompt": "x"}\n')
    with pytest.raises(ValueError, match="line 2: split must be one of"):
        load_prompts("gate", bad)


def test_samples_are_seeded_draws_that_end_at_the_end_of_turn(tiny) -> None:
    model, tok = tiny
    prompts = load_prompts("gate")[:3]
    a = sample(model, tok, prompts, n_samples=5, max_new_tokens=10, seed=7, batch_size=2)
    b = sample(model, tok, prompts, n_samples=5, max_new_tokens=10, seed=7, batch_size=2)
    c = sample(model, tok, prompts, n_samples=5, max_new_tokens=10, seed=8, batch_size=2)
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]
    assert [r.completion_ids for r in a] != [r.completion_ids for r in c]
    assert [r.id for r in a] == ["ss01-0", "ss02-0", "ss03-0", "ss01-1", "ss02-1"]
    for r in a:
        assert 1 <= len(r.completion_ids) <= 10
        if tok.eos_token_id in r.completion_ids:
            assert r.completion_ids.index(tok.eos_token_id) == len(r.completion_ids) - 1


def test_samples_are_cached_by_base_hash_and_reused(tiny, tmp_path, monkeypatch) -> None:
    import tether.eval.selfsamples as ss

    model, tok = tiny
    calls = []
    real = ss.sample
    monkeypatch.setattr(ss, "sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = dict(split="gate", n_samples=3, max_new_tokens=6, seed=1, cache_dir=tmp_path)
    first, hit1 = cached_samples(model, tok, base_hash="h1", **kw)
    again, hit2 = cached_samples(model, tok, base_hash="h1", **kw)
    other, hit3 = cached_samples(model, tok, base_hash="h2", **kw)
    assert (hit1, hit2, hit3) == (False, True, False) and len(calls) == 2
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first]
    files = sorted(p.name for p in (tmp_path / "self-samples").iterdir())
    assert len(files) == 2 and all(f.startswith("gate-") for f in files)
    json.loads((tmp_path / "self-samples" / files[0]).read_text())  # plain JSON, readable by anyone


def test_sequence_nll_scores_only_the_completion_and_ignores_padding(tiny) -> None:
    model, tok = tiny
    rows = [SampleRow("a", [1, 5, 9, 13], [20, 30, 40]), SampleRow("b", [2, 6], [21, 31, 41, 51, 61])]
    got = sequence_nll(model, rows, batch_size=2)
    for row, (nll, n) in zip(rows, got):
        ids = torch.tensor([row.prompt_ids + row.completion_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        start = len(row.prompt_ids) - 1
        ref = F.cross_entropy(logits[start:], ids[0, len(row.prompt_ids):], reduction="sum")
        assert n == len(row.completion_ids) and nll == pytest.approx(float(ref), rel=1e-5)
