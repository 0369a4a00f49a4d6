"""Shared fixtures. Engines are real (Prefect, MLflow, DVC, GX); models are tiny and built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether.config import TetherConfig, load_config
from tether.env import configure_environment

REPO_ROOT = Path(__file__).resolve().parent.parent


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
