"""DVC for real: data.dvc tracking, push/pull round trip, `dvc repro` of the data and model stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from project import git, make_project
from tiny import build_tiny_model_dir
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
    out = versioning.dvc(project, "repro", "prepare").stdout  # the data stages (the model stages: below)
    assert "Running stage 'validate'" in out and "Running stage 'prepare'" in out
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "stats.json"):
        assert (project / "data" / "processed" / name).stat().st_size > 0
    report = json.loads((project / "data" / "reports" / "validation.json").read_text())
    assert report["accounting"]["interactions"]["rows_in"] > 0
    assert (project / "dvc.lock").exists()

    again = versioning.dvc(project, "repro", "prepare").stdout
    assert "Running stage" not in again
    assert "didn't change" in again or "up to date" in again.lower()

    # A changed parameter re-runs only what depends on it.
    params = (project / "params.yaml").read_text().replace("history_length: 5", "history_length: 3")
    (project / "params.yaml").write_text(params)
    third = versioning.dvc(project, "repro", "prepare").stdout
    assert "Running stage 'prepare'" in third and "Running stage 'validate'" not in third


def test_commit_pipeline_records_flow_outputs(project: Path) -> None:
    """Outputs computed outside DVC (by the Prefect flow) are recorded so repro is a no-op."""
    from tether.data.prepare import run_prepare
    from tether.data.validate import run_validation

    versioning.track_raw_data(project, project / "data" / "raw")
    cfg = load_config(project / "params.yaml")
    run_validation(cfg, project)
    run_prepare(cfg, project)
    # What tasks/data.py record_pipeline_task does: the data stages (the model stages come later in the flow).
    versioning.dvc(project, "commit", "--force", "--quiet", "validate", "prepare")
    assert "Running stage" not in versioning.dvc(project, "repro", "prepare").stdout


def test_committed_data_dvc_is_what_the_generator_writes(tmp_path: Path) -> None:
    """`tether data generate` with params.yaml reproduces the exact data recorded in data.dvc,
    so a machine without the DVC remote still gets the registered data byte for byte."""
    repo_root = Path(__file__).resolve().parents[2]
    expected = versioning.data_hash(repo_root)
    assert expected.endswith(".dir"), "data.dvc must be committed with the sample data's hash"
    cfg = load_config(repo_root / "params.yaml")
    generate_sample_data(cfg.generate, cfg.seed, tmp_path / "data" / "raw")
    versioning.dvc(tmp_path, "init", "--no-scm", "-q")
    assert versioning.track_raw_data(tmp_path, tmp_path / "data" / "raw") == expected


# Small enough for seconds per stage with the tiny model; the same shapes as the real protocol.
TINY_EVAL = {"n_users": 5, "n_negatives": 4, "perplexity": {"window": 64, "stride": 32},
             "generation": {"n_prompts": 2, "max_new_tokens": 4, "valid_item_users": 2, "valid_item_max_new_tokens": 4}}


def test_dvc_repro_whole_pipeline(tmp_path: Path, monkeypatch) -> None:
    """`dvc repro` runs validate -> prepare -> train -> evaluate -> gate with the tether CLI, a BLOCKED
    verdict does not fail it, metrics and plots are readable, and a second repro is a no-op."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    tiny = build_tiny_model_dir(tmp_path / "tiny-model")
    root = make_project(tmp_path / "proj", overrides={
        "model": {"base_model": str(tiny)}, "examples": {"token_stats": False}, "eval": TINY_EVAL,
        "gates": {"valid_item_rate_floor": 1.0},  # a tiny random model never names a title: BLOCKED
    })
    cfg = load_config(root / "params.yaml")
    generate_sample_data(cfg.generate, cfg.seed, root / "data" / "raw")
    versioning.track_raw_data(root, root / "data" / "raw")

    out = versioning.dvc(root, "repro").stdout
    for stage in ("validate", "prepare", "train", "evaluate", "gate"):
        assert f"Running stage '{stage}'" in out, out
    adapter = root / cfg.train.output_dir / "adapter"  # ${train.output_dir} in dvc.yaml: the test profile's folder
    assert (adapter / "adapter_config.json").exists()
    loss = (root / cfg.train.output_dir / "loss.csv").read_text().splitlines()
    assert loss[0] == "step,train_loss" and len(loss) > 1

    verdict = json.loads((root / "outputs/gate/verdict.json").read_text())
    assert verdict["verdict"] == "BLOCKED" and verdict["promote"] is False
    assert "valid_item_rate" in verdict["blocked_by"]
    metrics_text = (root / "outputs/eval/metrics.json").read_text()
    assert str(root) not in metrics_text and str(tmp_path) not in metrics_text  # no absolute paths
    shown = json.loads(versioning.dvc(root, "metrics", "show", "--json").stdout)
    by_file = next(iter(shown.values()))["data"]
    ev = by_file["outputs/eval/metrics.json"]["data"]
    assert {"candidate", "base", "popularity"} <= set(ev)
    assert 0.0 <= ev["candidate"]["ndcg_at_10"] <= 1.0
    # one perplexity per drift-panel source (the single "perplexity" became per source in issue 11)
    base_ppl = {k: v for k, v in ev["base"].items() if k.startswith("perplexity.")}
    assert base_ppl and all(v > 1.0 for v in base_ppl.values()), ev["base"]
    assert by_file["outputs/gate/verdict.json"]["data"]["verdict"] == "BLOCKED"
    plots = json.loads(versioning.dvc(root, "plots", "show", "--json").stdout)
    plotted = json.dumps(plots)
    assert "loss.csv" in plotted and "systems.csv" in plotted and "train_loss" in plotted

    again = versioning.dvc(root, "repro").stdout
    assert "Running stage" not in again, again
    # The numbers are a function of the inputs: the stage outputs recorded in dvc.lock match the files.
    assert "changed" not in versioning.dvc(root, "status").stdout


def test_a_profile_run_leaves_the_dvc_stage_outputs_alone(tmp_path: Path, prefect_harness) -> None:
    """The fixed DVC output paths (metrics in git, recorded in dvc.lock) belong to params.yaml's
    pipeline: a run of a profile or another params file writes none of them."""
    from prefect import flow

    from tasks.evaluate import record_outputs_task

    metrics = tmp_path / "outputs" / "eval" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"candidate": {"ndcg_at_10": 0.436}}')
    cfg = load_config(overrides={"train": {"output_dir": str(tmp_path / "outputs" / "train")}})

    @flow
    def profile_run() -> dict:
        return record_outputs_task(cfg, tmp_path, train_loss=[(1, 2.0)], evaluation=None, stage_report=None, commit=False)

    assert profile_run() == {"paths": {}, "dvc_committed": False}
    assert metrics.read_text() == '{"candidate": {"ndcg_at_10": 0.436}}'
    assert not (tmp_path / "outputs" / "train").exists() and not (tmp_path / "outputs" / "gate").exists()
