"""The words a gate's verdict is written with in MLflow tags: one vocabulary for runs and model versions.

A check (one :class:`~tether.eval.gates.GateResult`) is tagged ``gate.<gate>.<metric>`` with
:func:`check_tag`: ``passed``, ``failed`` (it blocks promotion) or ``failed (advisory)`` (recorded,
never blocking). A gate (all its checks) is tagged ``gate.<gate>`` on a version with
:func:`gate_tag`: ``passed``, ``failed`` (a blocking check failed) or ``passed (advisory failure)``.
A registered version's tags (:func:`tether.registry.verdict_tags`) and the training run's
``gate.<gate>.<metric>`` tags (:func:`tether.eval.gating.log_to_mlflow`) take their values from
here, so a reviewer reads the same words in the run and in the version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.eval.gates import GateResult

PASSED = "passed"
FAILED = "failed"
FAILED_ADVISORY = "failed (advisory)"
PASSED_ADVISORY_FAILURE = "passed (advisory failure)"


def check_tag(result: GateResult) -> str:
    """The value of the ``gate.<gate>.<metric>`` tag of one check.

    Args:
        result: the check.

    Returns:
        ``passed``, ``failed`` (blocking) or ``failed (advisory)``.
    """
    if result.passed:
        return PASSED
    return FAILED if result.blocking else FAILED_ADVISORY


def gate_tag(results: Sequence[GateResult]) -> str:
    """The value of the ``gate.<gate>`` tag: all the checks of one gate together.

    Args:
        results: the checks of one gate.

    Returns:
        ``failed`` if a blocking check failed, else ``passed`` if all passed, else
        ``passed (advisory failure)``.
    """
    if any(r.blocking and not r.passed for r in results):
        return FAILED
    return PASSED if all(r.passed for r in results) else PASSED_ADVISORY_FAILURE
