"""The production tracking path for real: ``mlflow server`` on a PostgreSQL backend, the whole flow against it.

A throwaway PostgreSQL cluster (initdb + pg_ctl from the system's PostgreSQL binaries, run as an
unprivileged user when the tests run as root) on 127.0.0.1, a real ``mlflow server`` over HTTP on
top, and the tiny-model training_pipeline end to end, promotion included. When the binaries are
missing the test fails and says how to install them: it is never silently skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servers import MlflowServer, PostgresCluster, mlflow_client_env
from tiny import build_tiny_model_dir, reset_mlflow_globals

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


@pytest.fixture
def postgres_mlflow(tmp_path: Path):
    """(PostgreSQL cluster, MLflow server on it); both stopped in teardown."""
    cluster = PostgresCluster().start()
    server = None
    try:
        backend = cluster.create_database("mlflow", owner="tether_mlflow", password="tether-db-pw")
        server = MlflowServer(tmp_path / "server", backend_uri=backend).start()
        yield cluster, server
    finally:
        if server is not None:
            server.stop()
        cluster.stop()


def test_training_pipeline_on_a_postgresql_backed_mlflow_server(tmp_path: Path, postgres_mlflow, prefect_harness, monkeypatch) -> None:
    import mlflow
    import pandas as pd

    from flows.training_pipeline import training_pipeline
    from project import make_project
    from test_faults import flow_overrides
    from tether.config import load_config
    from tether.registry import load_champion, registry_status

    cluster, server = postgres_mlflow
    mlflow_client_env(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    tiny = build_tiny_model_dir(tmp_path / "tiny-model")
    root = make_project(tmp_path / "proj", overrides=flow_overrides(tiny))

    result = training_pipeline(root=str(root))
    assert result["registry"]["decision"].promoted

    cfg = load_config(root / "params.yaml")
    status = registry_status(cfg, root=root)
    version = result["registry"]["version"]
    assert status["champion"]["version"] == version == status["challenger"]["version"]
    client = mlflow.MlflowClient(server.uri)
    mv = client.get_model_version(cfg.registry.name, version)
    for key in ("verdict", "primary_metric", "primary_metric_value", "git_commit", "data_hash", "config_hash",
                "base_model_hash", "adapter_sha256", "idempotency_key", "tether.registration"):
        assert mv.tags.get(key), key
    assert mv.tags["verdict"] == "PROMOTE"
    # The version records the hash of the config the flow ran with (its own lineage, params.yaml).
    assert mv.tags["config_hash"] == result["report"].lineage["config_hash"] == cfg.config_hash()
    assert mv.description and "PROMOTE" in mv.description
    run = client.get_run(result["train"].mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.max_steps"] == str(cfg.train.max_steps)

    # The rows really are in PostgreSQL (not a sqlite file next to the server).
    assert not list(server.workdir.glob("*.db"))
    assert cluster.psql("SELECT count(*) FROM model_versions", db="mlflow").strip() == "1"
    assert cluster.psql("SELECT version FROM registered_model_aliases WHERE alias = 'champion'", db="mlflow").strip() == version
    assert int(cluster.psql("SELECT count(*) FROM runs", db="mlflow")) >= 1  # the training run (the gates log into it)

    # The champion loads by alias and ranks candidates.
    champion = load_champion(cfg, root=root)
    out = champion.predict(pd.DataFrame({"history": [["Silent Harbor Part 1"]], "candidates": [["A", "B", "C"]]}))
    assert sorted(out["recommendations"][0]) == ["A", "B", "C"]
