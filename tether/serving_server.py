"""``tether serve-model``: the registered champion over HTTP with MLflow's own scoring server.

The command is ``mlflow models serve`` on the project's store: it adds nothing to the server
(``POST /invocations``, ``GET /ping``; docs/serving.md), so the same version serves the same
way from a fresh environment, a container (``mlflow models build-docker``) or a cluster. It
checks first that the model URI names a version, so a missing ``@champion`` is one line
instead of a traceback, then replaces this process with the server (``exec``): Ctrl-C and
SIGTERM reach the server itself and nothing is left running.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tether.config import TetherConfig
from tether.tracking import tracking_uri

ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")
DEFAULT_PORT = 5001  # 5000 is the MLflow UI of mlflow/server.sh


class ServeModelError(RuntimeError):
    """The model cannot be served as asked; the message says what to do."""


def default_model_uri(cfg: TetherConfig) -> str:
    """``models:/<registry.name>@<registry.champion_alias>``."""
    return f"models:/{cfg.registry.name}@{cfg.registry.champion_alias}"


def check_model_uri(model_uri: str, uri: str) -> str:
    """Resolve a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI to its version number.

    Args:
        model_uri: the model to serve (other URI forms are passed to MLflow unchecked).
        uri: the tracking / registry URI.

    Returns:
        The version number, or "" for a URI that is not a registry URI.

    Raises:
        ServeModelError: the registered model, alias or version does not exist.
    """
    if not model_uri.startswith("models:/"):
        return ""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    ref = model_uri.removeprefix("models:/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return str(client.get_model_version_by_alias(name, alias).version)
        name, _, version = ref.partition("/")
        return str(client.get_model_version(name, version).version)
    except MlflowException as exc:
        raise ServeModelError(
            f"{model_uri} is not in the registry at {uri} ({exc.message.splitlines()[0]}). "
            "Register one first (`tether run`), see `tether status`, or pass --model-uri models:/NAME/VERSION."
        ) from None


def model_server_command(
    cfg: TetherConfig,
    root: Path,
    *,
    model_uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    env_manager: str = "local",
    workers: int = 1,
) -> tuple[list[str], dict[str, str], str]:
    """The ``mlflow models serve`` command line and environment for a registered version.

    Args:
        cfg: the config (``registry``, ``tracking``).
        root: the project root (its local store, unless ``$MLFLOW_TRACKING_URI`` / ``tracking.uri``).
        model_uri: the model (default: ``@champion``).
        host: the interface to bind (127.0.0.1: this machine only).
        port: the port.
        env_manager: ``local`` (this environment) or one MLflow builds from the version's own
            requirements (``virtualenv``, ``uv``, ``conda``).
        workers: uvicorn worker processes (each loads the model).

    Returns:
        ``(argv, env, version)``.

    Raises:
        ServeModelError: bad arguments, or the model URI names no version.
    """
    if env_manager not in ENV_MANAGERS:
        raise ServeModelError(f"--env-manager {env_manager!r}: expected one of {', '.join(ENV_MANAGERS)}")
    if not 0 < port < 65536 or workers < 1:
        raise ServeModelError(f"--port {port} / --workers {workers}: a port in 1..65535 and at least one worker")
    uri = tracking_uri(cfg, root)
    model_uri = model_uri or default_model_uri(cfg)
    version = check_model_uri(model_uri, uri)
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow_bin is None:
        raise ServeModelError(f"no `mlflow` command beside {sys.executable} or on PATH: install the project (make venv)")
    argv = [
        mlflow_bin, "models", "serve", "--model-uri", model_uri, "--host", host, "--port", str(port),
        "--env-manager", env_manager, "--workers", str(workers),
    ]
    # uvicorn is started by name through a shell: this environment's scripts come first.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    return argv, env, version


def exec_server(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with the server (never returns)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
