"""Data versioning with DVC: track ``data/raw`` in ``data.dvc``, push/pull, record the pipeline.

DVC is driven through its own command line (``python -m dvc``), the same commands an
engineer types, so what Tether does is what ``dvc status`` / ``dvc pull`` / ``dvc repro`` see.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

DATA_DVC = "data.dvc"


class VersioningError(RuntimeError):
    """A DVC command failed; the message carries the command and DVC's own output."""


def _dvc_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    # Stage commands (`tether data ...`) must resolve to this interpreter's environment.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``dvc ARGS`` in ``root`` and return the completed process.

    Raises:
        VersioningError: when ``check`` and the command exits non-zero.
    """
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.run(cmd, cwd=root, env=_dvc_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise VersioningError(
            f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}".rstrip()
        )
    return proc


def is_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir()


def data_hash(root: Path) -> str:
    """The DVC hash of the tracked raw data, read from ``data.dvc`` ('untracked' if absent)."""
    path = root / DATA_DVC
    if not path.exists():
        return "untracked"
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    return str(outs[0].get("md5", "uncommitted")) if outs else "untracked"


def track_raw_data(root: Path, raw_dir: Path) -> str:
    """Record the current ``raw_dir`` in ``data.dvc`` (and the DVC cache); returns the hash.

    ``data.dvc`` lives at the repository root and points at ``raw_dir``; when the files are
    unchanged this is a no-op and the hash stays the same.
    """
    rel = raw_dir.resolve().relative_to(root.resolve()).as_posix()
    path = root / DATA_DVC
    current = yaml.safe_load(path.read_text()) if path.exists() else None
    if not current or not current.get("outs") or current["outs"][0].get("path") != rel:
        path.write_text(yaml.safe_dump({"outs": [{"path": rel}]}, sort_keys=False))
    dvc(root, "commit", "--force", "--quiet", DATA_DVC)
    return data_hash(root)


def push(root: Path, targets: tuple[str, ...] = (DATA_DVC,)) -> str:
    """Push the given targets to the default remote; returns DVC's summary line."""
    out = dvc(root, "push", *targets).stdout.strip()
    return out.splitlines()[-1] if out else "pushed"


def pull(root: Path, targets: tuple[str, ...] = (DATA_DVC,)) -> str:
    """Pull the given targets from the default remote; returns DVC's summary line."""
    out = dvc(root, "pull", *targets).stdout.strip()
    return out.splitlines()[-1] if out else "pulled"


def commit_pipeline(root: Path) -> None:
    """Record the flow's outputs in ``dvc.lock`` so ``dvc repro`` sees them as up to date."""
    dvc(root, "commit", "--force", "--quiet")


def status(root: Path) -> str:
    return dvc(root, "status").stdout.strip()
