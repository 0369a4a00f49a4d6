"""The MLflow run that trains into an output dir: a marker file, and closing it after a crash.

A training process killed without ending its MLflow run (kill -9, OOM, a lost machine) leaves the
run RUNNING forever. The run id is recorded in ``<output_dir>/mlflow_run.json``; the ``--resume``
that continues in that folder marks the old run KILLED and links the two runs both ways.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

RUN_MARKER = "mlflow_run.json"  # in the output dir: the MLflow run that is training into it


def remember_run(output_dir: Path, run_id: str | None) -> None:
    """Record which MLflow run trains into ``output_dir``, so a resume can close it if it was killed."""
    if run_id is None:
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / RUN_MARKER).write_text(json.dumps({"run_id": run_id}) + "\n", encoding="utf-8")


def close_interrupted_run(output_dir: Path, new_run_id: str | None) -> None:
    """On ``--resume``: mark the run recorded in ``output_dir`` KILLED if it is still RUNNING.

    The active run gets ``resumes_run=<old id>``, the old one ``resumed_by=<new id>``. Nothing
    happens without a marker (an older output dir) or when the old run is not in this store.
    """
    import mlflow

    marker = Path(output_dir) / RUN_MARKER
    try:
        old_id = json.loads(marker.read_text(encoding="utf-8"))["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no marker (older output dir): nothing to close
    if not old_id or old_id == new_run_id:
        return
    client = mlflow.MlflowClient()
    try:
        old = client.get_run(old_id)
    except Exception as exc:  # noqa: BLE001 - another store, or deleted: nothing to close here
        log.info("interrupted run %s not found in this tracking store (%s); nothing to close", old_id, exc)
        return
    mlflow.set_tag("resumes_run", old_id)
    if old.info.status == "RUNNING":
        client.set_tag(old_id, "resumed_by", new_run_id or "")
        client.set_terminated(old_id, status="KILLED")
        log.info("interrupted MLflow run %s marked KILLED; resumed by %s", old_id, new_run_id)
