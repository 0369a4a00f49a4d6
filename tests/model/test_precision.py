"""Training precision: cpu-bf16 only where the CPU has native bf16, and never leaking into what runs after training."""

from __future__ import annotations

import pytest
import torch
from tiny import build_tiny_model, build_tiny_tokenizer, make_examples

from tether.config import load_config
from tether.model.device import cpu_bf16_flags, training_precision
from tether.model.train import CompletionCollator, encode_examples, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_the_flags_are_read_from_cpuinfo() -> None:
    assert cpu_bf16_flags(SAPPHIRE_RAPIDS) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags(GRAVITON3) == ["bf16"]
    assert cpu_bf16_flags(SKYLAKE) == []  # AVX512 without BF16: torch emulates bf16, slower than float32
    assert cpu_bf16_flags("") == []


@pytest.mark.parametrize(
    ("setting", "device", "dtype", "cpuinfo", "autocast", "name"),
    [
        ("auto", "cpu", torch.float32, SAPPHIRE_RAPIDS, True, "cpu-bf16"),
        ("auto", "cpu", torch.float32, GRAVITON3, True, "cpu-bf16"),
        ("auto", "cpu", torch.float32, SKYLAKE, False, "fp32"),
        ("fp32", "cpu", torch.float32, SAPPHIRE_RAPIDS, False, "fp32"),
        ("bf16", "cpu", torch.float32, SKYLAKE, True, "cpu-bf16"),
        ("auto", "cpu", torch.bfloat16, SAPPHIRE_RAPIDS, False, "bfloat16 weights"),
        ("auto", "cuda", torch.bfloat16, SKYLAKE, True, "bf16"),
        ("auto", "cuda:1", torch.float32, SAPPHIRE_RAPIDS, False, "float32"),
    ],
)
def test_which_precision_trains(setting, device, dtype, cpuinfo, autocast, name) -> None:
    got = training_precision(setting, device, dtype, cpuinfo)
    assert got.autocast is autocast
    assert got.name == name


def test_a_bf16_trained_model_scores_in_float32_afterwards(tmp_path) -> None:
    """Accelerate wraps forward in bf16 autocast for training; fit hands back the model without it."""
    tok = build_tiny_tokenizer()
    feats = encode_examples(tok, make_examples(8, seed=1), 128)
    cfg = load_config(profile="test", overrides={"train": {
        "max_steps": 2, "batch_size": 4, "precision": "bf16", "save_every": 100, "eval_every": 100,
        "early_stopping_patience": None}}).train
    result = fit(build_tiny_model(tok), tok, feats, None, cfg, tmp_path / "run", seed=0)
    assert result.precision == "cpu-bf16"
    assert all(loss == loss for _, loss in result.train_loss)  # finite, not NaN
    batch = CompletionCollator(tok.pad_token_id)(feats[:4])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    model = result.model.eval()
    with torch.no_grad():
        after = model(**inputs).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            in_bf16 = model(**inputs).logits
        plain = type(model).forward(model, **inputs).logits  # the class's own forward: no wrapper at all
    assert after.dtype == torch.float32
    assert torch.equal(after, plain)
    assert not torch.equal(after, in_bf16.float())
