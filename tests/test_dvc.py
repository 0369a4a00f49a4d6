"""DVC for real: data.dvc tracking, push/pull round trip, `dvc repro` of the data stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from project import git, make_project
from tether import versioning
from tether.config import load_config
from tether.data.generate import generate_sample_data

pytestmark = pytest.mark.integration

NO_TOKENIZER = {"examples": {"token_stats": False}}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_project(tmp_path / "proj", overrides=NO_TOKENIZER)
    cfg = load_config(root / "params.yaml")
    generate_sample_data(cfg.generate, cfg.seed, root / "data" / "raw")
    return root


def test_track_push_pull_round_trip(project: Path, tmp_path: Path) -> None:
    digest = versioning.track_raw_data(project, project / "data" / "raw")
    assert digest.endswith(".dir") and digest == versioning.data_hash(project)
    versioning.push(project)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "data")

    # A fresh clone has data.dvc but no data until `dvc pull`.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    assert not (clone / "data" / "raw").exists()
    versioning.pull(clone)
    for name in ("ratings.csv", "movies.csv"):
        assert (clone / "data" / "raw" / name).read_bytes() == (project / "data" / "raw" / name).read_bytes()
    assert versioning.data_hash(clone) == digest


def test_tracking_is_stable_for_identical_data(project: Path) -> None:
    first = versioning.track_raw_data(project, project / "data" / "raw")
    cfg = load_config(project / "params.yaml")
    shutil.rmtree(project / "data" / "raw")
    generate_sample_data(cfg.generate, cfg.seed, project / "data" / "raw")  # deterministic
    assert versioning.track_raw_data(project, project / "data" / "raw") == first
    (project / "data" / "raw" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1600000000\n")
    assert versioning.track_raw_data(project, project / "data" / "raw") != first


def test_dvc_repro_runs_stages_then_is_a_noop(project: Path) -> None:
    versioning.track_raw_data(project, project / "data" / "raw")
    out = versioning.dvc(project, "repro").stdout
    assert "Running stage 'validate'" in out and "Running stage 'prepare'" in out
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "stats.json"):
        assert (project / "data" / "processed" / name).stat().st_size > 0
    report = json.loads((project / "data" / "reports" / "validation.json").read_text())
    assert report["accounting"]["interactions"]["rows_in"] > 0
    assert (project / "dvc.lock").exists()

    again = versioning.dvc(project, "repro").stdout
    assert "Running stage" not in again
    assert "didn't change" in again or "up to date" in again.lower()

    # A changed parameter re-runs only what depends on it.
    params = (project / "params.yaml").read_text().replace("history_length: 5", "history_length: 3")
    (project / "params.yaml").write_text(params)
    third = versioning.dvc(project, "repro").stdout
    assert "Running stage 'prepare'" in third and "Running stage 'validate'" not in third


def test_commit_pipeline_records_flow_outputs(project: Path) -> None:
    """Outputs computed outside DVC (by the Prefect flow) are recorded so repro is a no-op."""
    from tether.data.prepare import run_prepare
    from tether.data.validate import run_validation

    versioning.track_raw_data(project, project / "data" / "raw")
    cfg = load_config(project / "params.yaml")
    run_validation(cfg, project)
    run_prepare(cfg, project)
    versioning.commit_pipeline(project)
    assert "Running stage" not in versioning.dvc(project, "repro").stdout


def test_committed_data_dvc_is_what_the_generator_writes(tmp_path: Path) -> None:
    """`tether data generate` with params.yaml reproduces the exact data recorded in data.dvc,
    so a machine without the DVC remote still gets the registered data byte for byte."""
    repo_root = Path(__file__).resolve().parent.parent
    expected = versioning.data_hash(repo_root)
    assert expected.endswith(".dir"), "data.dvc must be committed with the sample data's hash"
    cfg = load_config(repo_root / "params.yaml")
    generate_sample_data(cfg.generate, cfg.seed, tmp_path / "data" / "raw")
    versioning.dvc(tmp_path, "init", "--no-scm", "-q")
    assert versioning.track_raw_data(tmp_path, tmp_path / "data" / "raw") == expected
