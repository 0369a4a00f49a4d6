"""MLflow tracking: where runs go, and the lineage every run carries.

Nothing here runs at import: :func:`setup_tracking` is called when a command or flow starts.
Secrets never reach MLflow: parameters come from the config only, never from the environment,
and what is logged passes through :mod:`tether.secrets` (a tracking URI may hold a password).
A tracking server that cannot be reached raises :class:`TrackingUnavailableError`: one line
naming the server (password masked) and what to do, instead of a page of HTTP retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlparse

from tether.config import TetherConfig
from tether.secrets import add_secret, install_log_redaction, redact, redact_uri, uri_password
from tether.versioning import data_hash

log = logging.getLogger(__name__)

# MLflow rejects parameter values longer than this (6000 in MLflow 3); longer ones are cut.
_MAX_PARAM_CHARS = 6000


def tracking_uri(cfg: TetherConfig, root: Path) -> str:
    """The tracking URI: ``$MLFLOW_TRACKING_URI``, else ``cfg.tracking.uri``, else a sqlite file under ``root``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return f"sqlite:///{(Path(root).resolve() / 'mlflow' / 'mlflow.db').as_posix()}"


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server (or its artifact store) could not be reached; the message says what to do.

    Attributes:
        reason: what the connection did (``connection refused``, ``connection aborted``, ...).
        answered: whether the server's health endpoint answered right after (up, but it dropped the request).
    """

    def __init__(self, message: str, reason: str = "", answered: bool = False) -> None:
        super().__init__(message)
        self.reason, self.answered = reason, answered


# How requests / urllib3 / MLflow's REST client say "nobody answered". Not "Max retries exceeded":
# urllib3 says that for repeated HTTP 500s too, and a server that answers 500 is not unreachable.
_UNREACHABLE = (
    "Connection refused", "NewConnectionError", "Connection aborted",
    "RemoteDisconnected", "Connection reset", "timeout exception", "Read timed out", "ConnectTimeout",
    "Name or service not known", "Temporary failure in name resolution",
)


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) means the server did not answer at all."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (ConnectionError, TimeoutError)) or any(m in str(exc) for m in _UNREACHABLE):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in _UNREACHABLE:
        if marker in text:
            return marker.lower()
    return type(exc).__name__


@contextlib.contextmanager
def tracking_errors(uri: str, action: str, advice: str = "") -> Iterator[None]:
    """Turn "the tracking server did not answer" into one clear :class:`TrackingUnavailableError`.

    The original exception (MLflow quotes the full request URL, password included, and urllib3's
    retry chain) is dropped, not chained: the message names the server with its password masked.

    Args:
        uri: the tracking URI in use.
        action: what was being done (``"register the candidate"``).
        advice: what the state is and what to do, appended to the message.
    """
    try:
        yield
    except TrackingUnavailableError as exc:
        if not advice:
            raise
        # A nested call failed first: say what *this* operation could not do, and its state.
        raise _unavailable(uri, action, advice, exc.reason, exc.answered) from None
    except Exception as exc:
        if urlparse(uri).scheme not in ("http", "https") or not is_unreachable(exc):
            raise
        raise _unavailable(uri, action, advice, _reason(exc), _answers(uri)) from None


def _unavailable(uri: str, action: str, advice: str, reason: str, answered: bool) -> TrackingUnavailableError:
    if answered:
        # It is up but dropped this request (e.g. it failed writing to its artifact store and closed
        # the connection mid-upload): not "start the server", but "read its log".
        message = (
            f"could not {action}: the MLflow tracking server {redact_uri(uri)} answers but dropped the request "
            f"({reason}); its artifact store may be unwritable or full: see the server's log. "
            + (advice or "Re-run once it is fixed.")
        )
    else:
        message = (
            f"could not {action}: the MLflow tracking server {redact_uri(uri)} is unreachable ({reason}). "
            + (advice or "Start the server (bash mlflow/server.sh, or your deployment) and re-run.")
        )
    return TrackingUnavailableError(redact(message), reason=reason, answered=answered)


def _answers(uri: str, timeout: float = 3.0) -> bool:
    """Whether the server's ``/health`` endpoint answers 200 right now."""
    import urllib.request

    parsed = urlparse(uri)
    host = parsed.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parsed.port:
        netloc += f":{parsed.port}"
    try:
        with urllib.request.urlopen(f"{parsed.scheme}://{netloc}{parsed.path.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure means "does not answer"
        return False


def is_local_store(uri: str) -> bool:
    """Whether a tracking URI is a store on this machine (a path, ``file:`` or ``sqlite:``), not a server."""
    return urlparse(uri).scheme in ("", "file", "sqlite")


def tag_run(cfg: TetherConfig, root: Path, run_id: str, tags: Mapping[str, str]) -> None:
    """Set tags on an MLflow run of the configured store (e.g. the Prefect flow run that made it)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(cfg, root))
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def setup_tracking(cfg: TetherConfig, root: Path) -> str:
    """Point MLflow at the configured store and make sure the experiment exists.

    For a local store (sqlite or a file path) the experiment is created with an explicit
    ``artifact_location`` under ``<root>/mlflow/artifacts``, so artifacts never land in the
    current working directory. A remote server keeps its own artifact root.

    Args:
        cfg: the config (``cfg.tracking``).
        root: the project root.

    Returns:
        The tracking URI in use.
    """
    import mlflow

    uri = tracking_uri(cfg, root)
    # From here on MLflow quotes this URI in its messages ("View run ... at <uri>"): mask its password.
    password = uri_password(uri)
    if password:
        add_secret(password)
        add_secret(unquote(password))
        # MLflow writes "View run ... at: <uri>/#/..." straight to stdout (not through logging):
        # with a password in the URI that line is turned off; the run is logged here, redacted.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        log.info("MLflow tracking at %s", redact_uri(uri))
    install_log_redaction()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # MLflow 3 also exports the URI to MLFLOW_TRACKING_URI. Keep the environment as the user
    # set it, or the next setup_tracking (another project root, another test) would be pinned
    # to this store by tracking_uri()'s "environment wins" rule.
    if user_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_env
    name = cfg.tracking.experiment
    client = mlflow.MlflowClient(tracking_uri=uri)
    with tracking_errors(uri, f"set up the MLflow experiment {name!r}"):
        _ensure_experiment(mlflow, client, name, uri, root)
    return uri


def _ensure_experiment(mlflow: Any, client: Any, name: str, uri: str, root: Path) -> None:
    if client.get_experiment_by_name(name) is None:
        artifact_location = None
        if is_local_store(uri):
            artifacts = Path(root).resolve() / "mlflow" / "artifacts"
            artifacts.mkdir(parents=True, exist_ok=True)
            artifact_location = artifacts.as_uri()
        try:
            client.create_experiment(name, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            # Created by a concurrent process between the lookup and here: fine.
            if client.get_experiment_by_name(name) is None:
                raise
    mlflow.set_experiment(name)


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(root: Path) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the repository at ``root``; ``('unknown', None)`` outside git."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return "unknown", None
    porcelain = _git(root, "status", "--porcelain", "--untracked-files=no")
    return commit, (bool(porcelain) if porcelain is not None else None)


def lineage_tags(cfg: TetherConfig, root: Path, base_model_hash: str) -> dict[str, str]:
    """Tags that tie a run to its exact code, data, settings and base model.

    Args:
        cfg: the config the run used (hashed with :meth:`TetherConfig.config_hash`).
        root: the project root (git repository and ``data.dvc``).
        base_model_hash: content hash of the base model weights.

    Returns:
        ``git_commit`` (``$TETHER_GIT_COMMIT`` when set, as in the container image; else the
        repository's HEAD; 'unknown' outside git), ``git_dirty`` ('true'/'false'/'unknown'),
        ``data_hash`` (``outs[0].md5`` of ``data.dvc``, 'untracked' without it), ``config_hash``,
        ``base_model_hash``, and MLflow's own ``mlflow.source.git.commit`` when known.
    """
    commit, dirty = git_state(Path(root))
    # A container image has no git history of its own: its build records the commit it was
    # built from (infra/Dockerfile, TETHER_GIT_COMMIT), which wins over the image's placeholder repo.
    image_commit = os.environ.get("TETHER_GIT_COMMIT", "").strip()
    if image_commit and image_commit != "unknown":
        commit, dirty = image_commit, None
    tags = {
        "git_commit": commit,
        "git_dirty": "unknown" if dirty is None else str(dirty).lower(),
        "data_hash": data_hash(Path(root)),
        "config_hash": cfg.config_hash(),
        "base_model_hash": base_model_hash,
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings -> ``{"train.lora_rank": "8", ...}`` with values as MLflow param strings."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = "null" if value is None else (",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
            out[name] = redact(text)[:_MAX_PARAM_CHARS]  # a URI-valued setting may carry a password
    return out


def loss_plot(
    train: Iterable[tuple[int, float]],
    evals: Iterable[tuple[int, float]] = (),
    base_eval_loss: float | None = None,
    path: Path | None = None,
):
    """A matplotlib figure of the training / validation loss curves (rendered with Agg, no display).

    Args:
        train: ``(step, loss)`` pairs.
        evals: ``(step, eval_loss)`` pairs.
        base_eval_loss: the base model's validation loss, drawn as a reference line.
        path: when given, the PNG is written there too.

    Returns:
        The figure (``mlflow.log_figure(fig, "plots/loss.png")`` logs it).
    """
    # A bare Figure (no pyplot): no global backend state, renders with Agg, nothing to close.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    train = list(train)
    evals = list(evals)
    if train:
        ax.plot(*zip(*train), label="train loss (completion tokens)", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss", lw=1.5)
    if base_eval_loss is not None:
        ax.axhline(base_eval_loss, ls="--", c="grey", label="base model, validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig
