"""What distilled replay costs per training step, side by side on the same batches (not a test).

    .venv/bin/python bench/bench_distill.py [--steps 8] [--rounds 2]

Builds the demo's training rows with the embedded model (recommendation examples plus 25% replay
rows: text chunks and the base's chat answers), cuts them into the same length-grouped batches
of 8, and times a full step (forward, backward, AdamW update of the LoRA weights) on each batch
twice: with the replay rows learned by their tokens (``mode: tokens``, cross-entropy) and with them
distilled (``mode: distill``: KL to the base, one extra no-grad forward of the rows that have
distilled tokens). Modes alternate within every round (AB BA ...), so the VM's drift in speed
hits both. Reported as the mean over the batches (the training mix) and per kind of batch. Prints a table and writes ``bench/results/distill.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tether.env import configure_environment  # noqa: E402

configure_environment(ROOT)

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="batches timed per mode and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distill.json")
    args = ap.parse_args()

    from tether.config import load_config
    from tether.eval.selfsamples import cached_samples
    from tether.model.base import load_base_model
    from tether.model.train import (
        CompletionCollator, SeededLengthGroupedSampler, build_lora_model, build_replay_chunks, chat_rows,
        completion_loss, encode_examples, mix_replay, read_examples,
    )

    cfg = load_config()
    tc = cfg.train
    model, tok, resolved = load_base_model(cfg.model, device="cpu")
    rows = read_examples(ROOT / cfg.paths.processed_dir / "train.jsonl")[:400]
    task = encode_examples(tok, rows, tc.max_length)
    text = build_replay_chunks(tok, ROOT / tc.replay.corpus_dir, tc.replay.chunk_tokens, distill=True)
    samples, _ = cached_samples(model, tok, split="train", n_samples=tc.replay.chat_samples,
                                max_new_tokens=tc.replay.chat_max_new_tokens, seed=cfg.seed,
                                base_hash=resolved.content_hash, cache_dir=cfg.model.resolved_cache_dir())
    distilled = mix_replay(task, text + chat_rows(samples, tc.max_length), tc.replay.ratio, cfg.seed)
    as_tokens = [{k: r[k] for k in ("input_ids", "labels")} for r in distilled]  # the same rows, learned by token
    order = list(iter(SeededLengthGroupedSampler([len(r["input_ids"]) for r in distilled], tc.batch_size, cfg.seed)))
    batches = [order[i : i + tc.batch_size] for i in range(0, args.steps * tc.batch_size, tc.batch_size)]
    collate = CompletionCollator(tok.pad_token_id)
    data = {"tokens": [collate([as_tokens[i] for i in b]) for b in batches],
            "distill": [collate([distilled[i] for i in b]) for b in batches]}
    n_replay = [sum(1 for i in b if "distill_mask" in distilled[i] and all(distilled[i]["distill_mask"])) for b in batches]

    peft_model = build_lora_model(model, tc, seed=cfg.seed).train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=tc.learning_rate)

    def step(batch: dict) -> float:
        started = time.perf_counter()
        loss, n = completion_loss(peft_model, batch, tc.replay.distill_weight)
        (loss / n.clamp(min=1)).backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    for batch in data["tokens"][:1] + data["distill"][:1]:  # warm-up
        step(batch)
    times: dict[str, list[float]] = {"tokens": [], "distill": []}
    for r in range(args.rounds):
        for k in range(args.steps):
            first, second = ("tokens", "distill") if (r + k) % 2 == 0 else ("distill", "tokens")
            for mode in (first, second):
                times[mode].append(step(data[mode][k]))
    # Length grouping puts the long replay rows together: some batches are all replay, most have none,
    # so the cost is reported per kind of batch and as the mean over the training mix.
    kinds = {"replay": [k for k in range(args.steps) if n_replay[k]], "task": [k for k in range(args.steps) if not n_replay[k]]}
    per = {m: {kind: statistics.mean(times[m][r * args.steps + k] for r in range(args.rounds) for k in ks) if ks else None
               for kind, ks in kinds.items()} for m in times}
    mean = {m: statistics.mean(v) for m, v in times.items()}
    out = {
        "benchmark": "distill", "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "steps": args.steps, "rounds": args.rounds, "batch_size": tc.batch_size,
        "replay_rows_per_batch": n_replay, "seconds_per_step": times, "mean_seconds_per_step": mean,
        "mean_seconds_by_batch_kind": per,
        "distill_over_tokens": mean["distill"] / mean["tokens"],
        "distill_over_tokens_on_replay_batches": (per["distill"]["replay"] / per["tokens"]["replay"]
                                                  if per["tokens"]["replay"] else None),
    }
    args.out.write_text(json.dumps(out, indent=2))
    print(f"{'mode':<10}{'mean s/step':>13}{'replay batches':>16}{'task batches':>14}")
    for m in ("tokens", "distill"):
        print(f"{m:<10}{mean[m]:>13.2f}{per[m]['replay'] or float('nan'):>16.2f}{per[m]['task'] or float('nan'):>14.2f}")
    print(f"distill / tokens = {out['distill_over_tokens']:.2f}x per step over the mix "
          f"({out['distill_over_tokens_on_replay_batches']:.2f}x on replay batches; replay rows per batch: {n_replay})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
