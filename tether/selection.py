"""Guarded selection: the best adapter among checkpoints x scales that stays within every drift limit.

A fine-tune's last checkpoint at full strength is one point of a trade-off: earlier checkpoints
and a scaled-down LoRA update (``scale`` multiplies the update ``B @ A``) give up some ranking
quality for less drift. Guarded selection measures every trial (checkpoint x ``train.selection.scales``)
on data the gate never sees:

* ranking quality (``gates.primary_metric``) on the **validation** split (leave-second-to-last;
  ``train.selection.n_users`` users, sampled candidates), never the test split;
* drift per source on the **selection half** of the drift panel: other documents of the same
  sources and self-samples from other prompts than the gate's (:mod:`tether.eval.sources`).

:func:`choose` then takes the trial with the best primary metric among those whose every source
is within its limit (ties: the larger scale, then the later step); when none is, the one that
exceeds its limits least, flagged ``feasible: False`` (the gate will then most likely block, and
says why). The chosen adapter is saved with its LoRA ``B`` matrices multiplied by the scale, so the
registered adapter is exactly the chosen trial and loads with a plain ``PeftModel.from_pretrained``.
Each trial is a nested MLflow run; the Pareto plot (primary metric vs worst-source drift, the
chosen point marked) is logged to the training run and shown in the gate report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tether.config import TetherConfig

logger = logging.getLogger(__name__)


@dataclass
class Trial:
    """One checkpoint at one adapter scale, measured on the validation split and the selection panel."""

    step: int
    scale: float
    primary: float
    drift: dict[str, float]
    limits: dict[str, float]
    checkpoint: str = ""
    mlflow_run_id: str | None = None

    @property
    def worst_drift(self) -> float:
        """The largest drift over sources (what the Pareto plot shows)."""
        return max(self.drift.values(), default=math.nan)

    @property
    def excess(self) -> float:
        """How far the worst source is over its limit (<= 0 when every source is within)."""
        values = [d - self.limits[s] for s, d in self.drift.items()]
        return max(values, default=math.inf) if all(math.isfinite(v) for v in values) else math.inf

    @property
    def feasible(self) -> bool:
        return self.excess <= 1e-12 and math.isfinite(self.primary)


@dataclass
class SelectionResult:
    """What guarded selection chose and why (plain values: it travels in :class:`TrainResult`)."""

    trials: list[dict[str, Any]]
    chosen: dict[str, Any]
    feasible: bool
    metric: str
    documents: dict[str, list[str]] = field(default_factory=dict)
    plot: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(trials: Sequence[Trial]) -> tuple[Trial, bool]:
    """The best feasible trial (primary metric, then larger scale, then later step), or the least infeasible.

    Pure: the same trials give the same choice.

    Returns:
        ``(trial, feasible)``.

    Raises:
        ValueError: on no trials.
    """
    if not trials:
        raise ValueError("guarded selection got no trials")
    feasible = [t for t in trials if t.feasible]
    if feasible:
        return max(feasible, key=lambda t: (t.primary, t.scale, t.step)), True
    return min(trials, key=lambda t: (t.excess, -t.primary if math.isfinite(t.primary) else math.inf)), False


def _row(t: Trial) -> dict[str, Any]:
    return {"step": t.step, "scale": t.scale, "primary": t.primary, "drift": dict(t.drift), "worst_drift": t.worst_drift,
            "feasible": t.feasible, "checkpoint": t.checkpoint, "mlflow_run_id": t.mlflow_run_id}


def scale_lora_b(peft_model: Any, scale: float) -> None:
    """Multiply every LoRA ``B`` matrix by ``scale`` in place: the update ``scale * B @ A`` becomes the adapter."""
    import torch

    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)


def load_checkpoint_weights(peft_model: Any, checkpoint: Path) -> None:
    """Put a Trainer checkpoint's adapter weights into ``peft_model`` (same adapter config)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(checkpoint) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"{checkpoint}: adapter weights do not fit the model ({unexpected[:3]} ...)")


