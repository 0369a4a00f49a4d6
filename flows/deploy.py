"""Scheduling the pipeline: the deployment declared in ``prefect.yaml``, served or deployed.

``prefect.yaml`` (repository root) is the one place where the schedule and the parameters of the
scheduled run are written. Two ways to run it:

* ``prefect --no-prompt deploy --all`` registers it with a Prefect server, for workers of its
  process work pool (``prefect worker start --pool tether-process``);
* ``tether serve`` reads the same entry (:func:`load_deployment_spec`), builds the same
  deployment (:func:`build_deployment`) and serves it from this process: no work pool, no worker.
  Without ``PREFECT_API_URL`` it starts a local server first (:func:`local_server`), because the
  ephemeral server a plain flow run uses cannot schedule anything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tether.config import REPO_ROOT

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

PREFECT_YAML = REPO_ROOT / "prefect.yaml"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


class DeploymentSpecError(ValueError):
    """prefect.yaml lacks the deployment, or it is not one ``tether serve`` can build."""


def load_deployment_spec(path: str | Path = PREFECT_YAML, name: str | None = None) -> dict[str, Any]:
    """One deployment entry of ``prefect.yaml`` (by name; the first when ``name`` is None).

    Returns:
        The entry as written: ``name``, ``entrypoint``, ``parameters``, ``schedules``, ``work_pool``, ...

    Raises:
        DeploymentSpecError: no such deployment, or it has no entrypoint.
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    deployments = data.get("deployments") or []
    names = [d.get("name") for d in deployments]
    chosen = next((d for d in deployments if name is None or d.get("name") == name), None)
    if chosen is None:
        raise DeploymentSpecError(f"{path}: no deployment named {name!r} (found: {names})")
    if not chosen.get("entrypoint") or ":" not in chosen["entrypoint"]:
        raise DeploymentSpecError(f"{path}: deployment {chosen.get('name')!r} needs an entrypoint 'file.py:flow'")
    return chosen


def _schedules(spec: dict[str, Any]) -> list[Any]:
    from prefect.schedules import Cron, Interval, RRule

    out = []
    for s in spec.get("schedules") or []:
        common = {"timezone": s.get("timezone"), "active": s.get("active", True), "parameters": s.get("parameters") or {}}
        if s.get("cron"):
            out.append(Cron(s["cron"], day_or=s.get("day_or", True), **common))
        elif s.get("interval"):
            out.append(Interval(s["interval"], anchor_date=s.get("anchor_date"), **common))
        elif s.get("rrule"):
            out.append(RRule(s["rrule"], **common))
        else:
            raise DeploymentSpecError(f"deployment {spec.get('name')!r}: a schedule needs cron, interval or rrule: {s}")
    return out


def build_deployment(spec: dict[str, Any], root: Path = REPO_ROOT) -> RunnerDeployment:
    """The deployment ``tether serve`` serves: the prefect.yaml entry's flow, name, schedules and parameters.

    Args:
        spec: from :func:`load_deployment_spec`.
        root: the folder the entrypoint is relative to (prefect.yaml's folder).
    """
    from prefect.flows import load_flow_from_entrypoint

    file, func = spec["entrypoint"].rsplit(":", 1)
    flow = load_flow_from_entrypoint(f"{Path(root) / file}:{func}", use_placeholder_flow=False)
    return flow.to_deployment(
        name=spec["name"],
        schedules=_schedules(spec),
        parameters=dict(spec.get("parameters") or {}),
        description=spec.get("description"),
        tags=list(spec.get("tags") or []),
        version=spec.get("version"),
    )


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers ``GET <api_url>/health``."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def local_server(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, home: str | Path | None = None, timeout: float = 120.0,
) -> Iterator[str]:
    """A Prefect server (``prefect server start``) for the duration of the block; yields its API URL.

    A healthy server already on ``host:port`` is reused and left running. Otherwise one is started
    in its own process group (so a Ctrl-C meant for the caller does not kill it mid-request), its
    log goes to ``<PREFECT_HOME>/server.log``, and it is stopped (SIGTERM, then SIGKILL) on exit.

    Args:
        host: interface to bind (127.0.0.1: this machine only).
        port: its port.
        home: PREFECT_HOME of the server (its sqlite database lives there); default: the current one.
        timeout: seconds to wait for ``/api/health``.

    Raises:
        RuntimeError: the server exited or did not become healthy in time (with its log's tail).
    """
    url = f"http://{host}:{port}/api"
    if api_healthy(url):
        yield url
        return
    env = dict(os.environ)
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    env.pop("PREFECT_API_URL", None)  # the server itself must not point at another server
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    log_dir = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not api_healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not healthy after {timeout:.0f} s"
                raise RuntimeError(f"prefect server start on {host}:{port} {why}; log {log_path}:\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _stop_flow_runs(grace_s: float = 60.0) -> None:
    """SIGTERM the flow runs this process executes (``python -m prefect.engine`` children) and wait.

    Each one unwinds like a killed ``tether run``: the flow run is Crashed and its MLflow runs end
    KILLED (tether/interrupted.py). Prefect 3.8's runner does not give them that chance: its
    SIGTERM handler schedules its async stop without awaiting it and exits, and its teardown
    signals the children and SIGKILLs them without waiting (measured: the served run's MLflow run
    stayed RUNNING, for SIGTERM and Ctrl-C alike).
    """
    import psutil

    runs = [p for p in psutil.Process().children() if "prefect.engine" in " ".join(p.cmdline())]
    for proc in runs:
        proc.terminate()
    _, alive = psutil.wait_procs(runs, timeout=grace_s)
    for proc in alive:
        proc.kill()


def _stop_then_interrupt(*_: Any) -> None:
    """SIGINT/SIGTERM while serving: end the flow runs in progress first, then stop like Ctrl-C."""
    _stop_flow_runs()
    raise KeyboardInterrupt


def serve_deployment(spec: dict[str, Any], api_url: str, root: Path = REPO_ROOT) -> None:
    """Serve the deployment against ``api_url`` until interrupted (Ctrl-C or SIGTERM).

    The scheduler of that server creates the runs; this process executes them, each in a
    subprocess. On Ctrl-C or SIGTERM the runs in progress are stopped first and waited for
    (:func:`_stop_flow_runs`), then Prefect pauses the deployment's schedule (nobody would run
    its runs) and the runner stops.
    """
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Runner(Runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:  # Runner.start installs it for SIGTERM
            _stop_then_interrupt()

    # A handler of our own for SIGINT: asyncio.run replaces only Python's default one.
    previous = signal.signal(signal.SIGINT, _stop_then_interrupt)
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            runner = _Runner(pause_on_shutdown=True)
            runner.add_deployment(build_deployment(spec, root))
            try:
                asyncio.run(runner.start())
            except (KeyboardInterrupt, TerminationSignal):
                pass
    finally:
        signal.signal(signal.SIGINT, previous)
