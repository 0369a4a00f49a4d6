"""Quality vs drift per source: which forgetting protection holds on text nobody tuned for?

    .venv/bin/python bench/sweep_forgetting.py [--only NAME ...] [--adapter NAME=DIR ...] [--scales 1.0 0.75 0.5]

For each setting below: train a LoRA adapter on the prepared sample data (run ``tether demo``
or the data pipeline first) with the embedded model and params.yaml plus the setting's
overrides (guarded selection off: the sweep draws the trade-off curve itself). ``--adapter
NAME=DIR`` takes already trained weights instead (e.g. a demo run's last checkpoint). Then
take the final weights at each ``--scales`` multiplier through the pipeline's own evaluate and gate stages
(``tether.eval.evaluate.evaluate_run`` + ``tether.eval.gating.run_gates``: the pinned protocol,
the *gate* half of the drift panel, the base model's results cached after the first). Records
NDCG@10, MRR, valid-item and exact-title rates, the drift of every panel source, the
golden-prompt KL and every gate's verdict. Writes ``bench/results/sweep_forgetting.json``
(results of settings not re-run are kept) and prints a table. This is the measurement behind
the forgetting-protection defaults in params.yaml (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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

# name -> train overrides on top of params.yaml (whose default is distilled replay, 25%, with chat rows).
SETTINGS: dict[str, dict[str, Any]] = {
    "tokens25": {"replay": {"ratio": 0.25, "mode": "tokens"}},  # the previous default
    "distill25": {"replay": {"ratio": 0.25, "mode": "distill"}},  # the default: text + chat rows distilled
    "distill25_text_only": {"replay": {"ratio": 0.25, "mode": "distill", "chat_samples": 0}},
    "distill25_prompts": {"replay": {"ratio": 0.25, "mode": "distill", "distill_prompts": True}},
    "no_replay": {"replay": {"ratio": 0.0}},
    # Distilled replay holds drift down but slows the task (valid items 0.2 at 50 steps): more room to learn.
    "distill25_75steps": {"replay": {"ratio": 0.25, "mode": "distill"}, "max_steps": 75},
    "distill25_lr3e-3": {"replay": {"ratio": 0.25, "mode": "distill"}, "learning_rate": 0.003},
    "distill25_chat12": {"replay": {"ratio": 0.25, "mode": "distill", "chat_samples": 12}},
}
KEEP = ("ndcg_at_10", "hr_at_10", "mrr", "valid_item_rate", "exact_title_rate", "ndcg_at_10_sum", "genre_mi_at_10")


def _scaled_copy(checkpoint: Path, scale: float, out: Path) -> Path:
    """The checkpoint's adapter with its LoRA B matrices multiplied by ``scale`` (what selection saves)."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in checkpoint.iterdir():
        if f.is_file() and f.name != "adapter_model.safetensors" and not f.name.startswith(("optimizer", "scheduler", "rng")):
            shutil.copy2(f, out / f.name)
    state = load_file(str(checkpoint / "adapter_model.safetensors"))
    save_file({k: v * scale if "lora_B" in k else v for k, v in state.items()}, str(out / "adapter_model.safetensors"))
    return out


