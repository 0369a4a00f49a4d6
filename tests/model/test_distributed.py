"""The fine-tune under torchrun: two processes, DDP over gloo on the CPU, the same code path as one GPU or many.

``torchrun --standalone --nproc_per_node 2 -m tether train`` on a tiny model in a temporary
project: the Trainer shards the data and averages gradients; only the main process logs to
MLflow and writes the adapter and train_result.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny import build_tiny_model_dir, make_project, reset_mlflow_globals

from tether.config import load_config

pytestmark = pytest.mark.integration

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


def test_python_m_tether_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "tether", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "promote" in out.stdout


def test_torchrun_two_processes_train_one_adapter_one_mlflow_run(tmp_path: Path) -> None:
    import mlflow

    tiny = build_tiny_model_dir(tmp_path / "tiny-model")
    root = make_project(tmp_path / "proj", n_train=32, n_val=8, corpus=False)
    cfg = load_config(profile="test", overrides={
        "model": {"base_model": str(tiny), "cache_dir": str(tmp_path / "cache"), "device": "cpu"},
        "train": {"max_steps": 4, "batch_size": 2, "target_modules": ["q_proj", "v_proj"]},
        "tracking": {"experiment": "ddp"},
    })
    (root / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"OMP_NUM_THREADS": "1", "TETHER_CACHE": str(tmp_path / "cache")})
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "tether", "train",
         "--params", str(root / "params.yaml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=400,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "process 0 of 2" in output and "process 1 of 2" in output  # two ranks really trained

    out_dir = root / cfg.train.output_dir
    adapters = [p.parent for p in root.rglob("adapter_model.safetensors") if not p.parent.name.startswith("checkpoint-")]
    logged = [p for p in adapters if (root / "mlflow") in p.parents]
    assert sorted(set(adapters) - set(logged)) == [out_dir / "adapter"]  # saved once, by the main process
    assert len(logged) == 1  # and logged to MLflow once
    result = json.loads((out_dir / "train_result.json").read_text())
    assert result["steps"] == 4 and result["mlflow_run_id"]

    client = mlflow.MlflowClient(f"sqlite:///{(root / 'mlflow' / 'mlflow.db').as_posix()}")
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == result["mlflow_run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2" and run.data.params["runtime.world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]  # logged once per step
