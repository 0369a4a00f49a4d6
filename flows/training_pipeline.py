"""The whole pipeline as a Prefect flow: raw data to a trained, evaluated candidate."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.data_pipeline import data_pipeline
from tasks.model import fetch_model_task, train_task
from tether.config import REPO_ROOT, load_config


@flow(name="training_pipeline", log_prints=True)
def training_pipeline(
    profile: str | None = None,
    params: str | None = None,
    root: str | None = None,
    generate: bool = True,
    resume: bool = False,
) -> dict:
    """Raw data in, a fine-tuned LoRA candidate out.

    1. data pipeline (subflow): sample data, DVC versioning, GX validation, preparation
    2. materialize the base model (cached after the first conversion)
    3. fine-tune a LoRA adapter on the training examples, tracked in MLflow

    Args:
        profile: config profile (``cpu``, ``gpu``, ``test``); None = params.yaml alone.
        params: path of the params file (default ``<root>/params.yaml``).
        root: project directory (default: this repository).
        generate: write the deterministic sample data first.
        resume: continue training from the newest checkpoint.
    """
    project = Path(root) if root else REPO_ROOT
    params = params or str(project / "params.yaml")
    cfg = load_config(params, profile=profile)
    data = data_pipeline(profile=profile, params=params, root=str(project), generate=generate)
    base = fetch_model_task(cfg)
    trained = train_task(cfg, project, resume=resume)
    return {"data": data, "base_model": base, "train": trained}
