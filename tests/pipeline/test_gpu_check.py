"""bench/gpu_check.sh runs on the CPU at tiny size and writes every field of bench/results/gpu.json.

The script is meant for a lent GPU machine that has no mlflow, prefect, pydantic or gguf: the run
here blocks those imports outright (a ``sitecustomize`` on ``PYTHONPATH``), so a tether module that
starts importing one of them fails this test instead of the one-shot device call. Its MFU formula
is checked against torch's own FLOP counter. About 15 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("pydantic", "mlflow", "prefect", "gguf")

# Hides the packages from the path finder, so they look not installed (find_spec() is None), as on the
# lent machine: libraries that probe for them (accelerate probes mlflow) then go on without them.
BLOCKER = f"""
import importlib.machinery as _m
_find = _m.PathFinder.find_spec
def _find_spec(cls, fullname, path=None, target=None):
    if fullname.split(".")[0] in {FORBIDDEN!r}:
        return None
    return _find(fullname, path, target)
_m.PathFinder.find_spec = classmethod(_find_spec)
"""


@pytest.mark.integration
def test_gpu_check_tiny_on_cpu_writes_every_field(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(out.read_text())

    for key in ("machine", "versions", "dtype", "model_config", "train_settings", "peak_tflops", "peak_source",
                "training", "liger", "scoring", "mfu", "peak_memory_gib", "peak_rss_mib", "padding_free_loss_rel_diff",
                "forbidden_modules_loaded", "total_seconds", "section_seconds"):
        assert key in report, key
    assert report["tiny"] is True and report["machine"]["device"] == "cpu"
    assert report["forbidden_modules_loaded"] == []
    assert {"torch", "transformers", "peft", "liger-kernel"} <= set(report["versions"])

    training = report["training"]
    assert isinstance(training, list), training  # a dict here is a recorded error
    assert {(r["batch"], r["layout"]) for r in training} == {(b, l) for b in (2, 4) for l in ("padded", "padding_free")}
    for r in training:
        for key in ("tokens_per_second", "seconds_per_step", "real_tokens", "padded_tokens", "padding_share",
                    "model_tflops_per_step", "achieved_tflops", "mfu", "mfu_6n", "final_loss", "liger"):
            assert key in r, key
        assert r["tokens_per_second"] > 0 and r["real_tokens"] > 0
        assert r["mfu"] is None  # no peak FLOP/s for a CPU: null, with the reason in peak_source
        if r["layout"] == "padding_free":
            assert r["padding_share"] == 0
    # Flattened batches compute the same loss as left-padded ones (float32 here).
    assert report["padding_free_loss_rel_diff"] < 1e-4
    assert "Triton" in report["liger"]["skipped"]

    scoring = report["scoring"]
    assert scoring["default_protocol"]["users_per_second"] > 0
    full = scoring["full_catalog"]
    for key in ("batch_size", "users_done", "users_per_second", "seconds", "extrapolated", "candidates_mean",
                "users_per_second_by_batch_size"):
        assert key in full, key
    assert full["users_done"] == scoring["users"] and full["extrapolated"] is False
    assert set(report["mfu"]) >= {"default_shapes", "best", "best_config", "peak_tflops", "formula"}


def test_mfu_formula_matches_torch_flop_counter() -> None:
    """step_flops() counts what torch counts for a LoRA step (eager attention: the full T^2, not the causal half)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check as g
    import gpu_synthetic as syn

    from tether.model.train import completion_loss

    c = g.TINY
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    layers = [2, 3]
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(**c, attn_implementation="eager")), LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=modules,
        layers_to_transform=layers))
    tok = syn.make_tokenizer(c["vocab_size"])
    rows = syn.training_rows(tok, 4, syn.catalog(60, c["vocab_size"], 0), 0.25, 128, 256, c["vocab_size"], 0)
    task = next(r for r in rows if -100 in r["labels"])
    replay = next(r for r in rows if -100 not in r["labels"])
    for row in (task, replay):
        batch = g.flatten([row])
        with FlopCounterMode(display=False) as counter:
            loss_sum, n = completion_loss(model, batch)
            (loss_sum / n).backward()
        est = g.step_flops(c, [len(row["input_ids"])], int(n), {"r": 8, "modules": modules, "layers": layers})
        assert counter.get_total_flops() == pytest.approx(est["model_flops"] + est["parts"]["attention"], rel=1e-6)
