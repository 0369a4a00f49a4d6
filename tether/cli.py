"""The ``tether`` command line.

    tether run                       # the whole pipeline as a Prefect flow (`tether demo`: the same)
    tether serve                     # serve prefect.yaml's scheduled deployment (nightly run)
    tether data generate|validate|prepare
    tether model fetch
    tether train [--resume]
    tether evaluate [--adapter DIR]  # candidate vs zero-shot base vs popularity
    tether gate [--no-fail]          # verdicts + gate report
    tether status                    # champion, challenger, last verdicts
    tether promote VERSION --reason  # manual override, recorded in tags
    tether serve-model               # @champion over HTTP (mlflow models serve; docs/serving.md)

Every command reads ``params.yaml`` (in the current directory, else the repository's)
plus an optional ``--profile`` overlay from ``configs/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tether.config import REPO_ROOT, ConfigError, TetherConfig, available_profiles, load_config
from tether.console import format_step, setup_console
from tether.env import configure_environment

# Piped or logged output (CI, `make demo | tee`) gets a wide page instead of rich's 80 columns,
# so the verdict table stays readable; a terminal keeps its own width.
console = Console(width=None if sys.stdout.isatty() else 160)
app = typer.Typer(
    help="Tether: fine-tune an LLM into a recommender with LoRA, and refuse to promote an adapter "
    "that damaged what the base model could already do.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="The data path: sample data, validation, preparation.", no_args_is_help=True)
model_app = typer.Typer(help="The base model: fetch / convert the embedded model.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")

ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", "-p", help="Config profile overlaid on params.yaml: cpu (default), gpu, test, ..."),
]
ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", help="The params file (default: ./params.yaml if present, else the repository's)."),
]


def _project_root(params: Path | None) -> Path:
    """The project whose ``data/`` we work on: the params file's folder, else cwd, else the repo."""
    if params is not None:
        return params.resolve().parent
    if (Path.cwd() / "params.yaml").exists():
        return Path.cwd()
    return REPO_ROOT


def _setup(params: Path | None, profile: str | None) -> tuple[TetherConfig, Path]:
    root = _project_root(params)
    configure_environment(root)
    # One log handler, bars only on a terminal, pointless warnings filtered (tether/console.py):
    # Tether's own progress at INFO; engines (GX, httpx, Prefect's client) only when they warn.
    setup_console()
    try:
        cfg = load_config(params or root / "params.yaml", profile=profile)
    except ConfigError as exc:
        _fail(str(exc))
    return cfg, root


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def _as_dict(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, dict):
        return obj
    return {"value": obj}


def print_accounting(title: str, accounting: dict[str, dict[str, Any]]) -> None:
    """Print a rows-in / kept / quarantined table, one row per table."""
    table = Table(title=title)
    keys: list[str] = []
    for acc in accounting.values():
        keys += [k for k in acc if k not in keys]
    table.add_column("table")
    for k in keys:
        table.add_column(k, justify="right")
    for name, acc in accounting.items():
        table.add_row(name, *[f"{acc.get(k, '')}" for k in keys])
    console.print(table)


def print_summary(title: str, summary: Any) -> None:
    """Print a summary object: its row accounting as a table, other fields as key: value."""
    data = _as_dict(summary)
    accounting = data.pop("accounting", None)
    if accounting:
        print_accounting(f"{title}: row accounting", accounting)
    for key, value in data.items():
        if isinstance(value, (dict, list)) and len(str(value)) > 160:
            continue  # long structures are in the written report files
        console.print(f"  [bold]{key}[/]: {value}", highlight=False)


def _run_stage(title: str, fn, *args, **kwargs) -> Any:
    from tether.data.errors import DataError

    t0 = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except (DataError, ConfigError) as exc:
        _fail(f"{title} stopped: {exc}")
    console.print(f"[green]✓[/] {title} ({time.perf_counter() - t0:.1f} s)")
    return result


@data_app.command("generate")
def data_generate(
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: paths.raw_dir).")] = None,
) -> None:
    """Write the deterministic sample catalog and interaction log (MovieLens-latest format).

    The same seed and settings give byte-identical files, so data.dvc's hash is stable.
    """
    from tether.data.generate import generate_sample_data

    cfg, root = _setup(params, profile)
    out_dir = out or cfg.paths.resolved(root).raw_dir
    summary = _run_stage("generate", generate_sample_data, cfg.generate, cfg.seed, out_dir)
    print_summary("generate", summary)


