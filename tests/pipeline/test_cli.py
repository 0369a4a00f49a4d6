"""The `tether` command line, end to end on a throwaway project with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from project import make_project
from tiny import build_tiny_model_dir

pytestmark = pytest.mark.integration


def test_help_explains_every_command() -> None:
    from tether.cli import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in ("data", "model", "train", "evaluate", "gate", "run", "demo", "serve"):
        assert command in top.output
    assert "--resume" in runner.invoke(app, ["train", "--help"]).output
    for command in ("run", "demo"):  # the same pipeline, the same options
        shown = runner.invoke(app, [command, "--help"]).output
        for option in ("--profile", "--params", "--resume", "--no-generate"):
            assert option in shown, (command, option)
    serve = runner.invoke(app, ["serve", "--help"]).output
    assert "prefect.yaml" in serve and "PREFECT_API_URL" in serve and "Ctrl-C" in serve
    assert "--no-fail" in runner.invoke(app, ["gate", "--help"]).output


def test_run_and_demo_call_the_flow_with_the_same_arguments(monkeypatch) -> None:
    """`tether demo` is `tether run`: both hand --profile/--params/--resume/--no-generate to the flow."""
    import flows.training_pipeline as pipeline
    from tether.cli import app

    calls = []

    def fake_flow(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop here: only the arguments matter")

    monkeypatch.setattr(pipeline, "training_pipeline", fake_flow)
    runner = CliRunner()
    for command in ("run", "demo"):
        result = runner.invoke(app, [command, "--profile", "test", "--resume", "--no-generate"])
        assert isinstance(result.exception, RuntimeError), result.output
    assert len(calls) == 2 and calls[0] == calls[1]
    assert calls[0]["profile"] == "test" and calls[0]["resume"] is True and calls[0]["generate"] is False


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    from tether.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("clean:\n  k_core_usrs: 3\n")
    result = CliRunner().invoke(app, ["data", "validate", "--params", str(params)])
    assert result.exit_code == 2
    assert "clean.k_core_usrs" in result.output and "unknown setting" in result.output


def test_data_train_evaluate_gate(tmp_path: Path, monkeypatch) -> None:
    from tether.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    tiny = build_tiny_model_dir(tmp_path / "tiny-model")
    root = make_project(tmp_path / "proj", overrides={
        "model": {"base_model": str(tiny)},
        "examples": {"token_stats": False},
        "eval": {"n_users": 5, "n_negatives": 4, "perplexity": {"window": 64, "stride": 32},
                 "generation": {"n_prompts": 2, "max_new_tokens": 4, "valid_item_users": 2,
                                "valid_item_max_new_tokens": 4}},
        "gates": {"valid_item_rate_floor": 1.0},  # a tiny random model never names a title: blocked
    })
    params = ["--params", str(root / "params.yaml")]
    runner = CliRunner()
    for args in (["data", "generate"], ["data", "validate"], ["data", "prepare"], ["train"], ["evaluate"]):
        result = runner.invoke(app, [*args, *params])
        assert result.exit_code == 0, (args, result.output)
    assert "rows_in" in runner.invoke(app, ["data", "validate", *params]).output

    evaluation = json.loads((root / "outputs" / "eval" / "evaluation.json").read_text())
    assert {"candidate", "base", "popularity"} <= set(evaluation["systems"])
    # the DVC metrics and plots beside it: small, no absolute paths
    metrics = json.loads((root / "outputs" / "eval" / "metrics.json").read_text())
    assert metrics["candidate"]["ndcg_at_10"] == round(evaluation["systems"]["candidate"]["ndcg_at_10"], 6)
    assert str(tmp_path) not in (root / "outputs" / "eval" / "metrics.json").read_text()
    assert (root / "outputs" / "eval" / "systems.csv").read_text().splitlines()[0].startswith("system,")
    assert (root / "outputs" / "test-train" / "loss.csv").read_text().startswith("step,train_loss\n")

    gate = runner.invoke(app, ["gate", *params])
    assert gate.exit_code == 1  # a blocking gate failed: scripts can stop on it
    assert "BLOCKED" in gate.output and "valid_item_rate" in gate.output
    assert (root / "outputs" / "eval" / "gate_report.md").exists()

    # --no-fail (dvc repro's gate stage): the same verdict, recorded in verdict.json, exit 0
    recorded = runner.invoke(app, ["gate", "--no-fail", "--out", str(root / "outputs" / "gate"), *params])
    assert recorded.exit_code == 0, recorded.output
    verdict = json.loads((root / "outputs" / "gate" / "verdict.json").read_text())
    assert verdict["verdict"] == "BLOCKED" and verdict["gates"]["floor.valid_item_rate"] is False
    assert (root / "outputs" / "gate" / "gate_report.json").exists()
