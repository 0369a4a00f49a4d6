"""Process environment for Tether's engines, set when a command or flow starts (never at import)."""

from __future__ import annotations

import os
from pathlib import Path

from tether.config import REPO_ROOT

# Quiet, offline-safe defaults. setdefault: an explicit environment always wins.
_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",                      # nothing is downloaded from a model hub at run time
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # else "database is locked" noise
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # 20 s default is too tight on 2 cores
    "TOKENIZERS_PARALLELISM": "false",
}


def configure_environment(root: Path | None = None) -> None:
    """Set engine defaults for this process. Idempotent.

    Args:
        root: the project directory; Prefect's home defaults to ``<root>/.tether/prefect``.
    """
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    root = root or REPO_ROOT
    os.environ.setdefault("PREFECT_HOME", str(root / ".tether" / "prefect"))
    # Prefect creates its home without parents and only warns when it cannot.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
