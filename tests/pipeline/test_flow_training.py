"""The whole training_pipeline flow on a real Prefect engine, a real sqlite MLflow store, a tiny model.

Three flow runs on one project, each a promotion decision the registry must get right:

1. every gate passes: the candidate becomes @champion (loadable by ``models:/NAME@champion``);
2. every quality gate passes but the candidate does not beat the champion: the champion stays;
3. a fine-tune with a large learning rate wrecks general text: blocked by the drift gate alone.

The base model is a tiny random Llama first trained on the held-out corpus the drift gate reads,
so it knows that text (perplexity ~4) and a destructive fine-tune really raises its perplexity
(a random model's perplexity only falls with any training: no drift could ever be seen).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from project import EVAL, PERMISSIVE, make_project
from tiny import build_tiny_model, build_tiny_tokenizer, reset_mlflow_globals

pytestmark = pytest.mark.integration

CACHED_TASKS = ("fetch-base-model", "evaluate-base")


def pretrained_tiny_model_dir(path: Path, texts: list[str], steps: int = 150, seed: int = 0) -> Path:
    """The tiny Llama of tests/tiny.py, fully trained on ``texts`` (64-token windows, stride 32:
    what the perplexity metric reads), saved with its tokenizer."""
    import torch

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed).train()
    text = "\n\n".join(texts)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = torch.tensor([ids[i : i + 64] for i in range(0, len(ids) - 64, 32)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = windows[torch.randint(len(windows), (16,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def restore_mlflow():
    yield from reset_mlflow_globals()


def _set_params(root: Path, **sections) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _task_states(flow_run_id: str, names: tuple[str, ...] = CACHED_TASKS, timeout: float = 30.0) -> dict[str, str]:
    """Final state names of the flow run's task runs named ``names`` (task runs reach the API as events)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
            states = {n: r.state.name for r in runs for n in names
                      if r.name.rsplit("-", 1)[0] == n and r.state is not None and r.state.is_final()}
            if len(states) == len(names) or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def _mlflow_runs(cfg, root: Path, flow_run_id: str | None = None) -> list:
    from mlflow import MlflowClient

    from tether.tracking import tracking_uri

    client = MlflowClient(tracking_uri(cfg, root))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    query = f"tags.prefect_flow_run_id = '{flow_run_id}'" if flow_run_id else ""
    runs = client.search_runs([experiment.experiment_id], filter_string=query)
    # Top-level runs only: guarded selection logs each trial as a run nested in training's (checked below).
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _nested_runs(cfg, root: Path, parent_run_id: str) -> list:
    from mlflow import MlflowClient

    from tether.tracking import tracking_uri

    client = MlflowClient(tracking_uri(cfg, root))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def test_training_pipeline_promotes_keeps_and_blocks(
    tmp_path: Path, prefect_harness, monkeypatch, restore_mlflow, one_torch_thread,
) -> None:
    import mlflow
    import pandas as pd
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.training_pipeline import training_pipeline
    from tether.config import load_config
    from tether.registry import registry_status
    from tether.tracking import tracking_uri
    from tether.versioning import data_hash, dvc

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    # Guarded selection on (2 scales of the last weights): the registered version records its choice.
    root = make_project(tmp_path / "proj", overrides={"examples": {"token_stats": False}, "eval": EVAL, "gates": PERMISSIVE,
                                                      "train": {"selection": {"enabled": True}}})
    from tether.eval.panel import load_panel

    gate_docs = load_panel(load_config(root / "params.yaml"), root, "gate").sources[0].documents[:2]
    base = pretrained_tiny_model_dir(tmp_path / "tiny-model", [t for _, t in gate_docs])
    _set_params(root, model={"base_model": str(base)})
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    # A fresh Prefect result store: the cache keys are content hashes, the same in every test session.
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        # 1. every gate passes: registered and promoted to champion
        first = training_pipeline(root=str(root))
        assert not first["report"].blocking_failures, [g.reason for g in first["report"].blocking_failures]
        assert first["registry"]["decision"].promoted
        assert _task_states(first["flow_run_id"]) == {"fetch-base-model": "Completed", "evaluate-base": "Completed"}
        cfg = load_config(root / "params.yaml")
        status = registry_status(cfg, root=root)
        champion = status["champion"]["version"]
        assert champion == first["registry"]["version"] == status["challenger"]["version"]
        lineage = status["champion"]["lineage"]
        assert lineage["data_hash"] == data_hash(root) == yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
        assert lineage["git_commit"] == head
        assert lineage["config_hash"] == cfg.config_hash()
        chosen = first["train"].selection["chosen"]
        version_tags = mlflow.MlflowClient(tracking_uri(cfg, root)).get_model_version(cfg.registry.name, champion).tags
        assert version_tags["selection.scale"] == f"{chosen['scale']:g}" and version_tags["selection.trials"] == "2"
        assert "## Guarded selection" in Path(first["report_paths"]["markdown"]).read_text()

        # one MLflow run per flow run: training's run, which the gate and the registry log into
        runs = _mlflow_runs(cfg, root)
        assert [r.info.run_id for r in runs] == [first["train"].mlflow_run_id]
        assert runs[0].data.tags["prefect_flow_run_id"] == first["flow_run_id"]
        assert runs[0].data.tags["gate_verdict"] == "PROMOTE"
        # guarded selection's trials (2 scales of the last weights) are runs nested in it, one per trial
        assert len(_nested_runs(cfg, root, first["train"].mlflow_run_id)) == len(first["train"].selection["trials"]) == 2

        # the flow recorded the DVC stages' outputs: `dvc repro` has nothing to do
        assert first["outputs"]["dvc_committed"]
        metrics = json.loads((root / "outputs/eval/metrics.json").read_text())
        assert metrics["candidate"]["ndcg_at_10"] == round(first["evaluation"].metric("candidate", "ndcg_at_10"), 6)
        assert json.loads((root / "outputs/gate/verdict.json").read_text())["verdict"] == "PROMOTE"
        repro = dvc(root, "repro").stdout
        assert "Running stage" not in repro, repro

        # the champion serves: models:/NAME@champion loads and recommends
        uri = tracking_uri(cfg, root)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        served = mlflow.pyfunc.load_model(f"models:/{cfg.registry.name}@champion")
        test_row = json.loads((root / "data/processed/test.jsonl").read_text().splitlines()[0])
        titles = ["Silent Harbor Part 1", "Glass River Part 2", "Iron Meadow Part 3"]
        history = [line.removeprefix("- ") for line in test_row["prompt"][-1]["content"].splitlines() if line.startswith("- ")]
        ranked = served.predict(pd.DataFrame({"history": [history], "candidates": [titles]}), params={"top_k": 2})
        assert ranked["mode"][0] == "ranked" and len(ranked["recommendations"][0]) == 2
        assert set(ranked["recommendations"][0]) <= set(titles)
        generated = served.predict(pd.DataFrame({"history": [history], "candidates": [None]}), params={"max_new_tokens": 4})
        assert generated["mode"][0] == "generated" and len(generated["recommendations"][0]) == 1

        # 2. every quality gate passes, but the candidate does not beat the champion by the required margin
        _set_params(root, gates={"min_margin_vs_champion": 1.0})
        second = training_pipeline(root=str(root), generate=False)
        assert [(g.gate, g.metric) for g in second["report"].blocking_failures] == [("beats_champion", "ndcg_at_10")]
        assert not second["registry"]["decision"].promoted
        status = registry_status(load_config(root / "params.yaml"), root=root)
        assert status["champion"]["version"] == champion
        assert status["challenger"]["version"] == second["registry"]["version"] != champion
        # same base, data and protocol: Prefect skips the base model and its evaluation
        assert _task_states(second["flow_run_id"]) == {"fetch-base-model": "Cached", "evaluate-base": "Cached"}
        assert second["evaluation"].systems["base"] == first["evaluation"].systems["base"]
        # the DVC gate stage's outputs are what its own command computes (no champion), so they
        # differ from the flow's verdict here, and `dvc repro` still has nothing to do
        stage = json.loads((root / "outputs/gate/verdict.json").read_text())
        assert stage["verdict"] == "PROMOTE" and "beats_champion.ndcg_at_10" not in stage["gates"]
        assert "Running stage" not in dvc(root, "repro").stdout

        # 3. a destructive fine-tune: the drift gate (at its real default, 5%) blocks it, and only it
        _set_params(root, gates={"min_margin_vs_champion": -1.0, "max_ppl_drift": 0.05},
                    train={"learning_rate": 0.05, "max_steps": 12, "selection": {"enabled": False}})
        third = training_pipeline(root=str(root), generate=False)
        failures = third["report"].blocking_failures
        assert [(g.gate, g.metric) for g in failures] == [("perplexity_drift", "heldout_prose")], [g.reason for g in failures]
        drift = third["evaluation"].comparisons["drift_panel"]["heldout_prose"]["drift"]
        assert drift > 0.05 and failures[0].candidate / failures[0].reference - 1 == pytest.approx(drift)
        assert failures[0].threshold == 0.05
        status = registry_status(load_config(root / "params.yaml"), root=root)
        assert status["champion"]["version"] == champion
        assert status["challenger"]["version"] == third["registry"]["version"]
        assert status["challenger"]["blocked"] and "perplexity drift" in status["challenger"]["blocked_reason"]
        assert _task_states(third["flow_run_id"]) == {"fetch-base-model": "Cached", "evaluate-base": "Cached"}
        assert {r.data.tags["prefect_flow_run_id"] for r in _mlflow_runs(cfg, root)} == {
            first["flow_run_id"], second["flow_run_id"], third["flow_run_id"]}
        assert len(_mlflow_runs(cfg, root)) == 3

    # 4. the CLI shows the registry, and a manual override moves the champion with its reason recorded
    from typer.testing import CliRunner

    from tether.cli import app

    runner = CliRunner()
    params_opt = ["--params", str(root / "params.yaml")]
    shown = runner.invoke(app, ["status", *params_opt])
    assert shown.exit_code == 0, shown.output
    assert f"@champion: version {champion}" in shown.output and "blocked" in shown.output
    blocked = third["registry"]["version"]
    moved = runner.invoke(app, ["promote", blocked, "--reason", "reviewed by hand", "--user", "tester", *params_opt])
    assert moved.exit_code == 0, moved.output
    status = registry_status(load_config(root / "params.yaml"), root=root)
    assert status["champion"]["version"] == blocked
    assert status["champion"]["manual_reason"] == "reviewed by hand"
    assert status["champion"]["promoted_manually_by"] == "tester"
