"""The evaluate stage: inputs under the pinned protocol, metrics from scores, and an end-to-end run on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import GENERAL_TEXT, build_tiny_model_dir, write_jsonl

from tether.config import TetherConfig, load_config
from tether.eval import evaluate as ev
from tether.eval import metrics
from tether.eval.evaluate import (
    Evaluation,
    evaluate_recommendations,
    evaluate_run,
    load_eval_inputs,
    popularity_scores,
)

# ------------------------------------------------------------------ helpers (also used by test_gating, test_drift_gate)


def eval_config(root: Path, cache: Path | None = None, seed: int = 1234, **eval_overrides: Any) -> TetherConfig:
    """The test profile with a tiny evaluation: 10 users, 6 candidates, a drift panel of a short corpus
    (``<root>/corpus``, whole) and 4 self-samples, 3 golden prompts."""
    overrides: dict[str, Any] = {
        "seed": seed,
        "model": {"cache_dir": str(cache or root / "cache")},
        "eval": {
            "n_users": 10,
            "candidates": "sampled",
            "n_negatives": 5,
            "ks": [1, 5],
            "batch_size": 8,
            "bootstrap_samples": 200,
            "perplexity": {"window": 64, "stride": 32},
            "drift_panel": [
                {"name": "corpus", "source": str(root / "corpus"), "max_tokens": None},
                {"name": "self_samples", "source": "builtin:self-samples", "n_samples": 4, "max_new_tokens": 8},
            ],
            "generation": {"n_prompts": 3, "max_new_tokens": 8, "batch_size": 4, "valid_item_users": 4,
                           "valid_item_max_new_tokens": 8},
        },
        "gates": {"primary_metric": "ndcg_at_5"},
    }
    for key, value in eval_overrides.items():
        if isinstance(value, dict):
            overrides["eval"][key] = {**overrides["eval"].get(key, {}), **value}
        else:
            overrides["eval"][key] = value
    return load_config(profile="test", overrides=overrides)


def make_processed(root: Path, seed: int = 7) -> Path:
    """``data/processed`` from the real generator, split and example builder (no GX: seconds), plus a corpus."""
    from tether.data.examples import build_examples
    from tether.data.generate import generate_tables
    from tether.data.split import leave_last_out

    cfg = load_config(profile="test")
    data = generate_tables(cfg.generate, seed)
    split = leave_last_out(data.interactions)
    examples = build_examples(split, data.items, cfg.examples)
    proc = root / "data" / "processed"
    proc.mkdir(parents=True, exist_ok=True)
    split.to_parquet(proc / "interactions.parquet", index=False)
    data.items.to_parquet(proc / "items.parquet", index=False)
    for name in ("train", "validation", "test"):
        write_jsonl(proc / f"{name}.jsonl", [ex for ex in examples if ex["split"] == name])
    write_corpus(root / "corpus")
    return root


def write_corpus(folder: Path, names: tuple[str, ...] = ("a.txt", "b.txt")) -> Path:
    """Documents of a few thousand characters in paragraphs (each cut into chunks that land in both halves)."""
    import random

    folder.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        rng = random.Random(n)
        paragraphs = [" ".join(rng.sample(GENERAL_TEXT, 3)) for _ in range(16)]
        (folder / name).write_text("\n\n".join(paragraphs), encoding="utf-8")
    return folder


def make_adapter(model_dir: Path, out: Path, scale: float = 0.3, seed: int = 0) -> Path:
    """A LoRA adapter on the tiny model with non-zero weights (no training needed to differ from the base)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether.model.train import build_lora_model, save_adapter

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = build_lora_model(model, load_config(profile="test").train, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return save_adapter(peft_model, AutoTokenizer.from_pretrained(model_dir), out)


pytestmark = [*globals().get("pytestmark", []), pytest.mark.usefixtures("one_torch_thread")]


# ------------------------------------------------------------------ hand-made data: candidates and metrics

# Four users over six items; train counts: 1:3, 2:2, 3:0, 4:2, 5:2, 6:1.
_HAND = {  # user: (train items, validation item, test item)
    "u1": (["1", "2"], "3", "4"),
    "u2": (["1", "4"], "5", "6"),
    "u3": (["2", "4", "5"], "1", "3"),
    "u4": (["1", "5", "6"], "2", "4"),
}


def _hand_project(root: Path) -> Path:
    proc = root / "data" / "processed"
    proc.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "item_id": [str(i) for i in range(1, 7)],
        "title": [f"Film {c} (2001)" for c in "ABCDEF"],
        "genres": ["Drama", "Drama|Comedy", "Comedy", "Horror", "Drama", ""],
        "description": [""] * 6,
        "source_row": np.arange(1, 7),
    }).to_parquet(proc / "items.parquet", index=False)
    rows, tests = [], []
    t = 1_600_000_000
    for user, (train, val, test) in _HAND.items():
        for split, items in (("train", train), ("validation", [val]), ("test", [test])):
            for item in items:
                t += 60
                rows.append({"user_id": user, "item_id": item, "timestamp": t, "rating": 4.0,
                             "source_row": len(rows) + 1, "split": split})
        tests.append({
            "user_id": user, "split": "test", "item_id": test, "history_item_ids": [*train, val][-2:],
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "completion": [{"role": "assistant", "content": f"Film {'ABCDEF'[int(test) - 1]} (2001)"}],
        })
    pd.DataFrame(rows).to_parquet(proc / "interactions.parquet", index=False)
    write_jsonl(proc / "test.jsonl", tests)
    write_corpus(root / "corpus")
    return root


