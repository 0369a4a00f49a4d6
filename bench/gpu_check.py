"""The GPU path measured in one call: training tokens/s and MFU, scoring users/s, a full-catalog evaluation.

Run on a lent CUDA machine with ``bash bench/gpu_check.sh`` (<= 8 minutes on an H200); on a CPU at
tiny size with ``bash bench/gpu_check.sh --tiny`` (seconds; ``tests/pipeline/test_gpu_check.py`` does this).
Writes ``bench/results/gpu.json`` (and ``$OUT/gpu.json`` when ``$OUT`` is set: what a device call
brings back), after every section, so a run cut short still leaves what it measured.

**The model.** The lent machine has no model files and 64 MiB travel per call, so the model is
built from SmolLM2-135M-Instruct's ``config.json`` (the values below, copied from the converted
model in ``~/.cache/tether/models/smollm2-135m-instruct-*/config.json``) with random weights: the
same shapes and kernels, so the same speed and MFU (never quality). Inputs come from
``bench/gpu_synthetic.py`` (a word-level tokenizer with the real chat template; titles, prompts and
replay chunks of the real token lengths). LoRA settings, batch size, max length and the replay
share are read from ``params.yaml`` with plain ``yaml`` (no pydantic on that machine).

**What is timed.** (1) Training: the pipeline's step (its collator, sampler and
:func:`completion_loss`: logits only at labelled positions) with AdamW, in bf16 (bf16 weights,
autocast, like the Trainer's ``bf16=True``), at the default batch (8) and at 32 and 64, each with
left-padded batches and with padding-free flattened ones (one row, position ids restarting per
example, no attention mask: transformers reads the boundaries from the position ids), and with
liger-kernel's RMSNorm/RoPE/SwiGLU kernels when liger is installed (skipped with the reason when
not). (2) Scoring: :func:`tether.eval.scoring.rank_users` at the default protocol (1 positive + 19
negatives) and over the whole catalog (every item the user has not seen) of an ML-100k-sized log
(943 users x 1,682 items), at a few candidate batch sizes; the full evaluation runs until its time
budget and is extrapolated from the users done if it did not finish (``extrapolated`` says which).

**MFU** = model FLOPs of a step / step time / peak FLOP/s of the device, where model FLOPs count
only real tokens (padding is waste, not work) and only what LoRA training must compute:

* forward, every layer: ``2 * P_layer`` per token (``P_layer`` = q, k, v, o, gate, up, down weights),
  attention ``2 * 2 * heads * head_dim * T^2 / 2`` per row of ``T`` real tokens (causal half),
  LoRA ``2 * r * (d_in + d_out)`` per adapted projection and token, the output layer ``2 * d * V``
  at each position whose logits are computed (the labelled ones);
* backward, only from the loss down to the lowest adapted layer (layers below it get no gradient
  at all): activation gradients ``2 * P_layer`` per token and twice the attention forward; LoRA
  ``4 * r * (d_in + d_out)`` (activation + weight gradients); the output layer's input gradient
  ``2 * d * V`` per kept position. Frozen weights get no weight gradients, so nothing for them.

``mfu_6n`` is the common ``6 * N * tokens`` convention (N = non-embedding weights + output layer)
for comparison; it over-counts LoRA training, which skips most of the backward. Peak dense bf16
FLOP/s (no sparsity) come from NVIDIA's datasheets, in ``PEAK_BF16_TFLOPS``; ``GPU_PEAK_TFLOPS``
overrides it, and an unknown device gets ``mfu: null`` with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import traceback
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# SmolLM2-135M-Instruct, from its config.json (see the module docstring).
SMOLLM2_135M = {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True, "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
TINY = {**SMOLLM2_135M, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1024, "max_position_embeddings": 1024}
# Dense bf16 tensor-core peak, no sparsity (NVIDIA datasheets); matched against torch's device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0,
                    "A10": 125.0, "RTX 4090": 165.0}
FORBIDDEN = ("pydantic", "mlflow", "prefect", "gguf")  # absent on the lent machine: must never be imported
CATALOG = {"users": 943, "items": 1682}


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def read_train_settings(params: Path) -> dict[str, Any]:
    """The ``train`` settings the check needs, from ``params.yaml`` (plain yaml: no pydantic here)."""
    import yaml

    t = yaml.safe_load(params.read_text(encoding="utf-8"))["train"]
    return {k: t[k] for k in ("lora_rank", "lora_alpha", "lora_dropout", "target_modules", "layers_to_transform",
                              "learning_rate", "max_length", "batch_size", "max_grad_norm")} | {
        "replay_ratio": t["replay"]["ratio"], "chunk_tokens": t["replay"]["chunk_tokens"]}


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"]), "GPU_PEAK_TFLOPS"
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific first
        if key in device_name:
            return value, f"PEAK_BF16_TFLOPS[{key!r}]"
    return None, f"no peak FLOP/s known for {device_name!r}: set GPU_PEAK_TFLOPS"


def step_flops(c: dict[str, Any], lengths: list[int], kept: int, lora: dict[str, Any]) -> dict[str, float]:
    """Model FLOPs of one LoRA training step (the module docstring's formula), by part, and the 6N convention.

    Args:
        c: the model config values.
        lengths: real tokens of each row of the batch.
        kept: positions whose logits are computed (the labelled ones).
        lora: ``r``, ``modules`` (adapted projections) and ``layers`` (adapted layers, contiguous up to the top).

    In the lowest adapted layer nothing needs the gradient of the layer's input, so the input gradients
    of the projections that read it (q, k, v; and their LoRA A matrices) are not computed either.
    ``tests/pipeline/test_gpu_check.py`` checks the total against torch's FLOP counter.
    """
    d, f, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
              "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    reads_input = ("q_proj", "k_proj", "v_proj")
    p_layer = sum(a * b for a, b in shapes.values())
    tokens = sum(lengths)
    attn = sum(2 * 2 * q * t * t / 2 for t in lengths)  # one layer's forward QK^T and AV, causal half
    adapted = [m for m in lora["modules"] if m in shapes]
    n_lora, grad_layers = len(lora["layers"]), L - min(lora["layers"])  # backward: top down to the lowest adapted
    lora_fwd = sum(2 * lora["r"] * (shapes[m][0] + shapes[m][1]) for m in adapted) * n_lora * tokens
    skipped = tokens * (sum(2 * a * b for m, (a, b) in shapes.items() if m in reads_input)
                        + sum(2 * shapes[m][0] * lora["r"] for m in adapted if m in reads_input))
    parts = {
        "linear": 2 * p_layer * L * tokens + 2 * p_layer * grad_layers * tokens,
        "attention": attn * L + 2 * attn * grad_layers,
        "lora": lora_fwd * 3,  # forward + input gradients + weight gradients
        "lm_head": 2 * d * V * kept * 2,  # forward + input gradient (the tied weight is frozen)
        "lowest_layer_input_grads": -skipped,
    }
    return {"model_flops": sum(parts.values()), "parts": parts, "flops_6n": 6 * (p_layer * L + d * V) * tokens}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def flatten(batch_rows: list[dict[str, list[int]]]) -> dict[str, Any]:
    """Padding-free: the rows as one sequence, position ids restarting per row, no attention mask.

    A row's first label is dropped: in the flat sequence it would be predicted by the previous row.
    """
    import torch

    ids, labels, pos = [], [], []
    for r in batch_rows:
        ids += r["input_ids"]
        labels += [-100] + list(r["labels"][1:])
        pos += list(range(len(r["input_ids"])))
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([pos])}


def train_config(model: Any, rows: list[dict[str, list[int]]], batch: int, layout: str, s: dict[str, Any],
                 device: str, dtype: Any, warmup: int, steps: int, seed: int, lora: dict[str, Any],
                 c: dict[str, Any], peak: float | None) -> dict[str, Any]:
    """Time ``steps`` optimizer steps (after ``warmup``) of the pipeline's LoRA step on ``rows``."""
    import torch

    from tether.model.train import CompletionCollator, SeededLengthGroupedSampler, completion_loss

    order = list(SeededLengthGroupedSampler([len(r["input_ids"]) for r in rows], batch, seed))
    collate = CompletionCollator(SMOLLM2_135M["pad_token_id"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s["learning_rate"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds, lengths_all, kept_all, padded = [], [], [], 0
    for k in range(warmup + steps):
        rows_k = [rows[i] for i in order[(k * batch) % len(order) :][:batch]]
        b = collate(rows_k) if layout == "padded" else flatten(rows_k)
        b = {key: v.to(device) for key, v in b.items()}
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            loss_sum, n = completion_loss(model, b)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(params, s["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if k >= warmup:
            seconds.append(time.perf_counter() - t0)
            lengths_all.append([len(r["input_ids"]) for r in rows_k])
            kept_all.append(int(n))
            padded += int(b["input_ids"].numel())
    real = sum(sum(x) for x in lengths_all)
    flops = [step_flops(c, ls, kept, lora) for ls, kept in zip(lengths_all, kept_all)]
    total_s = sum(seconds)
    model_flops, flops_6n = sum(x["model_flops"] for x in flops), sum(x["flops_6n"] for x in flops)
    out = {
        "batch": batch, "layout": layout, "steps_timed": steps, "seconds_per_step": total_s / steps,
        "real_tokens": real, "padded_tokens": padded, "padding_share": 1 - real / padded,
        "tokens_per_second": real / total_s, "model_tflops_per_step": model_flops / steps / 1e12,
        "achieved_tflops": model_flops / total_s / 1e12,
        "mfu": model_flops / total_s / (peak * 1e12) if peak else None,
        "mfu_6n": flops_6n / total_s / (peak * 1e12) if peak else None,
        "final_loss": float(loss_sum.detach() / n),
    }
    if device.startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def build_model(c: dict[str, Any], s: dict[str, Any], device: str, dtype: Any, seed: int) -> tuple[Any, dict[str, Any]]:
    """The SmolLM2-135M-shaped Llama with random weights, wrapped with the configured LoRA."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tether.model.train import resolve_layers

    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(**c, attn_implementation="sdpa")).to(device=device, dtype=dtype)
    layers = resolve_layers(s["layers_to_transform"], c["num_hidden_layers"]) or list(range(c["num_hidden_layers"]))
    model = get_peft_model(base, LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=s["lora_rank"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
        target_modules=list(s["target_modules"]), layers_to_transform=layers, bias="none"))
    return model, {"r": s["lora_rank"], "modules": list(s["target_modules"]), "layers": layers}


def padding_free_matches(model: Any, rows: list[dict[str, list[int]]], device: str) -> float:
    """Relative difference of the loss of one batch, left-padded vs flattened (same weights, no update)."""
    import torch

    from tether.model.train import CompletionCollator, completion_loss

    batch = rows[:4]
    with torch.no_grad():
        # Left padding already leaves each row's first token unscored (nothing real precedes it), as flatten() does.
        a = CompletionCollator(SMOLLM2_135M["pad_token_id"])(batch)
        s1, n1 = completion_loss(model, {k: v.to(device) for k, v in a.items()})
        s2, n2 = completion_loss(model, {k: v.to(device) for k, v in flatten(batch).items()})
    return abs(float(s1 / n1) - float(s2 / n2)) / float(s1 / n1)


def scoring(model: Any, tok: Any, prompts: list, seen: list, titles: list[str], n_default: int,
            batch_sizes: list[int], probe_users: int, budget_s: float, device: str) -> dict[str, Any]:
    """Users/s at the default protocol, then the full catalog: probe batch sizes, run the best until the budget."""
    import random

    from tether.eval.scoring import rank_users

    rng = random.Random(0)
    examples = [{"prompt": p} for p in prompts]
    out: dict[str, Any] = {"catalog_items": len(titles), "users": len(prompts)}
    sampled = []
    for s_ in seen[:n_default]:
        pool = [i for i in range(len(titles)) if i not in s_]
        sampled.append([titles[i] for i in rng.sample(pool, 20)])
    rank_users(model, tok, examples[:2], sampled[:2], batch_size=32, progress=False)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    rank_users(model, tok, examples[:n_default], sampled, batch_size=32, progress=False)
    _sync(device)
    dt = time.perf_counter() - t0
    out["default_protocol"] = {"users": n_default, "candidates_per_user": 20, "batch_size": 32, "seconds": dt,
                               "users_per_second": n_default / dt}

    def full(i: int) -> list[str]:
        return [titles[j] for j in range(len(titles)) if j not in seen[i]]

    probes = {}
    for bs in batch_sizes:
        _sync(device)
        t0 = time.perf_counter()
        rank_users(model, tok, examples[:probe_users], [full(i) for i in range(probe_users)], batch_size=bs, progress=False)
        _sync(device)
        probes[bs] = probe_users / (time.perf_counter() - t0)
    best = max(probes, key=probes.__getitem__)
    done, t0 = 0, time.perf_counter()
    while done < len(prompts) and time.perf_counter() - t0 < budget_s:
        chunk = list(range(done, min(done + 16, len(prompts))))
        rank_users(model, tok, [examples[i] for i in chunk], [full(i) for i in chunk], batch_size=best, progress=False)
        done += len(chunk)
    _sync(device)
    dt = time.perf_counter() - t0
    out["full_catalog"] = {
        "probe_users": probe_users, "users_per_second_by_batch_size": {str(k): v for k, v in probes.items()},
        "batch_size": best, "users_done": done, "seconds_done": dt, "users_per_second": done / dt,
        "candidates_mean": sum(len(titles) - len(s_) for s_ in seen) / len(seen),
        "seconds": dt * len(prompts) / done, "extrapolated": done < len(prompts),
    }
    return out


def _section(report: dict[str, Any], name: str, fn: Callable[[], Any], write: Callable[[], None]) -> None:
    """Run one section; an error is recorded in the report (the device run goes on) and printed."""
    t0 = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as exc:  # noqa: BLE001 - a one-shot device run records every failure and continues
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        print(f"[{name}] FAILED: {exc}", flush=True)
    report.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
    write()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_CHECK_TINY") == "1",
                        help="a 4-layer model on the CPU, seconds (the test's mode)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--catalog-budget-s", type=float, default=150.0, help="wall time for the full-catalog run")
    args = parser.parse_args()

    import torch

    started = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32  # bf16 is the GPU path; the CPU run only proves the script
    c = TINY if args.tiny else SMOLLM2_135M
    s = read_train_settings(ROOT / "params.yaml")
    name = torch.cuda.get_device_name(0) if on_gpu else platform.processor() or platform.machine()
    peak, peak_source = peak_tflops(name) if on_gpu else (None, "cpu: no peak table (the CPU run is a smoke test)")
    outs = [args.out] + ([Path(os.environ["OUT"]) / "gpu.json"] if os.environ.get("OUT") else [])
    report: dict[str, Any] = {
        "benchmark": "gpu_check", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["bash bench/gpu_check.sh", *sys.argv[1:]]), "tiny": args.tiny,
        "machine": {"device": device, "device_name": name, "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if on_gpu else None,
                    "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if on_gpu else None},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     **{p: _version(p) for p in ("transformers", "peft", "accelerate", "tokenizers", "liger-kernel")}},
        "dtype": str(dtype).removeprefix("torch."), "model_config": c, "train_settings": s,
        "peak_tflops": peak, "peak_source": peak_source,
    }

    def write() -> None:
        for path in outs:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")

    import gpu_synthetic as syn

    tok = syn.make_tokenizer(c["vocab_size"])
    titles = syn.catalog(60 if args.tiny else CATALOG["items"], c["vocab_size"], args.seed)
    model, lora = build_model(c, s, device, dtype, args.seed)
    batches = [2, 4] if args.tiny else [s["batch_size"], 32, 64]
    warmup, steps = (1, 2) if args.tiny else (3, 10)
    rows = syn.training_rows(tok, max(batches) * (warmup + steps), titles, s["replay_ratio"], s["chunk_tokens"],
                             s["max_length"], c["vocab_size"], args.seed)
    report["padding_free_loss_rel_diff"] = padding_free_matches(model, rows, device)

    def training(liger: bool) -> list[dict[str, Any]]:
        return [train_config(model, rows, b, layout, s, device, dtype, warmup, steps, args.seed, lora, c, peak)
                | {"liger": liger} for b in batches for layout in ("padded", "padding_free")]

    _section(report, "training", lambda: training(False), write)

    def liger_section() -> dict[str, Any]:
        if not on_gpu:
            return {"skipped": "liger-kernel's kernels are Triton (CUDA) only; this run is on the CPU"}
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_llama
        except ImportError as exc:
            return {"skipped": f"liger-kernel not installed ({exc}); see bench/gpu_check.sh for carrying its wheel"}
        # Its layer kernels only: the loss stays the pipeline's (logits at labelled positions only).
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False, model=model.get_base_model())
        return {"results": training(True)}

    _section(report, "liger", liger_section, write)
    n_users = 8 if args.tiny else CATALOG["users"]
    prompts, seen = syn.users(n_users, titles, c["vocab_size"], args.seed, *((5, 30) if args.tiny else (20, 190)))
    _section(report, "scoring", lambda: scoring(
        model, tok, prompts, seen, titles, n_default=4 if args.tiny else 100,
        batch_sizes=[8, 32] if args.tiny else [32, 128, 512], probe_users=2 if args.tiny else 8,
        budget_s=5.0 if args.tiny else args.catalog_budget_s, device=device), write)

    runs = list(report["training"]) if isinstance(report.get("training"), list) else []
    runs += report["liger"].get("results", []) if isinstance(report.get("liger"), dict) else []
    default = next((r for r in runs if r["batch"] == batches[0] and r["layout"] == "padded" and not r["liger"]), None)
    best = max(runs, key=lambda r: r["tokens_per_second"], default=None)
    report["mfu"] = {
        "default_shapes": default and default["mfu"], "best": best and best["mfu"],
        "best_config": best and {k: best[k] for k in ("batch", "layout", "liger")},
        "peak_tflops": peak, "formula": "model FLOPs (LoRA-aware, real tokens only) / step time / peak; see gpu_check.py",
    }
    report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["forbidden_modules_loaded"] = sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    write()
    for r in runs:
        print(f"train b{r['batch']:<3} {r['layout']:<13} liger={r['liger']!s:<5} {r['tokens_per_second']:>10.0f} tok/s"
              f"  mfu {r['mfu'] if r['mfu'] is None else format(r['mfu'], '.1%')}")
    sc = report.get("scoring", {})
    if "full_catalog" in sc:
        print(f"scoring: {sc['default_protocol']['users_per_second']:.1f} users/s (20 candidates); full catalog "
              f"{sc['full_catalog']['seconds']:.0f} s for {n_users} users"
              + (" (extrapolated)" if sc["full_catalog"]["extrapolated"] else ""))
    print(f"wrote {', '.join(map(str, outs))} in {report['total_seconds']} s")


if __name__ == "__main__":
    main()
