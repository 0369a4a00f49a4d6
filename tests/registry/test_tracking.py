"""MLflow tracking setup and lineage tags, against a real sqlite store and a real git repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tiny import reset_mlflow_globals

from tether.config import load_config
from tether.tracking import flatten_params, lineage_tags, loss_plot, setup_tracking, tracking_uri


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(profile="test")
    assert tracking_uri(cfg, tmp_path) == f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve().as_posix()}"
    configured = load_config(profile="test", overrides={"tracking": {"uri": "sqlite:////somewhere/else.db"}})
    assert tracking_uri(configured, tmp_path) == "sqlite:////somewhere/else.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(configured, tmp_path) == "http://127.0.0.1:5000"


@pytest.mark.integration
def test_setup_tracking_creates_experiment_with_local_artifacts(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(profile="test", overrides={"tracking": {"experiment": "tether-test"}})
    uri = setup_tracking(cfg, tmp_path)
    assert uri.startswith("sqlite:///") and (tmp_path / "mlflow" / "mlflow.db").exists()
    assert setup_tracking(cfg, tmp_path) == uri  # idempotent
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("tether-test")
    assert exp.artifact_location == (tmp_path / "mlflow" / "artifacts").resolve().as_uri()
    with mlflow.start_run() as run:
        mlflow.log_text("hello", "note.txt")
    assert (tmp_path / "mlflow" / "artifacts" / run.info.run_id / "artifacts" / "note.txt").exists()


def test_lineage_outside_git_and_dvc(tmp_path: Path) -> None:
    cfg = load_config(profile="test")
    tags = lineage_tags(cfg, tmp_path, base_model_hash="ab" * 32)
    assert tags == {
        "git_commit": "unknown",
        "git_dirty": "unknown",
        "data_hash": "untracked",
        "config_hash": cfg.config_hash(),
        "base_model_hash": "ab" * 32,
    }


def test_lineage_in_a_git_repo_with_dvc_data(tmp_path: Path, monkeypatch) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "0123abcd.dir", "path": "data/raw"}]}))
    git("add", "data.dvc")
    git("commit", "-q", "-m", "data")
    cfg = load_config(profile="test")
    tags = lineage_tags(cfg, tmp_path, base_model_hash="h")
    assert tags["git_commit"] == git("rev-parse", "HEAD") and len(tags["git_commit"]) == 40
    assert tags["mlflow.source.git.commit"] == tags["git_commit"]
    assert tags["git_dirty"] == "false"
    assert tags["data_hash"] == "0123abcd.dir"
    (tmp_path / "data.dvc").write_text("outs: []\n")
    assert lineage_tags(cfg, tmp_path, base_model_hash="h")["git_dirty"] == "true"
    # In a container image the build's commit (infra/Dockerfile) wins over the image's placeholder repo.
    monkeypatch.setenv("TETHER_GIT_COMMIT", "c0ffee" * 6 + "c0ff")
    image = lineage_tags(cfg, tmp_path, base_model_hash="h")
    assert image["git_commit"] == "c0ffee" * 6 + "c0ff" and image["git_dirty"] == "unknown"


def test_flatten_params_and_loss_plot(tmp_path: Path) -> None:
    cfg = load_config(profile="test")
    flat = flatten_params({"train": cfg.train.model_dump(mode="json")})
    assert flat["train.lora_rank"] == str(cfg.train.lora_rank)
    assert flat["train.replay.ratio"] == str(cfg.train.replay.ratio)
    assert flat["train.target_modules"].startswith("q_proj,k_proj")
    assert flat["train.seed"] == "null"
    png = tmp_path / "loss.png"
    loss_plot([(1, 3.0), (2, 2.5), (3, 2.0)], [(2, 2.7)], base_eval_loss=3.1, path=png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_setup_tracking_leaves_the_environment_alone(tmp_path, monkeypatch) -> None:
    """MLflow 3 exports the URI to MLFLOW_TRACKING_URI; a second project must not inherit the first's store."""
    import os

    from tether.config import load_config
    from tether.tracking import setup_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(profile="test")
    first = setup_tracking(cfg, tmp_path / "a")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    second = setup_tracking(cfg, tmp_path / "b")
    assert first != second and str(tmp_path / "b") in second
