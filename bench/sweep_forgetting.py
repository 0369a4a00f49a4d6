"""Quality vs drift vs valid items: which fine-tuning setting passes every gate?

    .venv/bin/python bench/sweep_forgetting.py [--only NAME ...] [--profile P]

For each setting below: train a LoRA adapter on the prepared sample data (run ``tether demo``
or the data pipeline first) with the embedded model, then run the pipeline's own evaluate and
gate stages on it (``tether.eval.evaluate.evaluate_run``, ``tether.eval.gating.run_gates``:
the pinned protocol of params.yaml, the base model's results cached after the first setting).
Records NDCG@10, MRR, valid-item rate, perplexity drift, validation loss, training time and
every gate's verdict. Writes ``bench/results/sweep_forgetting.json`` (results of earlier
settings are kept unless re-run) and prints a table. This is the measurement behind the
default ``train`` settings in params.yaml (see docs/decisions.md).
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

import torch  # noqa: E402

from tether.config import load_config  # noqa: E402
from tether.eval.evaluate import evaluate_run  # noqa: E402
from tether.eval.gating import run_gates  # noqa: E402
from tether.model.train import train  # noqa: E402

# name -> train overrides on top of params.yaml (whose default is replay 0.5).
SETTINGS: dict[str, dict[str, Any]] = {
    "no_replay": {"replay": {"ratio": 0.0}},
    "replay50": {"replay": {"ratio": 0.5}},
    "replay25": {"replay": {"ratio": 0.25}},
    "replay50_100steps": {"replay": {"ratio": 0.5}, "max_steps": 100, "eval_every": 50, "save_every": 50},
    "replay25_lr1e-3": {"replay": {"ratio": 0.25}, "learning_rate": 1e-3},
    "replay25_qv": {"replay": {"ratio": 0.25}, "target_modules": ["q_proj", "v_proj"]},
    # configs/overtrain.yaml: no forgetting protection, twice the learning rate, no early stop.
    "overtrain": {"replay": {"ratio": 0.0}, "learning_rate": 4e-3, "early_stopping_patience": None},
}
KEEP = ("ndcg_at_10", "hr_at_10", "mrr", "valid_item_rate", "exact_title_rate", "perplexity", "ndcg_at_10_sum")


def run_setting(name: str, profile: str | None, tmp: Path) -> dict[str, Any]:
    """Train with the setting's overrides, then evaluate and gate like the pipeline does."""
    overrides = {"train": {**SETTINGS[name], "output_dir": str(tmp / name)}, "tracking": {"experiment": "tether-sweep"}}
    cfg = load_config(profile=profile, overrides=overrides)
    started = time.perf_counter()
    trained = train(cfg, ROOT)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = evaluate_run(cfg, ROOT, trained.adapter_dir, progress=False)
    eval_s = time.perf_counter() - started
    # The gate report and evaluation.json (with every free generation) stay for inspection.
    report, _ = run_gates(cfg, evaluation, {}, ROOT / "outputs" / "sweep" / name)
    systems = {s: {k: v for k, v in m.items() if k in KEEP} for s, m in evaluation.systems.items()}
    return {
        "overrides": SETTINGS[name], "systems": systems,
        "drift": evaluation.comparisons["perplexity_drift"]["drift"],
        "drift_interval": evaluation.comparisons["perplexity_drift"]["interval"],
        "eval_loss": trained.eval_loss, "base_eval_loss": trained.base_eval_loss, "steps": trained.steps,
        "tokens_per_second": trained.tokens_per_second, "train_s": train_s, "eval_s": eval_s,
        "verdict": report.verdict, "failed": [f"{g.gate}:{g.metric}" for g in report.blocking_failures],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(SETTINGS), help="run only these settings")
    ap.add_argument("--profile", default=None, help="config profile under configs/ (default: params.yaml alone)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sweep_forgetting.json")
    args = ap.parse_args()

    prior = json.loads(args.out.read_text()) if args.out.exists() else {}
    results: dict[str, Any] = prior.get("results", {}) if prior.get("protocol") == "pipeline-evaluate" else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or list(SETTINGS):
            results[name] = run_setting(name, args.profile, Path(tmp))
            print(name, json.dumps(results[name], default=str), flush=True)
            args.out.write_text(json.dumps({
                "protocol": "pipeline-evaluate",
                "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
                "results": results}, indent=2, default=str))

    print(f"\n{'setting':<20}{'NDCG@10':>9}{'MRR':>7}{'valid':>7}{'drift':>8}{'val loss':>9}{'train s':>8}  verdict")
    for name, r in results.items():
        c = r["systems"]["candidate"]
        print(f"{name:<20}{c['ndcg_at_10']:>9.3f}{c['mrr']:>7.3f}{c['valid_item_rate']:>7.2f}{r['drift']:>+8.1%}"
              f"{r['eval_loss']:>9.3f}{r['train_s']:>8.0f}  {r['verdict']} {' '.join(r['failed'])}")
    if results:
        any_r = next(iter(results.values()))["systems"]
        for s in ("base", "popularity"):
            print(f"{s:<20}{any_r[s]['ndcg_at_10']:>9.3f}{any_r[s]['mrr']:>7.3f}"
                  f"{any_r[s].get('valid_item_rate', float('nan')):>7.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
