"""SIGTERM and SIGINT to ``tether run`` and ``tether serve``: every child ends, the MLflow run reads KILLED.

Real processes: ``tether run`` on a throwaway project with a tiny model and a long training (so
the signal lands mid-training), its temporary Prefect server started by Prefect itself;
``tether serve`` with its local ``prefect server start`` executing a run of its deployment. The
descendants of the command are collected while it runs (psutil) and must all be gone after it
exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from project import EVAL, PERMISSIVE, make_project
from tiny import build_tiny_model_dir

from tether.config import REPO_ROOT

pytestmark = pytest.mark.integration

TRAIN_LONG = {"max_steps": 5000, "eval_every": 5000, "save_every": 5000}  # ends only by the signal


def _project(tmp_path: Path) -> Path:
    root = make_project(tmp_path / "proj", overrides={
        "examples": {"token_stats": False}, "eval": EVAL, "gates": PERMISSIVE, "train": TRAIN_LONG,
    })
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["base_model"] = str(build_tiny_model_dir(tmp_path / "tiny", seed=0))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update({"TETHER_CACHE": str(tmp_path / "cache"), "PREFECT_HOME": str(tmp_path / "prefect-home"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    return env


def _training_runs(root: Path) -> list:
    """The MLflow runs of the project's store (sqlite under <root>/mlflow), top-level only."""
    from mlflow import MlflowClient

    from tether.config import load_config
    from tether.tracking import tracking_uri

    cfg = load_config(root / "params.yaml")
    db = root / "mlflow" / "mlflow.db"
    if not db.exists():
        return []
    client = MlflowClient(tracking_uri(cfg, root))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]


def _wait_for_training(proc: subprocess.Popen, log: Path, timeout: float = 240) -> set[int]:
    """Wait until the command logs a training step; return the pids of all its descendants then."""
    deadline = time.monotonic() + timeout
    while "step 2:" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)
    return {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}


def _assert_all_gone(pids: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        time.sleep(0.2)
    assert not alive, [" ".join(psutil.Process(p).cmdline()[:6]) for p in alive]


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen):
    """The block's process group is SIGKILLed at the end if it is still running (a test never leaves one)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_tether_run_ends_every_child_and_kills_the_mlflow_run(tmp_path: Path, sig) -> None:
    root = _project(tmp_path)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tether.cli", "run", "--params", str(root / "params.yaml")],
                                cwd=root, env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    with _reaped(proc):
        children = _wait_for_training(proc, log)
        # Prefect's temporary server is a child of `tether run` (a uvicorn process)
        assert any("uvicorn" in " ".join(psutil.Process(p).cmdline()) for p in children), children
        assert [r.info.status for r in _training_runs(root)] == ["RUNNING"]
        proc.send_signal(sig)
        code = proc.wait(90)
    text = log.read_text(errors="replace")
    assert code == 128 + sig, text[-3000:]
    assert "interrupted (" in text and "MLflow run KILLED" in text
    _assert_all_gone(children)
    runs = _training_runs(root)
    assert [r.info.status for r in runs] == ["KILLED"], text[-3000:]
    assert "signal" in runs[0].data.tags["tether.killed"] or "interrupt" in runs[0].data.tags["tether.killed"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_tether_serve_ends_its_server_and_the_run_it_executes(tmp_path: Path, sig) -> None:
    """`tether serve` with no PREFECT_API_URL starts its own server; a run of its deployment is
    executing (a subprocess of serve, started by Prefect's runner) when the signal arrives."""
    from flows.deploy import free_port, load_deployment_spec

    root = _project(tmp_path)
    spec = load_deployment_spec()
    for code in ("flows", "tasks"):  # the deployment's code lives beside its prefect.yaml
        shutil.copytree(REPO_ROOT / code, root / code, ignore=shutil.ignore_patterns("__pycache__"))
    prefect_yaml = root / "prefect.yaml"
    prefect_yaml.write_text(yaml.safe_dump({"deployments": [{**spec, "parameters": {"root": str(root), "generate": True}}]}))
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tether.cli", "serve", "--prefect-yaml", str(prefect_yaml), "--port", str(port)],
                                cwd=tmp_path, env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    with _reaped(proc):
        deadline = time.monotonic() + 120
        while "serving flows/" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        while True:  # the deployment is registered a moment after the "serving" line
            run = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", f"training_pipeline/{spec['name']}"],
                                 env={**_env(tmp_path), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"},
                                 capture_output=True, text=True, timeout=120)
            if run.returncode == 0 or "not found" not in run.stdout or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert run.returncode == 0, run.stdout + run.stderr
        children = _wait_for_training(proc, log)
        assert any("uvicorn" in " ".join(psutil.Process(p).cmdline()) or "server" in psutil.Process(p).cmdline()
                   for p in children), children
        assert [r.info.status for r in _training_runs(root)] == ["RUNNING"]
        proc.send_signal(sig)
        code = proc.wait(120)
    text = log.read_text(errors="replace")
    assert code == 0 and "stopped serving" in text, text[-3000:]
    _assert_all_gone(children)
    assert [r.info.status for r in _training_runs(root)] == ["KILLED"], text[-3000:]
