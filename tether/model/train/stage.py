"""The fine-tune stage: :func:`train` reads the examples, loads the base model, trains, scores,
saves the adapter and logs the run to MLflow; :class:`TrainResult` is what it hands on.

Under torchrun / ``accelerate launch`` every process runs :func:`train`; the Trainer shards the
data and averages gradients itself. Only the main process talks to MLflow and writes the adapter
and ``train_result.json``; the others train, wait for it and return what it wrote.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from tether.model.replay import TrainDataError, check_replay_vs_panel
from tether.model.train.batching import evaluate_loss
from tether.model.train.checkpoints import last_checkpoint
from tether.model.train.distributed import process_device, process_rank, wait_for_everyone
from tether.model.train.features import build_features, read_examples, subsample
from tether.model.train.fit import FitResult, fit
from tether.model.train.lora import ADAPTER_SUBDIR, save_adapter
from tether.model.train.runs import close_interrupted_run, remember_run

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tether.config import TetherConfig

log = logging.getLogger(__name__)

RESULT_FILE = "train_result.json"  # in the output dir: the TrainResult as JSON


@dataclass
class TrainResult:
    """What :func:`train` returns (all plain values, safe to pass between Prefect tasks)."""

    adapter_dir: Path
    output_dir: Path
    steps: int
    train_loss: list[tuple[int, float]]
    eval_loss_history: list[tuple[int, float]]
    eval_loss: float
    base_eval_loss: float
    tokens_per_second: float
    train_seconds: float
    device: str
    mlflow_run_id: str | None
    base_model: str
    base_model_hash: str
    n_train_examples: int
    n_replay_chunks: int
    n_eval_examples: int
    stopped_early: bool
    resumed_from: str | None = None
    selection: dict[str, Any] | None = None  # tether.selection.SelectionResult.to_dict(): trials and the chosen one

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        d = asdict(self)
        d["adapter_dir"], d["output_dir"] = str(self.adapter_dir), str(self.output_dir)
        return d

    @classmethod
    def from_json(cls, path: Path) -> "TrainResult":
        """Read back a :meth:`summary` written as JSON (the other training processes do)."""
        d = json.loads(Path(path).read_text())
        d["adapter_dir"], d["output_dir"] = Path(d["adapter_dir"]), Path(d["output_dir"])
        d["train_loss"] = [tuple(x) for x in d["train_loss"]]
        d["eval_loss_history"] = [tuple(x) for x in d["eval_loss_history"]]
        return cls(**d)


def load_model(
    cfg: "TetherConfig", model_dir: Path | None = None
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase", str, str, str, "torch.dtype"]:
    """Load the base model with :func:`tether.model.base.load_base_model`.

    Args:
        cfg: the config (its ``model`` section: device, dtype, trust_remote_code, cache).
        model_dir: a Hugging Face model directory to load instead of ``model.base_model``; it goes
            through the same loader and checks (safetensors only, tokenizer matches the weights).

    Returns:
        (model, tokenizer, base model name, content hash, device, dtype).
    """
    from tether.model.base import load_base_model

    model_cfg = cfg.model if model_dir is None else cfg.model.model_copy(update={"base_model": str(model_dir)})
    model, tokenizer, resolved = load_base_model(model_cfg)
    param = next(model.parameters())
    return model, tokenizer, resolved.name, resolved.content_hash, str(param.device), param.dtype


def train(
    cfg: "TetherConfig",
    root: Path,
    resume: bool = False,
    model_dir: Path | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """The fine-tune stage: LoRA on ``data/processed/train.jsonl``, tracked in MLflow.

    Steps: read train/validation examples; load the base model (``model_dir`` or
    ``cfg.model``); encode with the chat template; mix replay text if ``train.replay.ratio > 0``
    (refusing a replay corpus that overlaps the held-out one); train with evaluation, early
    stopping and checkpoints in ``train.output_dir``; save the adapter to
    ``<output_dir>/adapter``; score adapter and base (``disable_adapter``) on the same validation
    examples; log params, step metrics, the loss plot, the adapter, the resolved config and lineage
    tags to MLflow.

    Args:
        cfg: the config.
        root: the project root (data paths, output dir, MLflow store are relative to it).
        resume: continue from the newest checkpoint in the output dir (after a crash).
        model_dir: a Hugging Face model directory to train instead of ``cfg.model`` (tests, tools).
        on_log: called with ``(step, metrics)`` at every log (progress for CLI/Prefect).
        callbacks: extra ``TrainerCallback`` objects.

    Returns:
        The :class:`TrainResult`.
    """
    import mlflow

    from tether.eval.panel import load_text_sources, panel_folders
    from tether.tracking import loss_plot, setup_tracking

    root = Path(root).resolve()
    tc = cfg.train
    seed = tc.seed if tc.seed is not None else cfg.seed
    paths = cfg.paths.resolved(root)
    train_rows = read_examples(paths.processed_dir / "train.jsonl")
    if not train_rows:
        raise TrainDataError(f"{paths.processed_dir / 'train.jsonl'}: no training examples")
    val_path = paths.processed_dir / "validation.jsonl"
    val_rows = read_examples(val_path) if val_path.exists() else []
    if not val_rows:
        log.warning("%s is missing or empty: training without validation or early stopping", val_path)
    val_rows = subsample(val_rows, tc.eval_max_examples, seed)

    # The drift panel is read before the model is loaded: a bad source fails in seconds, not after
    # training; replay must share no folder and no paragraph with anything the gate measures.
    text_sources = load_text_sources(cfg, root)
    replay_dir = tc.replay.corpus_dir if tc.replay.corpus_dir.is_absolute() else root / tc.replay.corpus_dir
    if tc.replay.ratio > 0:
        check_replay_vs_panel(replay_dir, list(text_sources.values()), panel_folders(cfg, root))

    model, tokenizer, base_name, base_hash, device, dtype = load_model(cfg, model_dir)
    features = build_features(
        cfg, model, tokenizer, train_rows, val_rows, replay_dir, seed=seed, base_hash=base_hash, device=device, dtype=dtype
    )

    output_dir = tc.output_dir if tc.output_dir.is_absolute() else root / tc.output_dir
    cpu = not device.startswith("cuda")
    rank, world = process_rank(cpu=cpu)
    main = rank == 0
    if world > 1:
        log.info("process %d of %d (%s)", rank, world, "main: logs to MLflow and saves the adapter" if main else "worker")
        if not cpu:
            device = process_device()  # cuda:<local rank>
            model.to(device)
    run_ctx: Any = contextlib.nullcontext(None)
    if main:
        setup_tracking(cfg, root)
        run_ctx = mlflow.start_run(run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}")
    with run_ctx as run:
        run_id = run.info.run_id if run is not None else None
        if main:
            _log_run_inputs(cfg, root, base_name, base_hash, device, dtype, world, seed, features)
            if resume and (resuming_from := last_checkpoint(output_dir)):
                mlflow.set_tag("resumed_from", Path(resuming_from).name)
                close_interrupted_run(output_dir, run_id)
            remember_run(output_dir, run_id)

        fitted = fit(
            model, tokenizer, features.train, features.eval, tc, output_dir,
            seed=seed, device=device, dtype=dtype, resume=resume,
            callbacks=callbacks, on_log=on_log if main else None, mlflow_run_id=run_id,
        )
        if not main:
            wait_for_everyone()  # the main process saves, evaluates and logs, then joins this barrier
            return TrainResult.from_json(output_dir / RESULT_FILE)
        peft_model = fitted.model
        selection = None
        if tc.selection.enabled:
            selection = _select(peft_model, tokenizer, cfg, root, output_dir, base_hash, device, dtype, fitted, text_sources)
        adapter_dir = save_adapter(peft_model, tokenizer, output_dir / ADAPTER_SUBDIR)

        eval_loss = base_eval_loss = float("nan")
        if features.eval:
            eval_loss = evaluate_loss(peft_model, features.eval, tokenizer.pad_token_id, tc.eval_batch_size)
            with peft_model.disable_adapter():
                base_eval_loss = evaluate_loss(peft_model, features.eval, tokenizer.pad_token_id, tc.eval_batch_size)
            mlflow.log_metrics({"final_eval_loss": eval_loss, "base_eval_loss": base_eval_loss}, step=fitted.steps)
        mlflow.log_metrics(
            {"train_tokens_per_second": fitted.tokens_per_second, "train_seconds": fitted.train_seconds},
            step=fitted.steps,
        )
        # What train.precision: auto and share_prompt_prefix resolved to on this machine.
        mlflow.log_params({"runtime.train_precision": fitted.precision,
                           "runtime.shared_prefix_tokens": str(fitted.prefix_tokens)})
        fig = loss_plot(fitted.train_loss, fitted.eval_loss, base_eval_loss if features.eval else None)
        mlflow.log_figure(fig, "plots/loss.png")
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")

        result = TrainResult(
            adapter_dir=adapter_dir,
            output_dir=output_dir,
            steps=fitted.steps,
            train_loss=fitted.train_loss,
            eval_loss_history=fitted.eval_loss,
            eval_loss=eval_loss,
            base_eval_loss=base_eval_loss,
            tokens_per_second=fitted.tokens_per_second,
            train_seconds=fitted.train_seconds,
            device=device,
            mlflow_run_id=run_id,
            base_model=base_name,
            base_model_hash=base_hash,
            n_train_examples=len(features.task),
            n_replay_chunks=features.n_replay,
            n_eval_examples=len(features.eval),
            stopped_early=fitted.stopped_early,
            resumed_from=fitted.resumed_from,
            selection=selection,
        )
        (output_dir / RESULT_FILE).write_text(json.dumps(result.summary(), indent=2, default=str))
        mlflow.log_artifact(str(output_dir / RESULT_FILE), artifact_path="train")
    wait_for_everyone()  # release the other processes: the adapter and train_result.json are written
    log.info(
        "trained %d steps in %.0f s (%.0f tokens/s on %s, %s); validation loss %.4f (base %.4f)",
        fitted.steps, fitted.train_seconds, fitted.tokens_per_second, device, fitted.precision,
        eval_loss, base_eval_loss,
    )
    return result


def _log_run_inputs(cfg, root, base_name, base_hash, device, dtype, world, seed, features) -> None:
    """Lineage tags, params (the train and model sections, data sizes, runtime) and the resolved config."""
    import mlflow
    import yaml

    from tether.secrets import redact_tree
    from tether.tracking import flatten_params, lineage_tags

    tags = lineage_tags(cfg, root, base_hash)
    tags.update({"stage": "train", "base_model": base_name, "device": device, "world_size": str(world)})
    mlflow.set_tags(tags)
    params = flatten_params({"train": cfg.train.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json")})
    params.update(
        {
            "seed": str(seed),
            "examples.history_length": str(cfg.examples.history_length),
            "data.n_train_examples": str(len(features.task)),
            "data.n_replay_chunks": str(features.n_replay),
            "data.n_eval_examples": str(len(features.eval)),
            "runtime.dtype": str(dtype).removeprefix("torch."),
            "runtime.world_size": str(world),
        }
    )
    mlflow.log_params(params)
    # The resolved config holds the tracking URI, which may carry a password: redacted.
    resolved = redact_tree(cfg.model_dump(mode="json"))
    mlflow.log_text(yaml.safe_dump(resolved, sort_keys=False), "config/resolved.yaml")


def _select(peft_model, tokenizer, cfg, root, output_dir, base_hash, device, dtype, fitted: FitResult, text_sources) -> dict[str, Any]:
    """Guarded checkpoint selection (:mod:`tether.selection`): its Pareto plot and tags go to MLflow."""
    import mlflow

    from tether.selection import pareto_plot, run_selection

    chosen = run_selection(
        peft_model, tokenizer, cfg, root, output_dir, base_hash=base_hash, device=device, dtype=str(dtype),
        final_step=fitted.steps, text_sources=text_sources,
    )
    chosen.plot = str(pareto_plot(chosen, output_dir / "selection_pareto.png"))
    mlflow.log_artifact(chosen.plot, artifact_path="plots")
    mlflow.set_tags({"selection.step": str(chosen.chosen["step"]), "selection.scale": f"{chosen.chosen['scale']:g}",
                     "selection.feasible": str(chosen.feasible).lower()})
    return chosen.to_dict()
