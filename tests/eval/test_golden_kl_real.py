"""The golden-prompt KL check on the real embedded model: a fluent answer that lost its meaning is blocked.

The case from the field: a recommender fine-tune answered "Why do we have seasons? Explain it to
a ten-year-old." with "Sweets, they're like little treats that grow and change every year...".
Distinct-n, repetition, emptiness and length all passed it: the answer is fluent. The candidate's
NLL on the *base's own* answers to the golden prompts is what moved. Here a short recommender
fine-tune of SmolLM2 with no forgetting protection reproduces that kind of answer; the golden KL
gate must block it, while an untouched adapter (LoRA B = 0: the base itself) passes with KL 0.
"""

from __future__ import annotations

import pytest
import torch

from tether.config import load_config
from tether.eval.gates import generation_health_gate, kl_gate
from tether.eval.generation import generate, generation_health, load_golden_prompts
from tether.eval.selfsamples import golden_rows, sequence_nll

pytestmark = pytest.mark.slow

# The recipe: the demo's LoRA, replay by tokens (25% of rows), lr 3e-3, 24 steps of 8 (~80 s on 2 cores).
STEPS, LR = 24, 3e-3


def _golden_kl(model, tok, prompts, base_ids) -> tuple[float, list[str]]:
    rows = golden_rows(tok, prompts, base_ids)
    with model.disable_adapter():
        base = sequence_nll(model, rows)
    cand = sequence_nll(model, rows)
    answers = generate(model, tok, [p.messages for p in prompts], max_new_tokens=48, batch_size=8, progress=False)
    n = sum(c[1] for c in cand)
    return (sum(c[0] for c in cand) - sum(b[0] for b in base)) / n, answers


def test_golden_kl_blocks_a_fluent_answer_that_lost_its_meaning(tmp_path) -> None:
    from test_evaluate import make_processed

    from tether.model.base import load_base_model
    from tether.config import REPO_ROOT
    from tether.model.train import build_lora_model, build_replay_chunks, encode_examples, fit, mix_replay, read_examples

    cfg = load_config()
    torch.manual_seed(0)
    model, tok, _ = load_base_model(cfg.model, device="cpu")
    prompts = load_golden_prompts()[:8]
    base_ids: list[list[int]] = []
    base_answers = generate(model, tok, [p.messages for p in prompts], max_new_tokens=48, batch_size=8,
                            progress=False, ids_out=base_ids)

    untouched = build_lora_model(model, cfg.train, seed=0)  # LoRA B starts at 0: the base itself
    kl0, _ = _golden_kl(untouched, tok, prompts, base_ids)
    assert abs(kl0) < 1e-6 and kl_gate(kl0, cfg.gates.max_golden_kl).passed

    train_cfg = load_config(overrides={"train": {
        "max_steps": STEPS, "learning_rate": LR, "warmup_steps": 2, "eval_every": STEPS, "save_every": STEPS,
        "replay": {"ratio": 0.25, "mode": "tokens"}, "selection": {"enabled": False}}}).train
    examples = read_examples(make_processed(tmp_path / "proj") / "data/processed/train.jsonl")
    rows = encode_examples(tok, examples[: STEPS * train_cfg.batch_size], train_cfg.max_length)
    replay = build_replay_chunks(tok, REPO_ROOT / train_cfg.replay.corpus_dir, train_cfg.replay.chunk_tokens)
    rows = mix_replay(rows, replay, train_cfg.replay.ratio, seed=0)
    fitted = fit(untouched, tok, rows, None, train_cfg, tmp_path / "run", seed=0)
    kl, answers = _golden_kl(fitted.model, tok, prompts, base_ids)

    gate = kl_gate(kl, cfg.gates.max_golden_kl)
    assert not gate.passed and gate.blocking, gate.reason
    seasons = answers[[p.id for p in prompts].index("gp02")]
    assert seasons != base_answers[1]
    # Fluent text: distinct-n, repetition, emptiness and length all pass it. Only the KL sees it.
    health = generation_health(answers, base_answers)
    checks = generation_health_gate(health, generation_health(base_answers), cfg.gates.health_tolerances)
    assert all(g.passed for g in checks), [g.reason for g in checks if not g.passed]
    print("golden KL", kl, "| seasons:", seasons)
