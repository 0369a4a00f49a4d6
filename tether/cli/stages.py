"""``tether train|evaluate|gate|drift``: the model stages one at a time (what ``dvc repro`` runs)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tether.cli.app import ParamsOpt, ProfileOpt, _fail, _run_stage, _setup, console
from tether.cli.show import HEADLINE_METRICS, print_systems, print_train_result, print_verdict
from tether.config import TetherConfig
from tether.console import format_step
from tether.io import resolve

AdapterOpt = Annotated[
    Path | None,
    typer.Option("--adapter", help="Adapter directory (default: <train.output_dir>/adapter, the last `tether train`)."),
]


def train_cmd(
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in train.output_dir (after a crash).")
    ] = False,
) -> None:
    """Fine-tune a LoRA adapter on data/processed/train.jsonl (run `tether data prepare` first).

    CUDA with bf16 when a GPU is present, else CPU fp32. Checkpoints every train.save_every
    steps; validation loss every train.eval_every steps with early stopping. Params, step
    metrics, the loss curve, the adapter and lineage tags go to MLflow.
    """
    from tether.model.train import TrainDataError, train

    cfg, root = _setup(params, profile)
    try:
        step_log = logging.getLogger("tether.model.train")
        result = train(cfg, root, resume=resume, on_log=lambda step, m: step_log.info("%s", format_step(step, m)))
    except (TrainDataError, FileNotFoundError, ValueError) as exc:
        _fail(f"train stopped: {exc}")
    from tether.outputs import write_loss_csv

    write_loss_csv(result.train_loss, result.output_dir)  # the DVC plot of the loss curve
    print_train_result(result)


def _default_adapter(cfg: TetherConfig, root: Path, adapter: Path | None) -> Path:
    path = adapter or resolve(root, cfg.train.output_dir) / "adapter"
    if not (path / "adapter_config.json").exists():
        _fail(f"{path}: no LoRA adapter here (adapter_config.json missing); run `tether train` or pass --adapter")
    return path


def evaluate_cmd(
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
    adapter: AdapterOpt = None,
    out: Annotated[Path | None, typer.Option(help="Where evaluation.json, metrics.json and systems.csv go (default: outputs/eval/).")] = None,
) -> None:
    """Evaluate an adapter against the zero-shot base and popularity, with one protocol.

    Recommendation quality and diversity on the test split (eval.n_users users, sampled or
    full candidates, prefix-cached scoring), valid-item rate, general-text perplexity and
    generation health on golden prompts. The base model's numbers are cached by their inputs'
    hashes, so re-evaluating another adapter only scores the candidate.
    """
    from tether.eval.evaluate import evaluate_run
    from tether.outputs import write_eval_outputs

    cfg, root = _setup(params, profile)
    adapter_dir = _default_adapter(cfg, root, adapter)
    evaluation = _run_stage("evaluate", evaluate_run, cfg, root, adapter_dir)
    path = evaluation.save((out or root / "outputs" / "eval") / "evaluation.json")
    write_eval_outputs(evaluation, cfg.eval.ks, path.parent)  # metrics.json + systems.csv for DVC
    print_systems("evaluation (same users, same candidates)", evaluation.systems, HEADLINE_METRICS)
    drift = Table(title="drift by source (candidate vs base perplexity, identical tokens)")
    for col in ("source", "base", "candidate", "drift", "95% CI", "limit"):
        drift.add_column(col, justify="left" if col == "source" else "right")
    for source, e in evaluation.comparisons.get("drift_panel", {}).items():
        iv = e.get("interval") or (float("nan"), float("nan"))
        drift.add_row(source, f"{e['ppl_base']:.3f}", f"{e['ppl_candidate']:.3f}", f"{e['drift']:+.2%}",
                      f"[{iv[0]:+.2%}, {iv[1]:+.2%}]", f"{e['max_drift']:.1%}")
    console.print(drift)
    console.print(f"  written: {path}  (next: tether gate --evaluation {path})", highlight=False)


def gate_cmd(
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
    evaluation: Annotated[
        Path | None, typer.Option(help="evaluation.json from `tether evaluate` (default: outputs/eval/evaluation.json).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where the gate report and verdict.json go (default: the evaluation's folder).")
    ] = None,
    no_fail: Annotated[
        bool, typer.Option("--no-fail", help="Exit 0 even when blocked (the verdict is in verdict.json); dvc repro uses it.")
    ] = False,
) -> None:
    """Turn an evaluation into promotion verdicts and write the gate report (JSON, Markdown, PNG).

    Thresholds come from the `gates` section of params.yaml. Exits 1 when a blocking gate
    fails, so scripts can stop on a blocked candidate; --no-fail records the verdict
    (verdict.json) and exits 0, for pipelines such as `dvc repro` where BLOCKED is a result.
    No comparison with the registry's @champion here (the flow does that): the verdict
    depends only on the evaluation and params.yaml, so `dvc repro` reproduces it.
    """
    from tether.eval.evaluate import Evaluation
    from tether.eval.gating import run_gates
    from tether.outputs import write_verdict
    from tether.tracking import lineage_tags

    cfg, root = _setup(params, profile)
    path = evaluation or root / "outputs" / "eval" / "evaluation.json"
    if not path.exists():
        _fail(f"{path}: no evaluation here; run `tether evaluate` first or pass --evaluation")
    ev = Evaluation.load(path)
    lineage = lineage_tags(cfg, root, str(ev.info.get("base_model_hash", "unknown")))
    report, paths = run_gates(cfg, ev, lineage, out or path.parent)
    write_verdict(report, out or path.parent)
    print_verdict(report, paths)
    if report.blocking_failures and not no_fail:
        raise typer.Exit(1)


def drift_cmd(
    adapter: Annotated[list[Path], typer.Option("--adapter", help="Adapter directory; repeat for several.")],
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="A folder or file of UTF-8 text, builtin:python-docs, builtin:package-docs, "
                                      "builtin:heldout-prose, builtin:self-samples or hf:DATASET/CONFIG:SPLIT; "
                                      "repeat for several (default: eval.drift_panel)."),
    ] = None,
    scale: Annotated[list[float] | None, typer.Option("--scale", help="LoRA update multiplier(s) to measure at.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Scored tokens per --source.")] = 8192,
    half: Annotated[str, typer.Option(help="gate or selection: which half of each source's documents.")] = "gate",
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Perplexity drift of adapters on any text: per source, base vs adapter on identical tokens.

    Measures what the gate would say on text of your choosing (a corpus of your own, a novel, a
    Hugging Face dataset), optionally at reduced adapter strength (--scale 0.5), without running
    the pipeline. The base model is loaded once; each source is read like a drift-panel source.
    """
    import re

    from tether.config import DriftSourceConfig
    from tether.eval.drift_check import drift_report

    cfg, root = _setup(params, profile)
    specs = None
    if source:
        specs = []
        for s in source:
            stem = re.sub(r"[^a-z0-9_]+", "_", Path(s.split(":")[-1]).stem.lower()).strip("_")[:30] or "source"
            specs.append(DriftSourceConfig(name=f"s{len(specs)}_{stem}", source=s, max_tokens=max_tokens))
    report = _run_stage("drift", drift_report, cfg, root, adapter, sources=specs, scales=scale or [1.0], half=half)
    table = Table(title="perplexity drift by source (candidate / base - 1, identical tokens)")
    for col in ("adapter", "scale", "source", "tokens", "base", "adapter ppl", "drift", "95% CI", "nats/token"):
        table.add_column(col, justify="left" if col in ("adapter", "source") else "right")
    for row in report["adapters"]:
        for name, e in row["drift"].items():
            iv = e.get("interval") or (float("nan"), float("nan"))
            table.add_row(Path(row["adapter"]).name, f"{row['scale']:g}", name, str(e["n_tokens"]), f"{e['ppl_base']:.3f}",
                          f"{e['ppl_candidate']:.3f}", f"{e['drift']:+.2%}", f"[{iv[0]:+.2%}, {iv[1]:+.2%}]",
                          f"{e['nll_diff']:+.4f}")
    console.print(table)
