"""Trainer callbacks: the loss curves, real-token throughput, and forwarding each log.

Imports transformers at import time; :mod:`tether.model.train` loads this module only when it
trains, so reading examples or saving an adapter stays cheap to import.
"""

from __future__ import annotations

import time
from typing import Callable

from transformers import TrainerCallback


class StepMetrics(TrainerCallback):
    """Collects the loss curves and real-token throughput; forwards each log to MLflow / ``on_log``.

    Throughput counts non-padding tokens and only the time inside training steps (evaluation
    and checkpoint time excluded).

    Args:
        on_log: called with ``(step, metrics)`` at every log.
        mlflow_run_id: when given, the metrics are logged to this MLflow run.
    """

    def __init__(self, on_log: Callable[[int, dict[str, float]], None] | None = None, mlflow_run_id: str | None = None):
        self.on_log_fn = on_log
        self.mlflow_run_id = mlflow_run_id
        self.train_loss: list[tuple[int, float]] = []
        self.eval_loss: list[tuple[int, float]] = []
        self.step_seconds = 0.0
        self.step_tokens = 0
        self._t0: float | None = None
        self._seen = 0
        self._window = [0.0, 0]  # seconds, tokens since the last log

    @property
    def tokens_per_second(self) -> float:
        """Non-padding tokens per second of training step time (NaN before the first step)."""
        return self.step_tokens / self.step_seconds if self.step_seconds else float("nan")

    def on_train_begin(self, args, state, control, **kwargs):
        self._seen = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        dt = time.perf_counter() - (self._t0 or time.perf_counter())
        self._t0 = None
        tokens = state.num_input_tokens_seen - self._seen
        self._seen = state.num_input_tokens_seen
        self.step_seconds += dt
        self.step_tokens += tokens
        self._window[0] += dt
        self._window[1] += tokens

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = state.global_step
        metrics: dict[str, float] = {}
        if "loss" in logs:
            metrics["loss"] = float(logs["loss"])
            self.train_loss.append((step, metrics["loss"]))
            if self._window[0] > 0:
                metrics["tokens_per_second"] = self._window[1] / self._window[0]
            self._window = [0.0, 0]
        if "eval_loss" in logs:
            metrics["eval_loss"] = float(logs["eval_loss"])
            self.eval_loss.append((step, metrics["eval_loss"]))
        for key in ("learning_rate", "grad_norm"):
            if key in logs:
                metrics[key] = float(logs[key])
        if not metrics:
            return
        if self.mlflow_run_id:
            import mlflow

            from tether.interrupted import interrupts_deferred

            with interrupts_deferred():  # a signal mid-write would leave a sqlite store locked
                mlflow.MlflowClient().log_batch(
                    self.mlflow_run_id,
                    metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), step) for k, v in metrics.items()],
                )
        if self.on_log_fn:
            self.on_log_fn(step, metrics)
