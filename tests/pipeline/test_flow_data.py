"""The data_pipeline flow on a real Prefect engine, in a throwaway git + DVC project."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from project import make_project
from tether import versioning

pytestmark = pytest.mark.integration


def test_data_pipeline_flow_end_to_end(tmp_path: Path, prefect_harness) -> None:
    from flows.data_pipeline import data_pipeline

    root = make_project(tmp_path / "proj", overrides={"examples": {"token_stats": False}})
    result = data_pipeline(root=str(root), generate=True, version=True)

    # 1. raw data versioned: data.dvc records the hash the flow reports, and the remote has it
    assert result["data_hash"] == versioning.data_hash(root) != "untracked"
    assert "not in cache" not in versioning.dvc(root, "status", "-c", "data.dvc").stdout

    # 2. validation: rows in = kept + quarantined for every table
    for table, acc in result["validation"].accounting.items():
        assert acc["rows_in"] == acc["kept"] + acc["quarantined"], table

    # 3. prepare: chat examples for every split, each with a known item id
    processed = root / "data" / "processed"
    items = set(pd.read_parquet(processed / "items.parquet")["item_id"])
    for split in ("train", "validation", "test"):
        lines = (processed / f"{split}.jsonl").read_text().splitlines()
        assert lines, split
        ex = json.loads(lines[0])
        assert ex["split"] == split and ex["item_id"] in items
        assert [m["role"] for m in ex["prompt"]] == ["system", "user"]
        assert ex["completion"][0]["role"] == "assistant"
    stats = json.loads((processed / "stats.json").read_text())
    assert stats  # written

    # 4. the flow recorded its outputs in dvc.lock: `dvc repro` of the data stages has nothing to do
    #    (the model stages belong to the training flow; tests/pipeline/test_flow_training.py checks those)
    repro = versioning.dvc(root, "repro", "prepare").stdout
    assert "Running stage" not in repro, repro

    assert result["recorded_in_dvc_lock"]

    # 5. a run of another params file (a profile, say) must not record its outputs against
    #    params.yaml's values in dvc.lock: the lock stays byte for byte as it was
    lock_before = (root / "dvc.lock").read_text()
    other = root / "params-other.yaml"
    other.write_text((root / "params.yaml").read_text().replace("history_length: 5", "history_length: 4"))
    assert other.read_text() != (root / "params.yaml").read_text()
    elsewhere = data_pipeline(params=str(other), root=str(root), version=True)
    assert not elsewhere["recorded_in_dvc_lock"]
    assert (root / "dvc.lock").read_text() == lock_before
    data_pipeline(root=str(root), version=False)  # back to params.yaml's outputs for the checks below

    # 6. a re-run on unchanged data keeps the same data hash (deterministic generator)
    again = data_pipeline(root=str(root), generate=True, version=False)
    assert versioning.data_hash(root) == result["data_hash"]
    assert again["validation"].accounting == result["validation"].accounting