def test_full_candidates_exclude_history_and_popularity_ranks_by_hand(tmp_path) -> None:
    root = _hand_project(tmp_path)
    cfg = eval_config(root, n_users=None, candidates="full", ks=[1, 2])
    inputs = load_eval_inputs(cfg, root)

    assert inputs.user_ids == ["u1", "u2", "u3", "u4"]
    assert inputs.candidates == [["4", "5", "6"], ["2", "3", "6"], ["3", "6"], ["3", "4"]]
    assert inputs.positives.tolist() == [0, 2, 0, 1]
    assert inputs.train_counts == {"1": 3, "2": 2, "4": 2, "5": 2, "6": 1}
    assert inputs.n_train_interactions == 10
    assert inputs.history_lengths.tolist() == [3, 3, 4, 4]
    assert inputs.head_items == {"1", "2"}  # ceil(0.2 * 6) = 2 most popular, ties in catalog order

    # Popularity by train count; ties count against the positive: u1's item 4 ties with item 5.
    pop = evaluate_recommendations(popularity_scores(inputs), inputs, [1, 2])
    assert pop.ranks.tolist() == [2, 2, 2, 1]
    assert pop.metrics["mrr"] == pytest.approx((0.5 * 3 + 1) / 4)
    assert pop.metrics["hr_at_1"] == pytest.approx(0.25)
    assert pop.metrics["ndcg_at_2"] == pytest.approx((3 / math.log2(3) + 1) / 4)
    assert pop.top_lists == [["4", "5"], ["2", "6"], ["6", "3"], ["4", "3"]]
    assert pop.metrics["coverage_at_1"] == pytest.approx(3 / 6)  # tops: 4, 2, 6, 4
    assert pop.metrics["entropy_at_1"] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert pop.metrics["novelty_at_1"] == pytest.approx(
        np.mean([-math.log2(c / 10) for c in (2, 2, 1, 2)])
    )
    assert pop.per_user["mrr"].tolist() == [0.5, 0.5, 0.5, 1.0]
    assert pop.slices["head_item"]["count"] == 0 and pop.slices["tail_item"]["count"] == 4
    assert pop.slices["short_history"]["count"] == 2 and pop.slices["long_history"]["mrr"] == pytest.approx(0.75)


def test_metrics_from_hand_scores_match_the_metric_functions(tmp_path) -> None:
    root = _hand_project(tmp_path)
    inputs = load_eval_inputs(eval_config(root, n_users=None, candidates="full", ks=[1, 2]), root)
    scores = [np.array([0.9, 0.1, 0.2]), np.array([0.5, 0.4, 0.3]), np.array([-1.0, -2.0]), np.array([0.0, 1.0])]
    rec = evaluate_recommendations(scores, inputs, [2, 1])
    assert rec.ranks.tolist() == [1, 3, 1, 1]
    expected = metrics.ranking_metrics(rec.ranks, [1, 2])
    assert {k: rec.metrics[k] for k in expected} == pytest.approx(expected)
    tops = [["4", "6"], ["2", "3"], ["3", "6"], ["4", "3"]]
    assert rec.top_lists == tops
    assert rec.metrics["gini_at_2"] == pytest.approx(metrics.gini_index(tops, 6))
    assert rec.metrics["ild_at_2"] == pytest.approx(metrics.intra_list_diversity(tops, inputs.item_vectors))
    assert np.mean(rec.per_user["ndcg_at_2"]) == pytest.approx(rec.metrics["ndcg_at_2"])
    with pytest.raises(ValueError, match="scores for"):
        evaluate_recommendations([np.zeros(2)] * 4, inputs, [1])


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return make_processed(tmp_path_factory.mktemp("proj"))


