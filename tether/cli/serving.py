"""``tether serve-model``: a registered version over HTTP (``mlflow models serve``; docs/serving.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from tether.cli.app import ParamsOpt, ProfileOpt, _fail, _setup, console


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