@data_app.command("validate")
def data_validate(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Validate data/raw with Great Expectations: quarantine bad rows, stop on critical failures.

    Writes data/validated/*.parquet, data/quarantine/*.csv (each row with its reason),
    data/reports/validation.json and Data Docs HTML under data/reports/data_docs/.
    """
    from tether.data.validate import run_validation

    cfg, root = _setup(params, profile)
    summary = _run_stage("validate", run_validation, cfg, root)
    print_summary("validate", summary)


@data_app.command("prepare")
def data_prepare(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Clean, split leave-last-out, and write chat-formatted examples to data/processed/.

    Token lengths in data/processed/stats.json use the base model's tokenizer when
    examples.token_stats is true (else whitespace word counts).
    """
    from tether.data.prepare import run_prepare

    cfg, root = _setup(params, profile)
    tokenizer = None
    if cfg.examples.token_stats:
        from tether.model.base import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    summary = _run_stage("prepare", run_prepare, cfg, root, tokenizer=tokenizer)
    print_summary("prepare", summary)


@model_app.command("fetch")
def model_fetch(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Materialize the base model: convert the embedded GGUF once into the model cache.

    Later runs load the cached safetensors directory (seconds instead of ~30 s).
    """
    from tether.model.base import resolve_base_model

    cfg, _ = _setup(params, profile)
    try:
        resolved = resolve_base_model(cfg.model)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    print_summary("model", resolved)


def print_train_result(result: Any) -> None:
    """The fine-tune's headline: validation loss of the adapter against the base model."""
    table = Table(title="fine-tune: validation loss on the same examples (lower is better)")
    for col in ("model", "validation loss"):
        table.add_column(col)
    table.add_row("base (zero-shot)", f"{result.base_eval_loss:.4f}")
    table.add_row("base + LoRA adapter", f"{result.eval_loss:.4f}")
    console.print(table)
    better = result.eval_loss < result.base_eval_loss
    console.print(
        f"  adapter {'[green]beats[/]' if better else '[red]does not beat[/]'} the base on validation loss; "
        f"{result.steps} steps, {result.tokens_per_second:.0f} tokens/s on {result.device}, "
        f"{result.train_seconds:.0f} s of training",
        highlight=False,
    )
    console.print(f"  adapter: {result.adapter_dir}", highlight=False)
    if result.mlflow_run_id:
        console.print(f"  MLflow run: {result.mlflow_run_id}", highlight=False)


def print_verdict(report: Any, paths: dict[str, Any], registry: dict[str, Any] | None = None) -> None:
    """Candidate vs base vs popularity, the gate verdicts, and what the registry did."""
    from tether.eval.report import to_rich_table

    metrics = report.metrics
    table = Table(title="recommendation quality on the test split (same users, same candidates)")
    names = [m for m in ("ndcg_at_10", "hr_at_10", "mrr", "valid_item_rate", "exact_title_rate") if any(m in metrics.get(s, {}) for s in metrics)]
    table.add_column("system")
    for m in names:
        table.add_column(m, justify="right")
    for system in ("popularity", "base", "candidate"):
        vals = metrics.get(system, {})
        table.add_row(system, *[f"{vals[m]:.4f}" if isinstance(vals.get(m), (int, float)) else "-" for m in names])
    console.print(table)
    console.print(to_rich_table(report))
    colour = "green" if report.verdict == "PROMOTE" else "red"
    console.print(f"verdict: [bold {colour}]{report.verdict}[/]", highlight=False)
    for g in report.blocking_failures:
        console.print(f"  blocked by {g.gate}: {g.reason}", highlight=False)
    console.print(f"  gate report: {paths.get('markdown')} (+ .json, .png)", highlight=False)
    if registry:
        d = registry["decision"]
        console.print(
            f"  registry: {d.name} version {registry['version']} is @challenger; "
            f"@champion {'moved to it' if d.promoted else 'stays at ' + str(d.champion_after)} ({d.decision})",
            highlight=False,
        )


@app.command("train")
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


AdapterOpt = Annotated[
    Path | None,
    typer.Option("--adapter", help="Adapter directory (default: <train.output_dir>/adapter, the last `tether train`)."),
]


def _default_adapter(cfg: TetherConfig, root: Path, adapter: Path | None) -> Path:
    out = cfg.train.output_dir if cfg.train.output_dir.is_absolute() else root / cfg.train.output_dir
    path = adapter or out / "adapter"
    if not (path / "adapter_config.json").exists():
        _fail(f"{path}: no LoRA adapter here (adapter_config.json missing); run `tether train` or pass --adapter")
    return path


@app.command("evaluate")
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

    cfg, root = _setup(params, profile)
    adapter_dir = _default_adapter(cfg, root, adapter)
    from tether.outputs import write_eval_outputs

    evaluation = _run_stage("evaluate", evaluate_run, cfg, root, adapter_dir)
    path = evaluation.save((out or root / "outputs" / "eval") / "evaluation.json")
    write_eval_outputs(evaluation, cfg.eval.ks, path.parent)  # metrics.json + systems.csv for DVC
    table = Table(title="evaluation (same users, same candidates)")
    names = ["ndcg_at_10", "hr_at_10", "mrr", "valid_item_rate", "exact_title_rate"]
    table.add_column("system")
    for m in names:
        table.add_column(m, justify="right")
    for system in ("popularity", "base", "candidate"):
        vals = evaluation.systems.get(system, {})
        table.add_row(system, *[f"{vals[m]:.4f}" if isinstance(vals.get(m), (int, float)) else "-" for m in names])
    console.print(table)
    drift = Table(title="drift by source (candidate vs base perplexity, identical tokens)")
    for col in ("source", "base", "candidate", "drift", "95% CI", "limit"):
        drift.add_column(col, justify="left" if col == "source" else "right")
    for source, e in evaluation.comparisons.get("drift_panel", {}).items():
        iv = e.get("interval") or (float("nan"), float("nan"))
        drift.add_row(source, f"{e['ppl_base']:.3f}", f"{e['ppl_candidate']:.3f}", f"{e['drift']:+.2%}",
                      f"[{iv[0]:+.2%}, {iv[1]:+.2%}]", f"{e['max_drift']:.1%}")
    console.print(drift)
    console.print(f"  written: {path}  (next: tether gate --evaluation {path})", highlight=False)


@app.command("gate")
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
    from tether.tracking import lineage_tags

    cfg, root = _setup(params, profile)
    path = evaluation or root / "outputs" / "eval" / "evaluation.json"
    if not path.exists():
        _fail(f"{path}: no evaluation here; run `tether evaluate` first or pass --evaluation")
    ev = Evaluation.load(path)
    lineage = lineage_tags(cfg, root, str(ev.info.get("base_model_hash", "unknown")))
    from tether.outputs import write_verdict

    report, paths = run_gates(cfg, ev, lineage, out or path.parent)
    write_verdict(report, out or path.parent)
    print_verdict(report, paths)
    if report.blocking_failures and not no_fail:
        raise typer.Exit(1)


@app.command("status")
def status_cmd(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Show the registry: @champion, @challenger and the latest versions with their verdicts."""
    from tether.registry import registry_status

    cfg, root = _setup(params, profile)
    st = registry_status(cfg, root=root)
    console.print(f"registered model [bold]{st['name']}[/] (primary metric {st['primary_metric']})", highlight=False)
    table = Table()
    for col in ("version", "aliases", st["primary_metric"], "protocol", "verdict", "decision",
                "blocked reason / manual reason"):
        table.add_column(col)
    for v in st["recent"]:
        value = v.get("primary_metric_value")
        protocol = v.get("eval_protocol_hash")  # versions compare only under the same protocol hash
        table.add_row(
            v["version"], ", ".join(v["aliases"]) or "-", f"{value:.4f}" if value is not None else "-",
            protocol[:12] if protocol else "unknown",
            str(v.get("verdict") or "-"), str(v.get("decision") or "-"),
            str(v.get("blocked_reason") or v.get("manual_reason") or ""),
        )
    console.print(table)
    for role in ("champion", "challenger"):
        v = st[role]
        console.print(f"  @{role}: {'version ' + v['version'] if v else 'none'}", highlight=False)


@app.command("promote")
def promote_cmd(
    version: Annotated[str, typer.Argument(help="The registered version to make @champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why the gates are overridden (recorded in tags).")],
    user: Annotated[
        str | None, typer.Option("--user", help="Who overrides (default: $USER).")
    ] = None,
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Manual override: move @champion to VERSION whatever its gates said; who and why go into its tags."""
    import getpass

    from tether.registry import RegistryError, manual_promote

    cfg, root = _setup(params, profile)
    try:
        decision = manual_promote(cfg, version, reason, user or getpass.getuser(), root=root)
    except (RegistryError, ValueError) as exc:
        _fail(str(exc))
    console.print(
        f"@champion: {decision.champion_before} -> {decision.champion_after} (manual, reason recorded)", highlight=False
    )


ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue training from the newest checkpoint (after a crash).")
]
GenerateOpt = Annotated[
    bool,
    typer.Option(
        "--generate/--no-generate",
        help="Write the deterministic sample data into data/raw first (default); --no-generate keeps "
        "data/raw as it is (your own data).",
    ),
]


def print_next_steps(cfg: TetherConfig, root: Path, paths: dict[str, Any], registry: dict[str, Any] | None) -> None:
    """Where to look next: the gate report, the version's page in the MLflow UI, the registry."""
    from tether.secrets import redact_uri
    from tether.tracking import tracking_uri

    uri = tracking_uri(cfg, root)
    page = f"#/models/{registry['decision'].name}/versions/{registry['version']}" if registry else "#/models"
    if uri.startswith(("http://", "https://")):
        ui = f"{redact_uri(uri).rstrip('/')}/{page}"
    elif uri == f"sqlite:///{(REPO_ROOT / 'mlflow' / 'mlflow.db').resolve().as_posix()}":  # what mlflow/server.sh serves
        ui = f"bash mlflow/server.sh, then open http://127.0.0.1:5000/{page}"
    else:
        ui = f"mlflow server --backend-store-uri {redact_uri(uri)} --port 5000, then open http://127.0.0.1:5000/{page}"
    # soft_wrap: one line each however long (a path or URI is copied whole from a terminal or a log).
    console.print("where to look next:", highlight=False, soft_wrap=True)
    console.print(f"  gate report  {paths.get('markdown')} (+ .json, .png)", highlight=False, soft_wrap=True)
    console.print(f"  MLflow UI    {ui}", highlight=False, soft_wrap=True)
    console.print("  registry     tether status", highlight=False, soft_wrap=True)


def _run_pipeline(profile: str | None, params: Path | None, resume: bool, generate: bool, title: str) -> None:
    cfg, root = _setup(params, profile)
    from prefect.settings import PREFECT_API_URL

    from flows.training_pipeline import training_pipeline

    console.rule(title)
    if not PREFECT_API_URL.value():
        # Prefect's own start/stop notices are not shown (tether/console.py): say it here, once.
        console.print("Prefect: PREFECT_API_URL is unset, so this run starts a temporary local Prefect server "
                      "(first start ~15 s) and stops it at exit", highlight=False)
    t0 = time.perf_counter()
    try:
        result = training_pipeline(
            profile=profile, params=str(params) if params else None, root=str(root), generate=generate, resume=resume,
        )
    except Exception as exc:  # the flow already logged the traceback
        from tether.data.errors import DataError

        if isinstance(exc, (DataError, ConfigError)):
            _fail(str(exc))
        raise
    data = result["data"]
    print_accounting("validate: row accounting", data["validation"].accounting)
    print_accounting("prepare: row accounting", data["prepare"].accounting)
    console.print(f"  examples: {data['prepare'].examples}; data.dvc md5 {data['data_hash']}", highlight=False)
    print_train_result(result["train"])
    # The last screen: the verdict table, then where to look next (nothing prints after it).
    print_verdict(result["report"], result["report_paths"], result["registry"])
    console.rule(f"done in {time.perf_counter() - t0:.0f} s")
    print_next_steps(cfg, root, result["report_paths"], result["registry"])


@app.command("run")
def run_cmd(
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
    resume: ResumeOpt = False,
    generate: GenerateOpt = True,
) -> None:
    """Run the whole pipeline as one Prefect flow (`tether demo` is the same command).

    Sample data (unless --no-generate) -> DVC versioning -> GX validation -> preparation ->
    base model (cached) -> base evaluation (cached) -> LoRA fine-tuning -> evaluation against the
    zero-shot base and popularity -> gates -> registration in MLflow (@challenger; @champion only
    if every gate passes) -> the DVC stages' outputs under outputs/, recorded in dvc.lock.
    Uses the Prefect server in PREFECT_API_URL, else a local ephemeral one (first start ~15 s).
    """
    _run_pipeline(profile, params, resume, generate, "Tether run")


@app.command("demo")
def demo(
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
    resume: ResumeOpt = False,
    generate: GenerateOpt = True,
) -> None:
    """The whole pipeline on the embedded defaults: the same as `tether run` (what `make demo` calls).

    Sample data -> DVC versioning -> GX validation -> preparation -> LoRA fine-tuning of the
    embedded SmolLM2-135M-Instruct -> evaluation against the zero-shot base and popularity ->
    gates -> registration in MLflow (@challenger; @champion only if every gate passes).
    """
    _run_pipeline(profile, params, resume, generate, "Tether demo")


@app.command("serve")
def serve_cmd(
    name: Annotated[
        str | None, typer.Option("--name", help="The deployment in prefect.yaml (default: its first, `nightly`).")
    ] = None,
    prefect_yaml: Annotated[
        Path | None, typer.Option("--prefect-yaml", help="The deployments file (default: the repository's prefect.yaml).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface of the local Prefect server started when PREFECT_API_URL is unset.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of that local server (its UI: http://HOST:PORT).")] = 4200,
) -> None:
    """Serve the scheduled pipeline: prefect.yaml's deployment, with its cron schedule and parameters.

    Runs until Ctrl-C. Each scheduled run (nightly at 03:00 UTC as shipped) executes the whole
    flow in a subprocess of this command: no work pool or worker needed. Schedules need a real
    Prefect server: with PREFECT_API_URL set that server is used; without it a local one is
    started (`prefect server start` on HOST:PORT, database under $PREFECT_HOME, ~15-20 s) and
    stopped on exit. Ctrl-C (or SIGTERM) stops serving, pauses the schedule (nobody would run
    its runs) and stops the local server. To use workers instead: `prefect deploy --all`
    (docs/scheduling.md).
    """
    import signal

    _setup(None, None)  # PREFECT_HOME and quiet defaults before Prefect reads its settings
    from prefect.settings import PREFECT_API_URL

    from flows.deploy import PREFECT_YAML, DeploymentSpecError, load_deployment_spec, local_server, serve_deployment

    path = prefect_yaml or PREFECT_YAML
    try:
        spec = load_deployment_spec(path, name)
    except (DeploymentSpecError, OSError) as exc:
        _fail(str(exc))
    # A non-interactive parent may have left SIGINT ignored: make Ctrl-C and SIGTERM both a
    # KeyboardInterrupt, which Prefect's serve turns into a clean shutdown.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    schedule = ", ".join(
        f"{s.get('cron') or s.get('interval') or s.get('rrule')} ({s.get('timezone') or 'UTC'})"
        for s in spec.get("schedules") or []
    ) or "no schedule"
    configured = PREFECT_API_URL.value()
    try:
        with contextlib.nullcontext(configured) if configured else local_server(host, port) as api_url:
            console.print(
                f"serving {spec['entrypoint']} as deployment {spec['name']!r}: {schedule}, parameters "
                f"{spec.get('parameters') or {}}; Prefect API {api_url}. Ctrl-C stops.",
                highlight=False,
            )
            serve_deployment(spec, api_url, path.resolve().parent)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        _fail(str(exc))
    console.print("stopped serving", highlight=False)


@app.command("serve-model")
def serve_model_cmd(
    model_uri: Annotated[
        str | None, typer.Option("--model-uri", "-m", help="The model (default: models:/<registry.name>@champion).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (5000 is the MLflow UI's).")] = 5001,
    env_manager: Annotated[
        str, typer.Option(help="local (this environment), or virtualenv / uv / conda: one built from the version's requirements.")
    ] = "local",
    workers: Annotated[int, typer.Option(help="uvicorn workers; each loads the model.")] = 1,
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Serve a registered version over HTTP: `mlflow models serve` on the project's store (docs/serving.md).

    POST /invocations with {"dataframe_records": [{"history": [...], "candidates": [...]}]} ranks the
    candidates; without "candidates" it generates the next title. Bad requests get HTTP 400 with a
    message. The version carries its code and pins, so `--env-manager virtualenv` (or the same
    `mlflow models serve` command anywhere) serves it without Tether installed.
    """
    from tether.serving_server import ServeModelError, exec_server, model_server_command

    cfg, root = _setup(params, profile)
    try:
        argv, env, version = model_server_command(
            cfg, root, model_uri=model_uri, host=host, port=port, env_manager=env_manager, workers=workers
        )
    except ServeModelError as exc:
        _fail(str(exc))
    console.print(
        f"serving {argv[argv.index('--model-uri') + 1]} (version {version or '?'}) on http://{host}:{port}/invocations "
        f"with `{' '.join(argv[1:])}`; Ctrl-C stops.",
        highlight=False,
    )
    exec_server(argv, env)


@app.command("drift")
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


@app.command("profiles")
def profiles() -> None:
    """List the config profiles."""
    for name in available_profiles():
        console.print(name)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
