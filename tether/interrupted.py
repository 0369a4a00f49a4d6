"""A killed flow run's MLflow runs end ``KILLED``, never ``RUNNING`` or ``FAILED``.

When ``tether run`` (or a worker's or ``tether serve``'s flow-run process) gets SIGTERM or SIGINT,
or its runner cancels it, the interrupt (``KeyboardInterrupt``, Prefect's ``TerminationSignal``:
never an ``Exception``) unwinds through the flow's body, where :func:`runs_killed_on_interrupt`
calls :func:`close_killed_runs`. (Not a Prefect ``on_crashed``/``on_cancellation`` hook: a runner
that cancels its runs on shutdown owns those hooks and exits before running them, measured with
``tether serve``.) MLflow's own context manager has by then ended the training run
``FAILED`` (an exception left its ``with`` block) or left it ``FINISHED`` (training was over and
evaluation was killed). Neither says what happened: the run that stands for the flow run, and any
nested run still open (a guarded-selection trial), become ``KILLED`` with the reason as a tag.

Which runs: those tagged ``prefect_flow_run_id`` with the flow run's id, and the run the training
stage recorded in its output directory (:data:`tether.model.train.RUN_MARKER`; training tags the
flow run only when it ends) if it started after the flow run did, so an earlier run's marker is
never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.config import TetherConfig

logger = logging.getLogger(__name__)

_INTERRUPTS = (signal.SIGTERM, signal.SIGINT)

KILLED_TAG = "tether.killed"  # why the run was ended KILLED: the flow run's crash message


def _marked_run(cfg: TetherConfig, root: Path) -> str | None:
    from tether.io import resolve
    from tether.model.train import RUN_MARKER

    marker = resolve(root, cfg.train.output_dir) / RUN_MARKER
    try:
        return str(json.loads(marker.read_text(encoding="utf-8"))["run_id"]) or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def close_killed_runs(cfg: TetherConfig, root: Path, flow_run_id: str, started_ms: int, reason: str) -> list[str]:
    """End the MLflow runs of a crashed flow run ``KILLED`` (and their open nested runs).

    Args:
        cfg: the flow run's config (tracking store, experiment, training output dir).
        root: the project root.
        flow_run_id: the Prefect flow run's id.
        started_ms: when the flow run started (epoch ms): a marked run older than this is not its.
        reason: why (the crash message), recorded in the ``tether.killed`` tag.

    Returns:
        The ids of the runs ended ``KILLED``.
    """
    from mlflow import MlflowClient

    from tether.tracking import tracking_uri

    client = MlflowClient(tracking_uri(cfg, root))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return []
    ids = [experiment.experiment_id]
    runs = {r.info.run_id: r for r in client.search_runs(ids, filter_string=f"tags.prefect_flow_run_id = '{flow_run_id}'")}
    marked = _marked_run(cfg, root)
    if marked and marked not in runs:
        try:
            run = client.get_run(marked)
        except Exception:  # noqa: BLE001 - another store or deleted: not this flow run's
            run = None
        if run is not None and run.info.start_time >= started_ms:
            runs[marked] = run
    killed: list[str] = []
    for run_id, run in runs.items():
        nested = client.search_runs(ids, filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
        # The flow run's own run is KILLED whatever it read; a finished nested trial stays finished.
        for r in [run, *(n for n in nested if n.info.status == "RUNNING")]:
            if r.info.status != "KILLED":
                client.set_tag(r.info.run_id, KILLED_TAG, reason[:500])
                client.set_terminated(r.info.run_id, status="KILLED")
                killed.append(r.info.run_id)
    if killed:
        logger.warning("flow run %s was killed (%s): MLflow runs %s marked KILLED", flow_run_id, reason, ", ".join(killed))
    return killed


@contextlib.contextmanager
def runs_killed_on_interrupt(cfg: TetherConfig, root: Path, flow_run_id: str) -> Iterator[None]:
    """Around a flow's body: an interrupt (not an ordinary error) ends its MLflow runs ``KILLED``.

    Args:
        cfg: the flow run's config.
        root: the project root.
        flow_run_id: the Prefect flow run's id ('' outside a flow run: nothing is tagged with it,
            only the training marker written after this started is closed).
    """
    started_ms = int(time.time() * 1000)
    try:
        yield
    except Exception:
        raise  # a failure: MLflow ends the run FAILED, which is what it is
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            close_killed_runs(cfg, root, flow_run_id, started_ms, f"interrupted by a signal ({reason})")
        except Exception:  # noqa: BLE001 - the interrupt must go on whatever the store says
            logger.exception("could not mark the interrupted flow run's MLflow runs KILLED")
        raise


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGTERM/SIGINT that arrive inside the block take effect when it ends, not in the middle.

    For writes to a sqlite MLflow store (a training step's metrics): an interrupt raised inside
    the write leaves its connection holding the database's write lock for as long as the
    exception's traceback lives, that is while the interrupt unwinds, so MLflow's own ``end_run``
    on the way out and :func:`close_killed_runs` both fail after sqlite's 20 s busy timeout
    (measured: ``database is locked``, and the run left RUNNING). Outside the main thread (where
    Python runs no signal handler) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.getsignal(s) for s in _INTERRUPTS}
    for s in _INTERRUPTS:
        signal.signal(s, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])  # now, to the handler that was in place (Prefect's, Python's)
