"""Quality vs drift: which fine-tuning setting gains recommendation quality without forgetting?

    .venv/bin/python bench/sweep_forgetting.py [--users 100] [--docs 8] [--only NAME ...]

For each setting below: train a LoRA adapter on the prepared sample data (``tether demo``
or ``tether data prepare`` first) with the embedded model, then measure on the same inputs
NDCG@10 / MRR over test users (1 positive + 19 sampled negatives, pinned mean per-token
score) and perplexity on the held-out general corpus, against the zero-shot base and
popularity. Writes ``bench/results/sweep_forgetting.json`` and prints a table. This is the
measurement behind the default ``train`` settings in params.yaml (see docs/decisions.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tether.env import configure_environment  # noqa: E402

configure_environment(ROOT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from tether.config import load_config  # noqa: E402
from tether.eval import metrics as M  # noqa: E402
from tether.eval.perplexity import load_corpus, perplexity  # noqa: E402
from tether.eval.scoring import rank_users  # noqa: E402
from tether.model.train import read_examples, train  # noqa: E402

# name -> train overrides. Base: the params.yaml defaults.
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "lr3e-3": {"learning_rate": 3e-3},
    "lr1e-3": {"learning_rate": 1e-3},
    "replay25": {"replay": {"ratio": 0.25}},
    "replay50": {"replay": {"ratio": 0.5}},
    "qv_only": {"target_modules": ["q_proj", "v_proj"]},
    "lr3e-3_replay50": {"learning_rate": 3e-3, "replay": {"ratio": 0.5}},
}


def sample_candidates(cfg, users: int, seed: int) -> tuple[list[dict], list[list[str]], dict[str, int], list[list[str]]]:
    """Test users with 1 positive (index 0) + 19 negatives not in their history."""
    processed = cfg.paths.resolved(ROOT).processed_dir
    test = read_examples(processed / "test.jsonl")
    items = pd.read_parquet(processed / "items.parquet")
    inter = pd.read_parquet(processed / "interactions.parquet")
    title = dict(zip(items["item_id"].astype(str), items["title"]))
    train_counts = inter[inter["split"] == "train"]["item_id"].astype(str).value_counts().to_dict()
    seen = inter.groupby("user_id")["item_id"].agg(lambda s: set(map(str, s))).to_dict()
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(test), size=min(users, len(test)), replace=False))
    exs, cands = [], []
    all_items = items["item_id"].astype(str).to_numpy()
    for i in chosen:
        ex = test[i]
        pool = np.array([it for it in all_items if it not in seen[ex["user_id"]]])
        neg = rng.choice(pool, size=min(19, len(pool)), replace=False)
        ids = [ex["item_id"], *neg.tolist()]
        exs.append(ex)
        cands.append(ids)
    return exs, [[title[i] for i in c] for c in cands], train_counts, cands


def rec_metrics(scores: list[np.ndarray]) -> dict[str, float]:
    ranks = np.array([M.rank_of_positive(s, 0) for s in scores])
    return {"ndcg_at_10": M.ndcg_at_k(ranks, 10), "hr_at_10": M.hit_rate_at_k(ranks, 10), "mrr": M.mrr(ranks)}


def model_metrics(model, tok, exs, titles, docs) -> dict[str, Any]:
    t = time.perf_counter()
    res = rank_users(model, tok, exs, titles, batch_size=32, progress=False)
    out: dict[str, Any] = {k: v for k, v in rec_metrics([r.scores("mean") for r in res]).items()}
    out["ndcg_at_10_sum"] = rec_metrics([r.scores("sum") for r in res])["ndcg_at_10"]
    out["scoring_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ppl = perplexity(model, tok, docs, window=512, stride=256)
    out["ppl"], out["ppl_s"] = ppl.ppl, time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--docs", type=int, default=8, help="held-out documents for perplexity")
    ap.add_argument("--only", nargs="*", help="run only these settings")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sweep_forgetting.json")
    args = ap.parse_args()
    torch.manual_seed(0)

    base_cfg = load_config()
    exs, titles, train_counts, cand_ids = sample_candidates(base_cfg, args.users, base_cfg.seed)
    docs = load_corpus(ROOT / base_cfg.eval.perplexity.corpus_dir)[: args.docs]
    pop = rec_metrics([np.array([train_counts.get(i, 0) for i in c], dtype=float) for c in cand_ids])
    results: dict[str, Any] = {"popularity": pop}
    prior = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.update({k: v for k, v in prior.get("results", {}).items() if k not in ("popularity",)})

    from peft import PeftModel

    from tether.model.base import load_base_model

    names = args.only or list(SETTINGS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            overrides = {"train": {**SETTINGS[name], "output_dir": f"{tmp}/{name}"}, "tracking": {"experiment": "tether-sweep"}}
            cfg = load_config(overrides=overrides)
            t = time.perf_counter()
            tr = train(cfg, ROOT)
            train_s = time.perf_counter() - t
            model, tok, _ = load_base_model(cfg.model, progress=False)
            if "base" not in results:
                results["base"] = model_metrics(model, tok, exs, titles, docs)
                print("base", results["base"], flush=True)
            peft = PeftModel.from_pretrained(model, str(tr.adapter_dir))
            m = model_metrics(peft, tok, exs, titles, docs)
            m.update({"train_s": train_s, "steps": tr.steps, "eval_loss": tr.eval_loss, "base_eval_loss": tr.base_eval_loss,
                      "drift": m["ppl"] / results["base"]["ppl"] - 1, "overrides": SETTINGS[name]})
            results[name] = m
            print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}, flush=True)
            args.out.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                                        "torch": torch.__version__},
                                            "users": args.users, "docs": args.docs, "results": results}, indent=2))

    print(f"\n{'setting':<18}{'NDCG@10':>9}{'(sum)':>8}{'MRR':>8}{'ppl':>8}{'drift':>8}{'val loss':>10}")
    for name, m in results.items():
        drift = f"{m['drift']:+.1%}" if "drift" in m else ""
        print(f"{name:<18}{m['ndcg_at_10']:>9.3f}{m.get('ndcg_at_10_sum', float('nan')):>8.3f}{m['mrr']:>8.3f}"
              f"{m.get('ppl', float('nan')):>8.2f}{drift:>8}{m.get('eval_loss', float('nan')):>10.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
