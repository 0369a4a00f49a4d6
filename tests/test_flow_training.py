"""The whole training_pipeline flow on a real Prefect engine, a real sqlite MLflow store, a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from project import make_project
from tiny import build_tiny_model_dir

pytestmark = pytest.mark.integration

# A tiny random model cannot beat popularity or name catalog titles, so the gates are set so
# that the first run passes and the second is blocked by the valid-item floor alone.
PERMISSIVE = {
    "max_ppl_drift": 100.0, "min_margin_vs_popularity": -1.0, "min_margin_vs_base": -1.0,
    "min_margin_vs_champion": -1.0, "valid_item_rate_floor": 0.0,
    "health_tolerances": {"distinct_1": 1.0, "distinct_2": 1.0, "repeated_4gram_rate": 1.0, "empty_rate": 1.0,
                          "length_ratio": [0.0, 1000.0]},
}


def test_training_pipeline_promotes_then_blocks(tmp_path: Path, prefect_harness, monkeypatch) -> None:
    from flows.training_pipeline import training_pipeline
    from tether.config import load_config
    from tether.registry import registry_status
    from tether.versioning import data_hash

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    tiny = build_tiny_model_dir(tmp_path / "tiny-model")
    overrides = {
        "model": {"base_model": str(tiny)},
        "examples": {"token_stats": False},
        "eval": {"n_users": 6, "n_negatives": 5, "perplexity": {"max_documents": 2, "window": 64, "stride": 32},
                 "generation": {"n_prompts": 2, "max_new_tokens": 4, "valid_item_users": 3,
                                "valid_item_max_new_tokens": 4}},
        "gates": PERMISSIVE,
    }
    root = make_project(tmp_path / "proj", overrides=overrides)

    # 1. every gate passes: the candidate is registered and becomes champion
    first = training_pipeline(root=str(root))
    assert not first["report"].blocking_failures, [g.reason for g in first["report"].blocking_failures]
    assert {"candidate", "base", "popularity"} <= set(first["report"].metrics)
    assert first["registry"]["decision"].promoted
    cfg = load_config(root / "params.yaml")
    status = registry_status(cfg, root=root)
    champion = status["champion"]["version"]
    assert champion == first["registry"]["version"] == status["challenger"]["version"]
    assert status["champion"]["lineage"]["data_hash"] == data_hash(root)
    assert status["champion"]["lineage"]["config_hash"] == cfg.config_hash()
    assert Path(first["report_paths"]["markdown"]).read_text().count("|") > 10

    # 2. a blocking gate fails: a new challenger, tagged blocked with the reason; champion unchanged
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gates"]["valid_item_rate_floor"] = 1.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = training_pipeline(root=str(root), generate=False)
    assert [g.metric for g in second["report"].blocking_failures] == ["valid_item_rate"]
    status = registry_status(load_config(root / "params.yaml"), root=root)
    assert status["champion"]["version"] == champion
    assert status["challenger"]["version"] == second["registry"]["version"] != champion
    assert status["challenger"]["blocked"] and "valid" in status["challenger"]["blocked_reason"]

    # 3. the CLI shows the registry, and a manual override moves the champion with its reason recorded
    from typer.testing import CliRunner

    from tether.cli import app

    runner = CliRunner()
    params_opt = ["--params", str(root / "params.yaml")]
    shown = runner.invoke(app, ["status", *params_opt])
    assert shown.exit_code == 0, shown.output
    assert f"@champion: version {champion}" in shown.output and "blocked" in shown.output
    blocked = second["registry"]["version"]
    moved = runner.invoke(app, ["promote", blocked, "--reason", "reviewed by hand", "--user", "tester", *params_opt])
    assert moved.exit_code == 0, moved.output
    status = registry_status(load_config(root / "params.yaml"), root=root)
    assert status["champion"]["version"] == blocked
    assert status["champion"]["manual_reason"] == "reviewed by hand"
    assert status["champion"]["promoted_manually_by"] == "tester"
