"""MLflow tracking: where runs go, and the lineage every run carries.

Nothing here runs at import: :func:`setup_tracking` is called when a command or flow starts.
Secrets never reach MLflow: parameters come from the config only, never from the environment,
and the tracking URI (which may hold a password) is not logged.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

from tether.config import TetherConfig
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


def _is_local_store(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file", "sqlite")


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
    if client.get_experiment_by_name(name) is None:
        artifact_location = None
        if _is_local_store(uri):
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
    return uri


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
        ``git_commit`` ('unknown' outside git), ``git_dirty`` ('true'/'false'/'unknown'),
        ``data_hash`` (``outs[0].md5`` of ``data.dvc``, 'untracked' without it), ``config_hash``,
        ``base_model_hash``, and MLflow's own ``mlflow.source.git.commit`` when known.
    """
    commit, dirty = git_state(Path(root))
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
            out[name] = text[:_MAX_PARAM_CHARS]
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
