"""The product's reason to exist: an adapter that damaged general generation is blocked by the drift gate.

A tiny model is fine-tuned twice on the same recommendation data: once with a very high
learning rate on repetitive junk completions (it forgets general text), once gently (tiny
learning rate, few steps). The real evaluate stage and the real gates judge both.
"""

from __future__ import annotations

import pytest
import torch
from test_evaluate import eval_config, make_processed
from tiny import build_tiny_model_dir

from tether.eval.evaluate import evaluate_run
from tether.eval.gating import build_gates
from tether.model.train import encode_examples, fit, read_examples, save_adapter

pytestmark = pytest.mark.integration

JUNK = " ".join(["zz qq"] * 12)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("drift")
    root = make_processed(base / "proj")
    model_dir = build_tiny_model_dir(base / "model")
    yield {"base": base, "root": root, "model": model_dir}
    torch.set_num_threads(before)


def _train_adapter(setup, name: str, *, junk: bool, lr: float, steps: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether.config import load_config

    tokenizer = AutoTokenizer.from_pretrained(setup["model"])
    rows = read_examples(setup["root"] / "data/processed/train.jsonl")[:64]
    if junk:
        rows = [{**r, "completion": [{"role": "assistant", "content": JUNK}]} for r in rows]
    train_cfg = load_config(profile="test", overrides={"train": {
        "learning_rate": lr, "max_steps": steps, "warmup_steps": 0, "lr_scheduler": "constant",
        "layers_to_transform": "all", "lora_dropout": 0.0, "batch_size": 8, "save_every": 1000, "eval_every": 1000,
        "max_grad_norm": 1000.0,
    }}).train
    fitted = fit(
        AutoModelForCausalLM.from_pretrained(setup["model"]), tokenizer, encode_examples(tokenizer, rows, 256), None,
        train_cfg, setup["base"] / f"run-{name}", seed=0,
    )
    return save_adapter(fitted.model, tokenizer, setup["base"] / f"adapter-{name}")


def _drift_gate(setup, adapter):
    cfg = eval_config(setup["root"], cache=setup["base"] / "cache")
    evaluation = evaluate_run(cfg, setup["root"], adapter, model_dir=setup["model"], progress=False)
    gate = next(g for g in build_gates(evaluation, cfg.gates) if (g.gate, g.metric) == ("perplexity_drift", "corpus"))
    return evaluation, gate


def test_damaged_adapter_trips_the_drift_gate_and_a_gentle_one_passes(setup) -> None:
    damaged, gate = _drift_gate(setup, _train_adapter(setup, "damaged", junk=True, lr=0.05, steps=12))
    drift = damaged.comparisons["drift_panel"]["corpus"]["drift"]
    assert drift > 0.05, drift
    assert not gate.passed and gate.blocking
    assert gate.threshold == 0.05
    assert "perplexity drift on corpus" in gate.reason and "FAIL" in gate.reason and f"{drift:+.2%}" in gate.reason
    assert gate.interval is not None and gate.interval[1] > 0.05  # the drift CI is recorded, and above the limit

    gentle, gate = _drift_gate(setup, _train_adapter(setup, "gentle", junk=False, lr=1e-5, steps=2))
    assert gentle.base_cache["hit"]  # the base was scored once, for the damaged adapter
    assert gentle.systems["base"]["perplexity.corpus"] == damaged.systems["base"]["perplexity.corpus"]
    assert gate.passed, gate.reason
    assert "perplexity drift" in gate.reason and "pass" in gate.reason
    assert abs(gentle.comparisons["drift_panel"]["corpus"]["drift"]) < 0.05
