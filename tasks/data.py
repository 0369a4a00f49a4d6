"""Data-path tasks: generate, version, validate, prepare."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from tether import versioning
from tether.config import TetherConfig
from tether.data.generate import generate_sample_data
from tether.data.validate import run_validation
from tether.stages import prepare_data


@task(name="generate-sample-data")
def generate_task(cfg: TetherConfig, root: Path):
    """Write the deterministic sample data into ``paths.raw_dir``."""
    summary = generate_sample_data(cfg.generate, cfg.seed, cfg.paths.resolved(root).raw_dir)
    get_run_logger().info("sample data: %s", summary)
    return summary


@task(name="version-raw-data", retries=2, retry_delay_seconds=2)
def version_task(cfg: TetherConfig, root: Path, push: bool = True) -> str:
    """Record ``data/raw`` in ``data.dvc`` and push it to the default DVC remote."""
    digest, pushed = versioning.version_raw_data(root, cfg.paths.resolved(root).raw_dir, push_remote=push)
    if pushed:
        get_run_logger().info("dvc push: %s", pushed)
    get_run_logger().info("data.dvc md5 %s", digest)
    return digest


@task(name="validate")
def validate_task(cfg: TetherConfig, root: Path):
    """Great Expectations validation; quarantines bad rows, stops on critical failures."""
    summary = run_validation(cfg, root)
    rows = [{"table": t, **acc} for t, acc in summary.accounting.items()]
    create_table_artifact(key="row-accounting-validate", table=rows, description="Rows in = kept + quarantined")
    get_run_logger().info("validation: %s", summary.accounting)
    return summary


@task(name="prepare")
def prepare_task(cfg: TetherConfig, root: Path):
    """Clean, split leave-last-out and write chat-formatted examples."""
    summary = prepare_data(cfg, root)
    get_run_logger().info("prepare: %s", summary)
    return summary


@task(name="record-pipeline")
def record_pipeline_task(root: Path) -> bool:
    """Record the flow's outputs in dvc.lock so `dvc repro` sees the same inputs as up to date."""
    # The data stages only: the model stages' outputs do not exist yet at this point of the flow.
    return versioning.record_stages(root, "validate", "prepare")
