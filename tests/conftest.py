"""Shared fixtures. Engines are real (Prefect, MLflow, DVC, GX); models are tiny and built here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tether.config import TetherConfig, load_config
from tether.env import configure_environment

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
# tests/ mirrors the packages (data, model, eval, registry, pipeline, common); the helpers at
# tests/ (tiny, project, servers) and the test modules that others import fixtures and helpers
# from are importable by name from every folder.
for _folder in [TESTS, *sorted(p for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__")]:
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def pytest_configure(config: pytest.Config) -> None:
    # Before any engine is imported by a test module's body.
    os.environ.setdefault("PREFECT_HOME", str(REPO_ROOT / ".tether" / "prefect-tests"))
    configure_environment(REPO_ROOT)


@pytest.fixture
def test_config() -> TetherConfig:
    """The test profile: params.yaml + configs/test.yaml."""
    return load_config(profile="test")


@pytest.fixture(scope="session")
def prefect_harness():
    """One real Prefect ephemeral server for the whole session (~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny ChatML tokenizer of tests/tiny.py (a module may override it)."""
    from tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    """A seeded tiny random Llama on the tiny tokenizer (a module may override it)."""
    from tiny import build_tiny_model

    return build_tiny_model(tokenizer, seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine two OpenMP threads
    make each tiny step ~10x slower. Restores the thread count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- the registry's tiny model and store
# Used by test_registry.py, test_champion_protocol.py and test_faults.py.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny base model directory, its resolved record, a saved LoRA adapter (random, non-zero
    weights, so the adapter visibly changes the scores) and a second base model (``other_base``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny import build_tiny_model_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether.config import ModelConfig
    from tether.model.base import resolve_base_model
    from tether.model.train import save_adapter

    tmp = tmp_path_factory.mktemp("tiny")
    base_dir = build_tiny_model_dir(tmp / "base", seed=0)
    cache = tmp / "cache"
    resolved = resolve_base_model(ModelConfig(base_model=str(base_dir), cache_dir=cache))
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter = save_adapter(peft_model, tokenizer, tmp / "adapter")
    other_base = build_tiny_model_dir(tmp / "other-base", seed=1)
    return {"base": base_dir, "cache": cache, "resolved": resolved, "adapter": adapter, "other_base": other_base}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty, migrated MLflow sqlite file: creating one costs ~9 s on 2 cores, copying it nothing."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("registry-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db.as_posix()}").search_experiments()
    return db


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


@pytest.fixture
def registry_project(tmp_path: Path, tiny, empty_store, monkeypatch):
    """``(cfg, root)``: a git repository with a data.dvc, the test config pointed at the tiny model,
    and a fresh copy of the empty sqlite MLflow store under ``root/mlflow``."""
    root = tmp_path / "proj"
    (root / "mlflow").mkdir(parents=True)
    shutil.copy(empty_store, root / "mlflow" / "mlflow.db")
    # Pinned for the whole test: mlflow.set_tracking_uri writes this variable, and tether.tracking
    # prefers it over the root, so a value left by another test would redirect the registry.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve().as_posix()}")
    _git(root, "init", "-q")
    (root / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "feedbeef0123.dir", "path": "data/raw"}]}))
    _git(root, "add", "data.dvc")
    _git(root, "commit", "-q", "-m", "data")
    cfg = load_config(
        profile="test",
        overrides={
            "model": {"base_model": str(tiny["base"]), "cache_dir": str(tiny["cache"]), "device": "cpu"},
            "examples": {"history_length": 3},
            "tracking": {"experiment": "registry-test"},
        },
    )
    return cfg, root
