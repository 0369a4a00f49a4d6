"""Guarded selection: the choice from known numbers, and a real run that never reads the gate's half."""

from __future__ import annotations

import math

import pytest
import torch
from test_evaluate import make_processed, write_corpus
from tiny import build_tiny_model_dir, reset_mlflow_globals

from tether.config import load_config
from tether.selection import Trial, choose, pareto_plot, selection_tags

LIMITS = {"prose": 0.05, "self_samples": 0.05}


def _t(step: int, scale: float, primary: float, prose: float, self_samples: float = 0.0) -> Trial:
    return Trial(step, scale, primary, {"prose": prose, "self_samples": self_samples}, dict(LIMITS))


def test_the_best_primary_metric_among_trials_within_every_limit_wins() -> None:
    trials = [
        _t(50, 1.0, 0.52, 0.09),         # best ranking, but prose drifts over its limit
        _t(50, 0.75, 0.48, 0.04),        # within every limit: the best of those
        _t(50, 0.5, 0.45, 0.01),
        _t(25, 1.0, 0.49, 0.03, 0.06),   # self-samples over their limit
        _t(25, 0.5, math.nan, 0.0),      # a broken measurement is never feasible
    ]
    chosen, feasible = choose(trials)
    assert feasible and (chosen.step, chosen.scale) == (50, 0.75)
    assert [t.feasible for t in trials] == [False, True, True, False, False]


def test_ties_prefer_the_larger_scale_then_the_later_step() -> None:
    chosen, _ = choose([_t(25, 0.5, 0.4, 0.0), _t(25, 1.0, 0.4, 0.0), _t(50, 1.0, 0.4, 0.0)])
    assert (chosen.step, chosen.scale) == (50, 1.0)


def test_with_no_trial_within_its_limits_the_least_over_one_is_kept_and_flagged() -> None:
    chosen, feasible = choose([_t(50, 1.0, 0.5, 0.20), _t(50, 0.5, 0.4, 0.07), _t(25, 0.5, 0.3, 0.06, 0.08)])
    assert not feasible and (chosen.step, chosen.scale) == (50, 0.5)  # 0.07 - 0.05 is the smallest excess
    with pytest.raises(ValueError, match="no trials"):
        choose([])


def test_the_pareto_plot_marks_every_trial(tmp_path) -> None:
    trials = [_t(50, 1.0, 0.5, 0.09), _t(50, 0.5, 0.45, 0.01)]
    chosen, feasible = choose(trials)
    rows = [{"step": t.step, "scale": t.scale, "primary": t.primary, "drift": t.drift, "worst_drift": t.worst_drift,
             "feasible": t.feasible, "checkpoint": ""} for t in trials]
    data = {"trials": rows, "chosen": rows[1], "feasible": feasible, "metric": "ndcg_at_10"}
    path = pareto_plot(data, tmp_path / "pareto.png")
    assert path.stat().st_size > 10_000
    assert selection_tags(data) == {"selection.step": "50", "selection.scale": "0.5", "selection.checkpoint": "final",
                                    "selection.feasible": "true", "selection.trials": "2"}


@pytest.fixture()
def _restore_mlflow():
    yield from reset_mlflow_globals()


@pytest.mark.integration
@pytest.mark.usefixtures("one_torch_thread", "_restore_mlflow")
def test_selection_in_the_train_stage_reads_only_the_selection_half_and_saves_the_chosen_trial(tmp_path) -> None:
    import mlflow
    from peft import PeftModel
    from peft.helpers import rescale_adapter_scale
    from transformers import AutoModelForCausalLM

    from tether.eval.panel import load_panel
    from tether.model.train import train
    from tether.selection import load_checkpoint_weights

    root = make_processed(tmp_path / "proj")
    write_corpus(root / "corpus", names=("a.txt", "b.txt", "c.txt", "d.txt"))
    model_dir = build_tiny_model_dir(tmp_path / "model")
    cfg = load_config(profile="test", overrides={
        "model": {"cache_dir": str(tmp_path / "cache")},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "train": {"max_steps": 4, "learning_rate": 0.02, "selection": {
            "enabled": True, "checkpoints": "evaluated", "scales": [1.0, 0.5], "n_users": 4, "n_negatives": 4,
            "panel_max_tokens": 96, "n_samples": 2}},
        "eval": {"drift_panel": [{"name": "corpus", "source": "corpus", "max_tokens": 64},
                                 {"name": "self_samples", "source": "builtin:self-samples", "n_samples": 2,
                                  "max_new_tokens": 8}]},
        "gates": {"primary_metric": "ndcg_at_5"},
    })
    result = train(cfg, root, model_dir=model_dir)
    sel = result.selection
    # Checkpoints at steps 2 and 4 (eval_every 2) x 2 scales, each a nested MLflow run of the training run.
    assert sorted((t["step"], t["scale"]) for t in sel["trials"]) == [(2, 0.5), (2, 1.0), (4, 0.5), (4, 1.0)]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for t in sel["trials"]:
        run = client.get_run(t["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == result.mlflow_run_id
        assert float(run.data.params["scale"]) == t["scale"]
    train_run = client.get_run(result.mlflow_run_id)
    assert train_run.data.tags["selection.scale"] == f"{sel['chosen']['scale']:g}"
    assert "plots/selection_pareto.png" in {a.path for a in client.list_artifacts(result.mlflow_run_id, "plots")}

    # Never the gate's documents or prompts.
    gate = load_panel(cfg, root, "gate")
    gate_docs = {d for d, _ in gate.sources[0].documents}
    assert sel["documents"]["corpus"] and not set(sel["documents"]["corpus"]) & gate_docs
    assert all(sid.startswith(("ss17", "ss18", "ss19", "ss2")) for sid in sel["documents"]["self_samples"])

    # The saved adapter is exactly the chosen trial: its checkpoint at its scale.
    chosen = sel["chosen"]
    saved = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(result.adapter_dir)).eval()
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(result.adapter_dir)).eval()
    load_checkpoint_weights(ref, result.output_dir / f"checkpoint-{chosen['step']}")
    ids = torch.tensor([[5, 17, 40, 33, 8, 90]])
    with torch.no_grad(), rescale_adapter_scale(ref, chosen["scale"]):
        expected = ref(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(saved(input_ids=ids).logits, expected, atol=1e-5)
