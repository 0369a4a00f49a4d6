"""The console of every ``tether`` command: one stream of whole lines, bars only on a terminal.

:func:`setup_console` is called once when a command starts; importing this module does nothing.

Why the console garbled before (measured on ``tether demo 2>&1 | tee``, 2026-12-01): tqdm bars
and log records shared stderr without knowing about each other. A bar's refresh is a carriage
return plus the bar and no newline, so the next record, written by a logging handler with its
own lock, began on the bar's line (``  4%|▍ | 2/50 [00:06<02:43] INFO prefect.task_runs: step 2``);
on a terminal the bar's next redraw then overwrote the start of that record. Off a terminal every
refresh stayed in the output (452 carriage returns in one demo log). The Trainer printed its own
dict of every logged step next to Tether's line, and MLflow, transformers and huggingface_hub
brought stderr handlers of their own (the hub's also propagates: its records printed twice).

What :func:`setup_console` sets up:

* one handler on the root logger (:class:`ConsoleHandler`). It writes each record as one whole
  write under tqdm's lock, with every bar cleared first and redrawn after, so a record never
  shares a line with a bar or with another record, whichever thread logs. The library handlers
  above are removed and their loggers propagate to it (MLflow by its own switch,
  ``MLFLOW_CONFIGURE_LOGGING``; Prefect keeps the root to us when it sees a handler there);
* progress bars (:func:`progress_bar`) only when stderr is a terminal; elsewhere a loop that runs
  longer than :data:`SUMMARY_SECONDS` logs one summary line per interval (transformers', the hub's
  and MLflow's own bars are switched off there by their environment switches);
* warnings a user can do nothing about, filtered once (:data:`IGNORED_WARNINGS`, each with why).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import IO, Any

SUMMARY_SECONDS = 30.0
"""Off a terminal, a loop logs one progress line per this many seconds (none if it ends sooner)."""

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"

# (category, regular expression the message starts with, why a user can do nothing about it).
IGNORED_WARNINGS: list[tuple[type[Warning], str, str]] = [
    (
        FutureWarning,
        r"`is_gradient_checkpointing` is deprecated",
        "peft 0.21.2 reads transformers' old attribute name whenever it wraps a model (every fine-tune "
        "and adapter load); only a peft release removes it, and the attribute still works in transformers 5.x",
    ),
    (
        UserWarning,
        r"(\x1b\[\d+m)?Add type hints to the `predict` method",
        "MLflow's hint at every registration: Tether logs its model with an explicit signature "
        "(tether.serving.signature), so there is nothing left to infer from type hints",
    ),
]

_progress_log = logging.getLogger("tether.progress")
_settings: dict[str, float] = {"summary_seconds": SUMMARY_SECONDS}


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ConsoleHandler(logging.Handler):
    """The one console handler: each record is one whole write, serialised with tqdm's bars.

    The stream is looked up at every record (``sys.stderr`` by default), so a caller that swaps
    ``sys.stderr`` (a test runner, typer's CliRunner) gets the records instead of a closed buffer.
    Serialisation uses tqdm's lock alone, not the handler's own: a progress summary is logged from
    inside a bar's refresh, which already holds tqdm's (re-entrant) lock, and two locks taken in
    opposite orders by two threads would deadlock.
    """

    def __init__(self, stream_name: str = "stderr", level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.stream_name = stream_name

    @property
    def stream(self) -> IO[str]:
        return getattr(sys, self.stream_name)

    def handle(self, record: logging.LogRecord) -> bool:  # noqa: D102 - logging.Handler.handle, minus its lock
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may return a replacement record
            record = rv
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.std import tqdm

        try:
            line = self.format(record) + "\n"
            stream = self.stream
            # Clears the bars on this stream, writes, redraws them: the record gets a line of its own.
            with tqdm.external_write_mode(file=stream):
                stream.write(line)
                stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL name: message``. A Prefect run's records name their task or flow instead of
    ``prefect.task_runs`` (Prefect puts ``task_name`` / ``flow_name`` on them); a captured warning
    is one line."""

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_name", None) or getattr(record, "flow_name", None)
        if run and record.name in ("prefect.task_runs", "prefect.flow_runs"):
            record = logging.makeLogRecord({**record.__dict__, "name": str(run)})
        if record.name == "py.warnings":
            # "file:line: Category: message", without the quoted source line and trailing newline
            # that warnings.formatwarning adds.
            first = record.getMessage().strip().splitlines()[0]
            record = logging.makeLogRecord({**record.__dict__, "msg": first, "args": None})
        return super().format(record).rstrip()


def _not_prefect_notice(record: logging.LogRecord) -> bool:
    """Drop Prefect's top-level INFO notices (the ``prefect`` logger itself: "Starting temporary
    server ... / See https://docs...", "Stopping temporary server"). The stop notice comes from an
    atexit hook after the command's last screen; ``tether run`` says itself when a temporary
    server is used. Its warnings and every ``prefect.*`` logger (flow and task runs) still show."""
    return not (record.name == "prefect" and record.levelno < logging.WARNING)


def _not_ignored_warning(record: logging.LogRecord) -> bool:
    """Drop a captured warning that :data:`IGNORED_WARNINGS` names. The warnings filters set up in
    :func:`setup_console` are the first line; this one is for libraries that override them: MLflow
    wraps its type-hint check in ``catch_warnings`` + ``simplefilter("once", UserWarning)``, which
    sits in front of every other filter while it runs."""
    if record.name != "py.warnings":
        return True
    text = record.getMessage()
    return not any(
        re.search(rf": {category.__name__}: {message}", text, flags=re.IGNORECASE)
        for category, message, _why in IGNORED_WARNINGS
    )


def _adopt_library_handlers() -> None:
    """Remove the stderr/stdout handlers that libraries attach to their own loggers and let those
    loggers propagate to the root's :class:`ConsoleHandler` (their levels stay as they are)."""
    std = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        if not isinstance(logger, logging.Logger):
            continue
        own = [h for h in logger.handlers if type(h) is logging.StreamHandler and h.stream in std]
        for handler in own:
            logger.removeHandler(handler)
        if own:
            logger.propagate = True


def setup_console(*, level: int = logging.INFO, summary_seconds: float = SUMMARY_SECONDS) -> None:
    """Set up this process's console: one log handler, bars only on a terminal, warnings filtered.

    Idempotent: a second call updates the settings and adds nothing. Call it when a command
    starts, before engines (Prefect, MLflow, transformers) are imported where possible.

    Args:
        level: the level of Tether's own loggers (``tether.*``); other libraries show warnings only.
        summary_seconds: off a terminal, seconds between two summary lines of a running loop.

    Raises:
        ValueError: ``summary_seconds`` is not positive.
    """
    if summary_seconds <= 0:
        raise ValueError(f"summary_seconds must be > 0 (got {summary_seconds}): seconds between two progress lines")
    _settings["summary_seconds"] = float(summary_seconds)
    # MLflow attaches its own stderr handler at import unless told not to; its records then reach ours.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if not is_terminal():
        # The libraries' own bars, each by its own switch: transformers' and huggingface_hub's
        # ("Loading weights", read at import) and MLflow's ("Downloading artifacts", at each transfer).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from tqdm.std import tqdm

    # Create tqdm's lock on the base class before any subclass (tqdm.auto's) asks for one: a
    # subclass asking first would get a lock of its own, and bars and records would not share it.
    tqdm.get_lock()

    root = logging.getLogger()
    for handler in list(root.handlers):
        # Prefect's console handler on the root (if Prefect was imported before us) would print
        # every record a second time.
        if type(handler).__name__ == "PrefectConsoleHandler":
            root.removeHandler(handler)
    handler = next((h for h in root.handlers if isinstance(h, ConsoleHandler)), None)
    if handler is None:
        handler = ConsoleHandler()
        handler.setFormatter(_ConsoleFormatter(FORMAT, DATE_FORMAT))
        handler.addFilter(_not_prefect_notice)
        handler.addFilter(_not_ignored_warning)
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("tether").setLevel(level)
    logging.captureWarnings(True)  # a warning is a record like any other: one line through the handler
    for category, message, _why in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    try:
        # transformers keeps a stderr handler of its own and does not propagate; importing its
        # logging module costs ~0.5 s and every training or evaluation command imports it anyway.
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    else:
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    _adopt_library_handlers()


def format_step(step: int, metrics: Mapping[str, float]) -> str:
    """One training log as one line: ``step 12: loss 2.3327, lr 4.44e-05, grad_norm 0.504, 422 tokens/s``."""
    parts: list[str] = []
    for key, value in metrics.items():
        if key == "tokens_per_second":
            parts.append(f"{value:.0f} tokens/s")
        elif key == "learning_rate":
            parts.append(f"lr {value:.3g}")
        elif key in ("loss", "eval_loss"):
            parts.append(f"{key} {value:.4f}")
        else:
            parts.append(f"{key} {value:.4g}")
    return f"step {step}: " + ", ".join(parts)


# tqdm's own fields: "base: scoring: 40/80 user (50%), 00:32 elapsed, 00:31 left, 1.27 user/s, candidates=800"
_SUMMARY_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, {remaining} left, {rate_fmt}{postfix}"


class _Discard:
    """Where a summary bar's own drawing goes: nowhere (its lines are log records)."""

    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        return None


def _summary_bar(*args: Any, **kwargs: Any) -> Any:
    """A tqdm that logs one summary line per interval instead of drawing (the pattern of
    tqdm.contrib.telegram / slack: ``display`` overridden, tqdm's rate-limiting kept)."""
    from tqdm.std import tqdm

    seconds = _settings["summary_seconds"]

    class SummaryBar(tqdm):
        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            # close() sets disable before its final display (the stage's own log line reports the
            # end), and set_postfix() refreshes at every call: hence the explicit interval here.
            now = self._time()
            if msg is None and not self.disable and now - getattr(self, "_summarised", self.start_t) >= seconds:
                self._summarised = now
                fmt = {**self.format_dict, "bar_format": _SUMMARY_FORMAT}
                _progress_log.info("%s", self.format_meter(**fmt))
            return True

    kwargs.update(file=_Discard(), mininterval=seconds, maxinterval=seconds, delay=seconds, dynamic_ncols=False)
    return SummaryBar(*args, **kwargs)


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A progress bar for a loop: tqdm's on a terminal, else a summary line every ``summary_seconds``.

    Takes tqdm's arguments (``total``, ``desc``, ``unit``, ``disable``, ``leave``, ...) and returns
    a tqdm object either way, so ``update``, ``set_postfix`` and ``close`` work the same.
    """
    if is_terminal(kwargs.get("file")):
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    kwargs.pop("file", None)
    return _summary_bar(iterable, **kwargs)

