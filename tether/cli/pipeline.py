"""``tether run|demo|serve``: the whole pipeline as a Prefect flow, now or on its schedule.

This is the one module of ``tether/`` that imports Prefect or ``flows/`` (docs/CONVENTIONS.md):
the rest of the package is pure stage logic that the flows and the other commands call.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.app import ParamsOpt, ProfileOpt, _fail, _setup, console
from tether.cli.show import print_accounting, print_train_result, print_verdict
from tether.config import REPO_ROOT, ConfigError, TetherConfig

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


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    """SIGTERM ends ``tether run`` like Ctrl-C: exceptions unwind, ``atexit`` stops the temporary server.

    Python's default SIGTERM kills the process on the spot: no ``finally``, no ``atexit``, so the
    temporary Prefect server (a uvicorn child) was left running with parent 1. During the flow,
    Prefect's own handler turns the signal into a crash (the flow's ``on_crashed`` hook ends the
    MLflow run KILLED, tether/interrupted.py), then re-sends it here.
    """
    raise SystemExit(128 + signum)


def _run_pipeline(profile: str | None, params: Path | None, resume: bool, generate: bool, title: str) -> None:
    import signal

    cfg, root = _setup(params, profile)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # A background job of a non-interactive shell starts with SIGINT ignored (Python then installs
    # no KeyboardInterrupt): Ctrl-C or `kill -INT` would be lost and the run would go on.
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
    except (KeyboardInterrupt, SystemExit) as exc:
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
        console.print(f"interrupted ({'SIGTERM' if code == 143 else 'SIGINT'}): the flow run is Crashed, its MLflow run "
                      "KILLED; `tether run --resume` continues training from the newest checkpoint", highlight=False)
        raise typer.Exit(code) from None
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
    except SystemExit as exc:  # Prefect's runner handles SIGTERM itself: a graceful stop, then sys.exit(0)
        console.print("stopped serving", highlight=False)
        raise typer.Exit(exc.code if isinstance(exc.code, int) else 0) from None
    except RuntimeError as exc:
        _fail(str(exc))
    console.print("stopped serving", highlight=False)