def _measure(cfg: Any, adapter: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    evaluation = evaluate_run(cfg, ROOT, adapter, progress=False)
    report, _ = run_gates(cfg, evaluation, {}, out)
    return {
        "systems": {s: {k: v for k, v in m.items() if k in KEEP} for s, m in evaluation.systems.items()},
        "drift": {k: v["drift"] for k, v in evaluation.comparisons["drift_panel"].items()},
        "drift_interval": {k: v["interval"] for k, v in evaluation.comparisons["drift_panel"].items()},
        "self_sample_kl": evaluation.comparisons["drift_panel"].get("self_samples", {}).get("nll_diff"),
        "golden_kl": (evaluation.comparisons.get("golden_kl") or {}).get("kl"),
        "verdict": report.verdict, "failed": [f"{g.gate}:{g.metric}" for g in report.blocking_failures],
        "eval_s": time.perf_counter() - started,
        "golden_answers": {r["id"]: r["candidate"] for r in evaluation.generations},
    }


def run_setting(name: str, profile: str | None, scales: list[float], tmp: Path) -> dict[str, Any]:
    """Train with the setting's overrides (selection on), then evaluate and gate each scale and the chosen adapter."""
    out_dir = tmp / name
    overrides = {"train": {**SETTINGS[name], "output_dir": str(out_dir), "selection": {"enabled": False}},
                 "tracking": {"experiment": "tether-sweep"}}
    cfg = load_config(profile=profile, overrides=overrides)
    started = time.perf_counter()
    trained = train(cfg, ROOT)
    train_s = time.perf_counter() - started
    last = max(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    result: dict[str, Any] = {
        "overrides": SETTINGS[name], "steps": trained.steps, "train_s": train_s,
        "tokens_per_second": trained.tokens_per_second, "eval_loss": trained.eval_loss,
        "base_eval_loss": trained.base_eval_loss, "scales": {},
    }
    return _scales(name, cfg, last, scales, tmp, result)


def run_adapter(name: str, adapter: Path, profile: str | None, scales: list[float], tmp: Path) -> dict[str, Any]:
    """Already trained weights (an adapter or a Trainer checkpoint folder) at each scale."""
    cfg = load_config(profile=profile)
    return _scales(name, cfg, adapter, scales, tmp, {"adapter": str(adapter), "scales": {}})


def _scales(name: str, cfg: Any, last: Path, scales: list[float], tmp: Path, result: dict[str, Any]) -> dict[str, Any]:
    for scale in scales:
        adapter = _scaled_copy(last, scale, tmp / f"{name}-x{scale:g}")
        result["scales"][f"{scale:g}"] = _measure(cfg, adapter, ROOT / "outputs" / "sweep" / f"{name}-x{scale:g}")
        print(name, f"x{scale:g}", json.dumps(result["scales"][f"{scale:g}"]["drift"]), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(SETTINGS), help="run only these settings")
    ap.add_argument("--adapter", nargs="*", default=[], metavar="NAME=DIR", help="measure trained weights instead")
    ap.add_argument("--scales", nargs="*", type=float, default=[1.0, 0.75, 0.5])
    ap.add_argument("--profile", default=None, help="config profile under configs/ (default: params.yaml alone)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sweep_forgetting.json")
    args = ap.parse_args()

    prior = json.loads(args.out.read_text()) if args.out.exists() else {}
    results: dict[str, Any] = prior.get("results", {}) if prior.get("protocol") == "drift-panel" else {}
    jobs = [(spec.split("=", 1)[0], Path(spec.split("=", 1)[1])) for spec in args.adapter]
    jobs += [(name, None) for name in (args.only if args.only is not None else ([] if jobs else list(SETTINGS)))]
    with tempfile.TemporaryDirectory() as tmp:
        for name, adapter in jobs:
            results[name] = (run_adapter(name, adapter, args.profile, args.scales, Path(tmp)) if adapter is not None
                             else run_setting(name, args.profile, args.scales, Path(tmp)))
            args.out.write_text(json.dumps({
                "protocol": "drift-panel",
                "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "results": results}, indent=2, default=str))

    sources = sorted({s for r in results.values() for m in r["scales"].values() for s in m["drift"]})
    print(f"\n{'setting':<22}{'scale':>6}{'NDCG@10':>9}{'valid':>7}{'exact':>7}"
          + "".join(f"{s[:12]:>13}" for s in sources) + f"{'golden KL':>11}  verdict")
    for name, r in results.items():
        rows = [(f"x{k}", m) for k, m in r["scales"].items()]
        for label, m in rows:
            c = m["systems"]["candidate"]
            print(f"{name:<22}{label:>6}{c['ndcg_at_10']:>9.3f}{c['valid_item_rate']:>7.2f}{c['exact_title_rate']:>7.2f}"
                  + "".join(f"{m['drift'].get(s, float('nan')):>+13.1%}" for s in sources)
                  + f"{m['golden_kl']:>+11.3f}  {m['verdict']} {' '.join(m['failed'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
