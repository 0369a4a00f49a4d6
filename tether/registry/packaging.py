"""Building and logging the self-contained served model of a candidate into its MLflow run.

The adapter is logged as a models-from-code pyfunc (:class:`tether.serving.TetherRecommender`,
entry file :mod:`tether.serving_entry`) that carries its code (the ``tether`` package) and exact
pip requirements (:func:`tether.serving_package.serving_requirements`, derived from
pyproject.toml), so it serves where Tether is not installed. Its artifacts: the adapter
directory, the model record (a base-model reference that resolves on another machine and the
weights hash, :mod:`tether.serving_base`; a local base directory only when it is logged with the
version or reachable), the catalog when prompts carry genres, and the full gate report. The
stored adapter is downloaded back and its bytes compared with the source before the logged model
is handed on (:func:`tether.registry.verify.verify_stored_adapter`); a mismatch deletes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tether.config import TetherConfig
from tether.registry.verify import verify_stored_adapter
from tether.secrets import redact, redact_tree

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tether.model.base import ResolvedModel

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "recommender"  # the logged model's name inside the run


@dataclass(frozen=True)
class LoggedModel:
    """A served model logged into a run (and verified).

    Attributes:
        model_uri: ``models:/m-...``, the source of the version.
        model_id: the logged model's id.
        base_model_delivery: how it carries its base model (``embedded``, ``hub``, ``logged``, ``reference``...).
    """

    model_uri: str
    model_id: str
    base_model_delivery: str


@contextlib.contextmanager
def _in_run(run_id: str) -> Iterator[None]:
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        yield


def _catalog(cfg: TetherConfig, root: Path) -> dict[str, str] | None:
    """Title -> genres, when prompts carry genres and the processed catalog exists."""
    if not cfg.examples.include_genres:
        return None
    path = cfg.paths.resolved(root).processed_dir / "items.parquet"
    if not path.exists():
        log.warning("examples.include_genres is set but %s is missing: served prompts will lack genres", path)
        return None
    import pandas as pd

    items = pd.read_parquet(path, columns=["title", "genres"])
    return dict(zip(items["title"].astype(str), items["genres"].fillna("").astype(str)))


def log_served_model(
    cfg: TetherConfig,
    root: Path,
    client: MlflowClient,
    *,
    run_id: str,
    adapter_dir: Path,
    adapter_digest: str,
    resolved_base: ResolvedModel,
    gate_report_md: str,
    requirements: Sequence[str],
    base_model_delivery: str | None,
) -> LoggedModel:
    """Log the candidate's served model into its run and check the stored adapter (see the module docstring).

    Args:
        cfg: the config (``examples``, ``paths``).
        root: the project root (the processed catalog).
        client: the store's client.
        run_id: the run the model is logged into.
        adapter_dir: the checked adapter directory.
        adapter_digest: its :func:`tether.registry.verify.dir_digest`.
        resolved_base: the exact base model.
        gate_report_md: the gate report, logged as ``gate_report.md`` (redacted).
        requirements: the pip requirements (:func:`tether.serving_package.serving_requirements`).
        base_model_delivery: how the base model travels (:func:`tether.serving_base.plan_base`).

    Returns:
        The logged model.

    Raises:
        tether.serving_base.BaseModelUnreachableError: the base model would not resolve where served.
        RegistryError: the stored adapter differs from the source (the logged model is deleted).
    """
    import mlflow

    from tether.serving import (
        ADAPTER_ARTIFACT, CATALOG_ARTIFACT, RECORD_ARTIFACT, default_model_config, input_example, model_record,
        signature,
    )
    from tether.serving_base import BASE_ARTIFACT, plan_base
    from tether.serving_package import ENTRY_FILE, stage_code

    with tempfile.TemporaryDirectory(prefix="tether-register-") as tmp:
        tmp_path = Path(tmp)
        base_plan = plan_base(resolved_base, base_model_delivery, client.get_run(run_id).info.artifact_uri, tmp_path)
        record = redact_tree(model_record(cfg, base_plan.entry))
        (tmp_path / "tether_model.json").write_text(json.dumps(record, indent=2))
        (tmp_path / "gate_report.md").write_text(redact(gate_report_md), encoding="utf-8")
        artifacts = {
            ADAPTER_ARTIFACT: str(adapter_dir),
            RECORD_ARTIFACT: str(tmp_path / "tether_model.json"),
            "gate_report": str(tmp_path / "gate_report.md"),
        }
        catalog = _catalog(cfg, root)
        if catalog is not None:
            (tmp_path / "catalog.json").write_text(json.dumps(catalog))
            artifacts[CATALOG_ARTIFACT] = str(tmp_path / "catalog.json")
        if base_plan.log_dir is not None:
            artifacts[BASE_ARTIFACT] = str(base_plan.log_dir)
        with _in_run(run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=str(ENTRY_FILE),  # models-from-code: no pickle
                code_paths=[str(stage_code(tmp_path / "code"))],
                artifacts=artifacts,
                signature=signature(),
                input_example=input_example(),
                pip_requirements=list(requirements),
                model_config=default_model_config(),
                metadata={
                    "base_model": resolved_base.name,
                    "base_model_hash": resolved_base.content_hash,
                    "base_model_delivery": base_plan.entry["delivery"],
                },
            )
        try:
            verify_stored_adapter(info.model_uri, adapter_digest, tmp_path / "check")
        except BaseException:
            with contextlib.suppress(Exception):
                client.delete_logged_model(info.model_id)
            raise
    return LoggedModel(info.model_uri, info.model_id, base_plan.entry["delivery"])