def test_sampled_candidates_are_seeded_exclude_history_and_hold_the_positive_once(generated) -> None:
    cfg = eval_config(generated)
    a, b = load_eval_inputs(cfg, generated), load_eval_inputs(cfg, generated)
    assert a.user_ids == b.user_ids and a.candidates == b.candidates and a.positives.tolist() == b.positives.tolist()
    assert a.n_users == 10

    inter = pd.read_parquet(generated / "data/processed/interactions.parquet")
    for user, ex, cands, pos in zip(a.user_ids, a.examples, a.candidates, a.positives):
        history = set(inter[(inter.user_id == user) & (inter.split != "test")].item_id)
        assert len(cands) == 6 and len(set(cands)) == 6
        assert cands.count(ex["item_id"]) == 1 and cands[pos] == ex["item_id"]
        assert not (set(cands) - {ex["item_id"]}) & history
        assert not set(ex["history_item_ids"]) & set(cands)

    other = load_eval_inputs(eval_config(generated, seed=99), generated)
    assert other.user_ids != a.user_ids or other.candidates != a.candidates
    # Per-user streams: the same user gets the same candidates whatever the rest of the sample.
    more = load_eval_inputs(eval_config(generated, n_users=None), generated)
    by_user = dict(zip(more.user_ids, more.candidates))
    assert all(by_user[u] == c for u, c in zip(a.user_ids, a.candidates))


# ------------------------------------------------------------------ end to end on a tiny model