def checkpoints_to_try(output_dir: Path, which: str) -> list[tuple[int, Path | None]]:
    """``(step, folder)`` of each checkpoint to try, oldest first; ``(−1, None)`` = the weights in memory."""
    from tether.model.train import checkpoint_complete

    if which == "last":
        return [(-1, None)]
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if step.isdigit() and (p / "adapter_model.safetensors").is_file() and checkpoint_complete(p):
            found.append((int(step), p))
    return sorted(found) or [(-1, None)]


def _selection_cfg(cfg: TetherConfig) -> TetherConfig:
    sc = cfg.train.selection
    ev = cfg.eval.model_copy(update={"n_users": sc.n_users, "n_negatives": sc.n_negatives, "candidates": "sampled"})
    return cfg.model_copy(update={"eval": ev})


def run_selection(
    peft_model: Any,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TetherConfig,
    root: Path,
    output_dir: Path,
    *,
    base_hash: str,
    device: str,
    dtype: str,
    final_step: int,
    text_sources: Mapping[str, Any] | None = None,
    mlflow_run: bool = True,
    progress: bool = False,
) -> SelectionResult:
    """Measure every trial, choose one (:func:`choose`) and leave its weights, scaled, in ``peft_model``.

    Args:
        peft_model: the trained peft model (its weights are replaced by the chosen trial's).
        tokenizer: its tokenizer.
        cfg: the config (``train.selection``, ``eval``, ``gates``).
        root: the project root.
        output_dir: the training output folder with the ``checkpoint-N`` folders.
        base_hash: the base model's weights hash (self-sample cache key).
        device, dtype: where the model runs (self-sample cache key).
        final_step: the training's last step (the step of the weights in memory).
        text_sources: the panel's text sources, already read (:func:`tether.eval.panel.load_text_sources`).
        mlflow_run: log each trial as a nested run of the active MLflow run, and the Pareto plot.
        progress: progress bars.

    Returns:
        The :class:`SelectionResult` (every trial, the chosen one, the documents measured).
    """
    import time

    from peft.helpers import rescale_adapter_scale

    from tether.eval.evaluate import evaluate_recommendations, load_eval_inputs
    from tether.eval.panel import draw_self_samples, drift_table, load_panel, measure
    from tether.eval.scoring import rank_users

    started = time.perf_counter()
    sc, primary = cfg.train.selection, cfg.gates.primary_metric
    scfg = _selection_cfg(cfg)
    panel = load_panel(cfg, root, "selection", max_tokens=sc.panel_max_tokens, n_samples=sc.n_samples,
                       text_sources=text_sources)
    inputs = load_eval_inputs(scfg, root, split="validation", panel=panel)
    limits = {s.name: s.max_drift for s in panel.sources}
    with peft_model.disable_adapter():
        samples = draw_self_samples(peft_model, tokenizer, panel, seed=cfg.seed, base_hash=base_hash,
                                    cache_dir=cfg.model.resolved_cache_dir(), device=device, dtype=dtype)
        base = measure(peft_model, tokenizer, panel, cfg, samples=samples)

    final_state = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    trials: list[Trial] = []
    for step, ckpt in checkpoints_to_try(output_dir, sc.checkpoints):
        if ckpt is not None:
            load_checkpoint_weights(peft_model, ckpt)
        else:
            peft_model.load_state_dict(final_state, strict=False)
        for scale in sc.scales:
            with rescale_adapter_scale(peft_model, scale):
                scored = rank_users(peft_model, tokenizer, inputs.examples, inputs.candidate_titles,
                                    batch_size=cfg.eval.batch_size, progress=progress, desc=f"selection s{step} x{scale}")
                rec = evaluate_recommendations([r.scores(cfg.eval.score) for r in scored], inputs, cfg.eval.ks)
                cand = measure(peft_model, tokenizer, panel, cfg, samples=samples)
            table = drift_table(cand, base, limits, n_boot=200, seed=cfg.seed)
            trial = Trial(step if step >= 0 else final_step, scale, float(rec.metrics.get(primary, math.nan)),
                          {k: v["drift"] for k, v in table.items()}, limits, str(ckpt or ""))
            trial.mlflow_run_id = _log_trial(trial, primary) if mlflow_run else None
            trials.append(trial)
            logger.info("selection: step %d x%.2f: %s %.4f, worst drift %+.2f%% (%s)", trial.step, scale, primary,
                        trial.primary, 100 * trial.worst_drift, "within limits" if trial.feasible else "over a limit")

    chosen, feasible = choose(trials)
    if chosen.checkpoint:
        load_checkpoint_weights(peft_model, Path(chosen.checkpoint))
    else:
        peft_model.load_state_dict(final_state, strict=False)
    scale_lora_b(peft_model, chosen.scale)
    (logger.info if feasible else logger.warning)(
        "selection chose step %d x%.2f (%s %.4f, worst drift %+.2f%%)%s", chosen.step, chosen.scale, primary,
        chosen.primary, 100 * chosen.worst_drift, "" if feasible else ": NO trial stayed within every drift limit")
    documents = {s.name: [d for d, _ in s.documents] if s.kind == "text" else [r.id for r in samples]
                 for s in panel.sources}
    return SelectionResult([_row(t) for t in trials], _row(chosen), feasible, primary, documents,
                           seconds=time.perf_counter() - started)


