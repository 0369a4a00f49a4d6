"""Benchmark each training-speed lever on its own, on the embedded model, same batches side by side (not a test).

One training step (forward, backward, clipping, AdamW) of the pipeline's LoRA on the default
training mix, run ``--steps`` times on the same batches from the same initial adapter for each
variant below, in alternating order over ``--rounds`` (the VM's speed drifts by ~10% over
minutes; each variant keeps its best round). Every variant changes one thing against
``baseline`` (the step before this benchmark: full rows, logits only at labelled positions, one
cross-entropy call, float32):

* ``shared_prefix``: the 48 tokens every prompt starts with run once per batch
  (:mod:`tether.model.prefix`, ``train.share_prompt_prefix``);
* ``full_logits``: the output layer at every position (what ``logits_to_keep`` saves: kept);
* ``chunked_ce``: the output layer and cross-entropy in chunks of ``--ce-chunk`` positions under
  activation checkpointing (the 49k-vocabulary logits never all at once; what Liger's fused linear
  cross-entropy does in a kernel on a GPU);
* ``cpu_bf16``: bf16 autocast over float32 weights (``train.precision: auto`` on a CPU with native
  bf16);
* ``adopted``: what ``params.yaml`` trains with on this machine (shared prefix, plus bf16 where the
  CPU has it).

Reported per variant: seconds per step, real tokens/s, the ratio to ``baseline``, and the loss of
every step compared with ``baseline``'s (the same arithmetic in another order must agree to ~1e-5;
bf16 is another precision, its difference is reported, and the demo's gate numbers decide it:
docs/decisions.md). Prints a table and writes ``bench/results/levers.json``.

Run: ``flock /tmp/tether-heavy.lock .venv/bin/python bench/bench_levers.py`` (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "shared_prefix": {"prefix": True},
    "full_logits": {"keep": False},
    "chunked_ce": {"ce_chunk": True},
    "cpu_bf16": {"bf16": True},
    "adopted": {"prefix": True, "bf16": "auto"},
}
EXACT_RTOL = 1e-4  # float32 sums of the same terms in another order


def _loss(model, batch, chunk: int | None, keep: bool):
    """Summed loss and labelled-token count of one batch, by one of the compared paths."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from tether.model import prefix
    from tether.model.device import base_of
    from tether.model.loss import _inputs, _targets, completion_loss

    if keep and not chunk:
        return completion_loss(model, batch)
    shifted, mask = _targets(batch)
    targets = shifted[mask]
    if not keep:  # logits at every position, then the labelled ones picked
        logits = prefix.forward(model, _inputs(batch)).logits[:, :-1][mask]
        return F.cross_entropy(logits.float(), targets, reduction="sum"), mask.sum()
    inner = base_of(model)
    hidden = prefix.forward(inner.model, _inputs(batch)).last_hidden_state[:, :-1][mask]

    def head(h, t):
        return F.cross_entropy(inner.lm_head(h).float(), t, reduction="sum")

    total = sum(checkpoint(head, hidden[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
                for i in range(0, len(targets), chunk))
    return total, mask.sum()


def run_variant(model, start_state, batches, prefix_ids, settings, args) -> dict[str, Any]:
    """``len(batches)`` optimizer steps from ``start_state``; per-step seconds, tokens and losses."""
    import torch

    from tether.model.device import cpu_bf16_flags
    from tether.model.prefix import real_tokens
    from tether.model.train import CompletionCollator

    model.load_state_dict(start_state, strict=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    bf16 = bool(cpu_bf16_flags()) if settings.get("bf16") == "auto" else bool(settings.get("bf16"))
    collate = CompletionCollator(args.pad_id, prefix=prefix_ids if settings.get("prefix") else ())
    chunk = args.ce_chunk if settings.get("ce_chunk") else None
    seconds, tokens, losses = [], [], []
    for rows in batches:
        t0 = time.perf_counter()
        batch = collate(rows)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss_sum, n = _loss(model, batch, chunk, settings.get("keep", True))
        loss = loss_sum / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
        tokens.append(int(real_tokens(batch)))
        losses.append(float(loss))
    timed = slice(args.warmup, None)
    return {"seconds_per_step": sum(seconds[timed]) / len(seconds[timed]),
            "tokens_per_second": sum(tokens[timed]) / sum(seconds[timed]),
            "bf16": bf16, "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating-order rounds; each variant keeps its best")
    parser.add_argument("--ce-chunk", type=int, default=128, help="positions per chunk of chunked_ce")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "levers.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.disable(logging.WARNING)
    import torch

    from train_variants import build_workload
    from tether.config import load_config
    from tether.model.base import load_base_model
    from tether.model.device import cpu_bf16_flags
    from tether.model.prefix import shared_prefix
    from tether.model.train import SeededLengthGroupedSampler, build_lora_model

    variants = args.variants.split(",")
    if "baseline" not in variants or set(variants) - set(VARIANTS):
        raise SystemExit(f"--variants: choose from {', '.join(VARIANTS)}; baseline is required")
    cfg = load_config(overrides={"train": {"replay": {"mode": "tokens"}}})
    model, tokenizer, _ = load_base_model(cfg.model, device="cpu", dtype="float32", progress=False)
    n_steps = args.warmup + args.steps
    work = build_workload(cfg, tokenizer, args.batch * n_steps, 8, seed=args.seed)
    order = list(SeededLengthGroupedSampler([len(r["input_ids"]) for r in work.train_rows], args.batch, args.seed))
    batches = [[work.train_rows[i] for i in order[k : k + args.batch]] for k in range(0, len(order), args.batch)][:n_steps]
    prefix_ids = shared_prefix(work.train_rows)
    args.pad_id = tokenizer.pad_token_id
    peft_model = build_lora_model(model, cfg.train, seed=args.seed).train()
    start = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    started = time.perf_counter()
    for round_no in range(args.rounds):
        for v in variants if round_no % 2 == 0 else variants[::-1]:
            res = run_variant(peft_model, start, batches, prefix_ids, VARIANTS[v], args)
            runs[v].append(res)
            print(f"round {round_no + 1} {v}: {res['seconds_per_step']:.2f} s/step, {res['tokens_per_second']:.0f} tokens/s",
                  flush=True)
    base = min(runs["baseline"], key=lambda r: r["seconds_per_step"])
    results = {}
    for v in variants:
        best = min(runs[v], key=lambda r: r["seconds_per_step"])
        rel = max(abs(a - b) / abs(b) for a, b in zip(best["losses"], base["losses"]))
        results[v] = {
            **{k: best[k] for k in ("seconds_per_step", "tokens_per_second", "bf16")},
            "speedup_vs_baseline": base["seconds_per_step"] / best["seconds_per_step"],
            "speedup_per_round": [b["seconds_per_step"] / r["seconds_per_step"] for b, r in zip(runs["baseline"], runs[v])],
            "loss_max_rel_diff_vs_baseline": rel,
            "loss_equal_to_float32_reordering": rel <= EXACT_RTOL,
            "losses": best["losses"],
        }
    print(f"\n{'variant':<15}{'s/step':>8}{'tokens/s':>10}{'speed-up':>10}{'loss vs baseline':>18}")
    for v, r in results.items():
        print(f"{v:<15}{r['seconds_per_step']:>8.2f}{r['tokens_per_second']:>10.0f}{r['speedup_vs_baseline']:>9.2f}x"
              f"{r['loss_max_rel_diff_vs_baseline']:>17.1e}{'' if r['loss_equal_to_float32_reordering'] else ' (differs)'}")
    report = {
        "benchmark": "levers",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/bench_levers.py", *sys.argv[1:]]),
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cpu_bf16_flags": cpu_bf16_flags(), "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"steps": args.steps, "warmup": args.warmup, "batch": args.batch, "rounds": args.rounds,
                     "ce_chunk": args.ce_chunk, "seed": args.seed, "prefix_tokens": len(prefix_ids),
                     "rows": {"task": work.n_task, "replay": work.n_replay}, "replay_mode": "tokens"},
        "variants": {v: VARIANTS[v] for v in variants},
        "results": results,
        "all_runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
