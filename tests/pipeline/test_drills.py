"""Operations and reproducibility drills, end to end with real engines (issue 13).

One throwaway project (git + DVC + a local remote, the test profile, a tiny model):

1. the deployment of ``prefect.yaml`` is deployed to a real Prefect server and run once by a real
   process worker (``prefect worker start --run-once``): a flow run Completed, a version registered;
2. commit A records that run (``data.dvc``, ``dvc.lock``, the outputs); commit B changes the data
   and a gate and reproduces (``dvc repro``: verdict BLOCKED);
3. a fresh clone checked out at A, ``dvc pull data.dvc``, ``dvc repro --force``: every stage is
   re-run from A's data, code and params, and ``outputs/eval/metrics.json`` and
   ``outputs/gate/verdict.json`` are A's, byte for byte (the worker's flow wrote them at A).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from project import EVAL, PERMISSIVE, git, make_project
from tiny import build_tiny_model_dir

from tether.config import REPO_ROOT
from tether.versioning import dvc

pytestmark = pytest.mark.integration

OUTPUTS = ("outputs/eval/metrics.json", "outputs/gate/verdict.json")


def _prefect(env: dict[str, str], cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _flow_run_state(url: str, deployment: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))
        return [r.state.name for r in runs if r.state is not None]


def test_a_worker_runs_the_deployment_and_any_commit_reproduces_its_verdict(tmp_path: Path) -> None:
    from flows.deploy import free_port, load_deployment_spec, local_server
    from tether.config import load_config
    from tether.registry import registry_status

    root = make_project(tmp_path / "proj", overrides={"examples": {"token_stats": False}, "eval": EVAL, "gates": PERMISSIVE})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["base_model"] = str(build_tiny_model_dir(tmp_path / "tiny", seed=0))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for code in ("flows", "tasks"):  # the deployment's code: prefect.yaml and its entrypoint, as shipped
        shutil.copytree(REPO_ROOT / code, root / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO_ROOT / "prefect.yaml", root / "prefect.yaml")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "deployable project")
    spec = load_deployment_spec(root / "prefect.yaml")

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"TETHER_CACHE": str(tmp_path / "cache"), "PREFECT_HOME": str(tmp_path / "prefect-home"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"})
    with local_server(port=free_port(), home=tmp_path / "prefect-home", timeout=120) as url:
        env["PREFECT_API_URL"] = url
        # 1. what docs/scheduling.md tells an operator to do: a pool, `prefect deploy`, a worker
        _prefect(env, root, "work-pool", "create", spec["work_pool"]["name"], "--type", "process")
        _prefect(env, root, "--no-prompt", "deploy", "--all")
        name = f"training_pipeline/{spec['name']}"
        _prefect(env, root, "deployment", "run", name, "--params", json.dumps({"root": str(root)}))
        started = time.monotonic()
        worker = subprocess.run(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", spec["work_pool"]["name"], "--run-once", "--limit", "1"],
            env=env, cwd=root, capture_output=True, text=True, timeout=600,
        )
        assert worker.returncode == 0, worker.stdout[-4000:] + worker.stderr[-4000:]
        states = _flow_run_state(url, spec["name"])
    assert states == ["Completed"], (states, worker.stdout[-4000:])
    cfg = load_config(root / "params.yaml")
    status = registry_status(cfg, root=root)
    assert status["champion"]["version"] == "1"  # PERMISSIVE gates: registered and promoted
    assert status["champion"]["lineage"]["git_commit"] == git(root, "rev-parse", "HEAD").strip()
    print(f"worker run: {states[0]} in {time.monotonic() - started:.0f} s; version 1 @champion")

    # 2. commit A: the run's data, dvc.lock and outputs; commit B: other data, a gate that blocks
    recorded = {p: (root / p).read_bytes() for p in OUTPUTS}
    assert json.loads(recorded[OUTPUTS[1]])["verdict"] == "PROMOTE"
    assert "Running stage" not in dvc(root, "repro").stdout  # the flow recorded its outputs in dvc.lock
    dvc(root, "push")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "A: the worker's run")
    commit_a = git(root, "rev-parse", "HEAD").strip()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["generate"]["n_users"] = 90
    params["gates"]["min_margin_vs_popularity"] = 1.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    generated = subprocess.run([sys.executable, "-m", "tether.cli", "data", "generate", "--params", str(root / "params.yaml")],
                               cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    dvc(root, "add", "data/raw")
    dvc(root, "repro")
    assert json.loads((root / OUTPUTS[1]).read_text())["verdict"] == "BLOCKED"
    assert (root / OUTPUTS[0]).read_bytes() != recorded[OUTPUTS[0]]
    dvc(root, "push")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "B: more users, a margin nobody meets")

    # 3. a fresh clone at A: no data until `dvc pull`, then every stage re-run gives A's files
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    git(clone, "checkout", "-q", commit_a)
    assert not (clone / "data" / "raw").exists()
    dvc(clone, "pull", "data.dvc")
    out = dvc(clone, "repro", "--force").stdout
    for stage in ("validate", "prepare", "train", "evaluate", "gate"):
        assert f"Running stage '{stage}'" in out, out
    for path in OUTPUTS:
        assert (clone / path).read_bytes() == recorded[path], path
    assert "Running stage" not in dvc(clone, "repro").stdout