def _log_trial(trial: Trial, metric: str) -> str | None:
    import mlflow

    if mlflow.active_run() is None:
        return None
    with mlflow.start_run(run_name=f"selection-step{trial.step}-x{trial.scale:g}", nested=True) as run:
        mlflow.log_params({"step": trial.step, "scale": trial.scale, "checkpoint": Path(trial.checkpoint).name or "final"})
        values = {f"validation.{metric}": trial.primary, "worst_drift": trial.worst_drift,
                  **{f"drift.{k}": v for k, v in trial.drift.items()}}
        mlflow.log_metrics({k: v for k, v in values.items() if math.isfinite(v)})
        mlflow.set_tag("feasible", str(trial.feasible).lower())
        return run.info.run_id


def pareto_plot(result: SelectionResult | Mapping[str, Any], path: str | Path) -> Path:
    """Primary metric (validation) vs worst-source drift (selection panel), every trial, the chosen one marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = result.to_dict() if isinstance(result, SelectionResult) else dict(result)
    trials, chosen = data["trials"], data["chosen"]
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for t in trials:
        colour = "#2e7d32" if t["feasible"] else "#c62828"
        ax.scatter([100 * t["worst_drift"]], [t["primary"]], s=30 + 60 * t["scale"], color=colour, alpha=0.8)
        ax.annotate(f"s{t['step']}×{t['scale']:g}", (100 * t["worst_drift"], t["primary"]), fontsize=7.5,
                    xytext=(4, 3), textcoords="offset points")
    ax.scatter([100 * chosen["worst_drift"]], [chosen["primary"]], s=260, facecolors="none", edgecolors="black",
               linewidths=1.6, label=f"chosen: step {chosen['step']} × {chosen['scale']:g}")
    ax.set_xlabel("worst drift over the selection panel's sources, %")
    ax.set_ylabel(f"{data['metric']} on the validation split")
    ax.set_title("Guarded selection: green = every source within its limit", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8.5, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def selection_tags(selection: Mapping[str, Any] | None) -> dict[str, str]:
    """Tags of a registered version: which checkpoint and scale guarded selection chose (empty without one)."""
    if not selection:
        return {}
    chosen = selection["chosen"]
    return {"selection.step": str(chosen["step"]), "selection.scale": f"{chosen['scale']:g}",
            "selection.checkpoint": Path(chosen.get("checkpoint") or "final").name,
            "selection.feasible": str(bool(selection.get("feasible"))).lower(),
            "selection.trials": str(len(selection.get("trials", [])))}
