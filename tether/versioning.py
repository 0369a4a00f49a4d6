"""Data versioning with DVC: track ``data/raw`` in ``data.dvc``, push/pull, record stages in ``dvc.lock``.

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
    """Whether ``root`` holds a DVC repository (a ``.dvc`` folder)."""
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


def version_raw_data(root: Path, raw_dir: Path, push_remote: bool = True) -> tuple[str, str | None]:
    """Record ``raw_dir`` in ``data.dvc`` and push it to the default remote (the flow's versioning step).

    Args:
        root: the project root; without a ``.dvc`` folder nothing is versioned.
        raw_dir: the raw data folder (inside ``root``).
        push_remote: also ``dvc push`` it.

    Returns:
        ``(data.dvc md5, dvc push's summary line or None)``; ``("untracked", None)`` outside a DVC repository.
    """
    if not is_dvc_repo(root):
        log.warning("%s is not a DVC repository: raw data not versioned", root)
        return "untracked", None
    digest = track_raw_data(root, raw_dir)
    return digest, (push(root) if push_remote else None)


def record_stages(root: Path, *stages: str) -> bool:
    """Record the named ``dvc.yaml`` stages' current outputs in ``dvc.lock`` (``dvc commit --force``).

    The flow computes what the stages compute (same functions, same settings); recording them
    makes ``dvc repro`` agree they are up to date instead of recomputing them.

    Returns:
        Whether anything was recorded (False outside a DVC repository or without ``dvc.yaml``).
    """
    if not (is_dvc_repo(root) and (root / "dvc.yaml").exists()):
        return False
    dvc(root, "commit", "--force", "--quiet", *stages)
    return True