@pytest.fixture(scope="module")
def tiny_run(generated, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny")
    model_dir = build_tiny_model_dir(base / "model")
    return {"root": generated, "model": model_dir, "adapter": make_adapter(model_dir, base / "adapter")}


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_evaluate_run_end_to_end(tiny_run, tmp_path) -> None:
    root = tiny_run["root"]
    cfg = eval_config(root, cache=tmp_path / "cache")
    evaluation = evaluate_run(cfg, root, tiny_run["adapter"], model_dir=tiny_run["model"], progress=False)

    assert set(evaluation.systems) == {"candidate", "base", "popularity"}
    for system in evaluation.systems.values():
        assert system["count"] == 10
        assert 0 <= system["ndcg_at_5"] <= 1 and 0 < system["mrr"] <= 1
        assert {"coverage_at_5", "entropy_at_5", "gini_at_5", "ild_at_5", "novelty_at_5"} <= set(system)
    cand, base = evaluation.systems["candidate"], evaluation.systems["base"]
    assert "ndcg_at_5_sum" in cand and "mrr_sum" in base  # the other scoring rule, reported once
    for source in ("corpus", "self_samples"):
        c, b = cand[f"perplexity.{source}"], base[f"perplexity.{source}"]
        assert c > 1 and b > 1 and c != b
        drift = evaluation.comparisons["drift_panel"][source]
        assert drift["drift"] == pytest.approx(c / b - 1)
        assert drift["nll_diff"] == pytest.approx(math.log(c / b))  # identical tokens: the KL estimate
        lo, hi = drift["interval"]
        assert lo <= hi
    assert evaluation.comparisons["perplexity_drift"]["source"] in ("corpus", "self_samples")
    assert 0 <= cand["valid_item_rate"] <= 1
    assert {"distinct_1", "distinct_2", "repeated_4gram_rate", "empty_rate", "length_ratio"} <= set(cand)
    golden = evaluation.comparisons["golden_kl"]
    assert golden["n_prompts"] == 3 and golden["interval"][0] <= golden["kl"] <= golden["interval"][1]
    assert {"genre_mi_at_5", "genre_mi_at_1"} <= set(cand)
    for ref in ("popularity", "base"):
        comp = evaluation.comparisons[f"candidate_vs_{ref}"]
        assert comp["metric"] == "ndcg_at_5"
        assert comp["diff"] == pytest.approx(cand["ndcg_at_5"] - evaluation.systems[ref]["ndcg_at_5"])
        assert comp["interval"][0] <= comp["diff"] <= comp["interval"][1]
    low, high = evaluation.intervals["candidate"]["ndcg_at_5"]
    assert low <= cand["ndcg_at_5"] <= high
    assert len(evaluation.per_user["base"]["mrr"]) == 10 and len(evaluation.user_ids) == 10
    assert len(evaluation.perplexity["candidate"]["corpus"]["per_doc"]) == 3  # b.txt's three chunks hash to the gate half
    assert len(evaluation.perplexity["candidate"]["self_samples"]["per_doc"]) == 4

    # Popularity went through the same path as the models.
    inputs = load_eval_inputs(cfg, root)
    pop = evaluate_recommendations(popularity_scores(inputs), inputs, cfg.eval.ks)
    assert evaluation.systems["popularity"]["ndcg_at_5"] == pytest.approx(pop.metrics["ndcg_at_5"])

    assert [r["id"] for r in evaluation.generations] == ["gp01", "gp02", "gp03"]
    assert len(evaluation.valid_item_generations["candidate"]) == 4
    for part in ("scoring", "valid_items", "panel", "generation"):
        assert evaluation.timings["candidate"][part] >= 0 and evaluation.timings["base"][part] >= 0
    assert evaluation.timings["total"] > 0 and evaluation.base_cache["hit"] is False

    path = evaluation.save(tmp_path / "evaluation.json")
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    again = Evaluation.load(path)
    assert again.systems["candidate"]["ndcg_at_5"] == cand["ndcg_at_5"]
    assert again.comparisons["perplexity_drift"]["interval"] == evaluation.comparisons["perplexity_drift"]["interval"]
    # The per-source comparisons come back as they were (each with its interval), nothing added.
    assert set(again.comparisons["drift_panel"]) == {"corpus", "self_samples"}
    for source, entry in evaluation.comparisons["drift_panel"].items():
        assert again.comparisons["drift_panel"][source]["interval"] == pytest.approx(tuple(entry["interval"]))
        assert again.comparisons["drift_panel"][source]["drift"] == entry["drift"]


def test_base_results_are_cached_and_invalidated_when_the_corpus_changes(tiny_run, tmp_path, monkeypatch) -> None:
    import shutil

    root = tmp_path / "proj"
    shutil.copytree(tiny_run["root"], root)
    cfg = eval_config(root, cache=tmp_path / "cache")
    counter = _Counter(ev.rank_users)
    monkeypatch.setattr("tether.eval.evaluate.model.rank_users", counter)  # where evaluate_model looks it up

    first = evaluate_run(cfg, root, tiny_run["adapter"], model_dir=tiny_run["model"], progress=False)
    assert counter.calls == 2 and not first.base_cache["hit"]
    assert Path(first.base_cache["path"]).is_file() and Path(first.base_cache["path"]).parent == tmp_path / "cache/eval-cache"

    second = evaluate_run(cfg, root, tiny_run["adapter"], model_dir=tiny_run["model"], progress=False)
    assert counter.calls == 3  # only the candidate was scored
    assert second.base_cache["hit"] and second.timings["base"] == {"cached": True}
    assert second.systems["base"] == first.systems["base"]
    assert second.per_user["base"] == first.per_user["base"]
    assert second.systems["candidate"] == first.systems["candidate"]

    bypass = evaluate_run(cfg, root, tiny_run["adapter"], model_dir=tiny_run["model"], base_cache=False,
                          progress=False)
    assert counter.calls == 5 and not bypass.base_cache["hit"]

    # A new document in the gate's half (d.txt hashes there) is measured, and invalidates the cache.
    (root / "corpus" / "d.txt").write_text("A new document changes the perplexity corpus.", encoding="utf-8")
    changed = evaluate_run(cfg, root, tiny_run["adapter"], model_dir=tiny_run["model"], progress=False)
    assert counter.calls == 7 and not changed.base_cache["hit"]
    assert changed.base_cache["key"] != first.base_cache["key"]
    before = first.perplexity["base"]["corpus"]["documents"]
    assert changed.perplexity["base"]["corpus"]["documents"] == sorted([*before, "d.txt"], key=_hash_order)

    # One in the selection half (c.txt) is not measured by the gate, but it is part of the source's
    # content, so the cache key changes all the same.
    (root / "corpus" / "c.txt").write_text("Another document, for guarded selection only.", encoding="utf-8")
    again = evaluate_run(cfg, root, tiny_run["adapter"], model_dir=tiny_run["model"], progress=False)
    assert again.base_cache["key"] != changed.base_cache["key"] and not again.base_cache["hit"]
    assert again.perplexity["base"]["corpus"]["documents"] == changed.perplexity["base"]["corpus"]["documents"]


def _hash_order(name: str) -> str:
    import hashlib

    return hashlib.sha256(name.encode()).hexdigest()


def test_evaluate_run_refuses_a_missing_adapter(tiny_run, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        evaluate_run(eval_config(tiny_run["root"]), tiny_run["root"], tmp_path / "nope", model_dir=tiny_run["model"])
