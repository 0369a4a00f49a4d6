"""The data path as a Prefect flow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from tasks.data import generate_task, prepare_task, record_pipeline_task, validate_task, version_task
from tether.config import REPO_ROOT, TetherConfig, is_params_yaml_run, load_config


@flow(name="data_pipeline", log_prints=True)
def data_pipeline(
    profile: str | None = None,
    params: str | None = None,
    root: str | None = None,
    generate: bool = False,
    version: bool = True,
    cfg: TetherConfig | None = None,
) -> dict:
    """Raw files to validated, versioned, chat-formatted training examples.

    1. (optional) generate the deterministic sample data into ``data/raw``
    2. version ``data/raw`` with DVC (``data.dvc``) and push it to the default remote
    3. validate with Great Expectations; quarantine bad rows, stop on critical failures
    4. clean, split leave-last-out, build chat examples into ``data/processed``
    5. record the outputs in ``dvc.lock`` so ``dvc repro`` agrees they are up to date (only for a
       run of ``params.yaml`` itself: dvc.lock records params.yaml's values, so outputs made
       under a profile or another params file must not be recorded against them)

    Args:
        profile: config profile (``cpu``, ``gpu``, ``test``); None = params.yaml alone.
        params: path of the params file (default ``<root>/params.yaml``).
        root: project directory holding ``data/`` (default: this repository).
        generate: write the sample data first.
        version: record ``data/raw`` in ``data.dvc`` and push it.
        cfg: the config already loaded from ``params``/``profile`` (the training flow passes its
            own, so it is loaded once per run); None = load it here. ``profile`` and ``params``
            still say whether the run may record its outputs in ``dvc.lock``.
    """
    project = Path(root) if root else REPO_ROOT
    if cfg is None:
        cfg = load_config(params or project / "params.yaml", profile=profile)
    if generate:
        generate_task(cfg, project)
    data_hash = version_task(cfg, project) if version else "not versioned"
    validation = validate_task(cfg, project)
    prepared = prepare_task(cfg, project)
    recorded = version and is_params_yaml_run(profile, params, project)
    if recorded:
        record_pipeline_task(project)
    elif version:
        get_run_logger().info(
            "dvc.lock not updated: this run used %s, and dvc.lock records params.yaml's values",
            f"profile {profile!r}" if profile else f"params file {params}",
        )
    return {"data_hash": data_hash, "validation": validation, "prepare": prepared, "recorded_in_dvc_lock": recorded}
