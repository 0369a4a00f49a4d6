"""The typer app, its sub-apps, the options every command shares, and setup / error exits."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from tether.config import REPO_ROOT, ConfigError, TetherConfig, available_profiles, load_config
from tether.console import setup_console
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
    """Environment, console and config of one command: ``(config, project root)``; a bad config exits 2."""
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


def _fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def _run_stage(title: str, fn, *args, **kwargs) -> Any:
    """Run one stage function; bad data or config is a clean ``error:`` exit, success a ✓ line with its time."""
    from tether.data.errors import DataError

    t0 = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except (DataError, ConfigError) as exc:
        _fail(f"{title} stopped: {exc}")
    console.print(f"[green]✓[/] {title} ({time.perf_counter() - t0:.1f} s)")
    return result


def profiles() -> None:
    """List the config profiles."""
    for name in available_profiles():
        console.print(name)
