"""A throwaway Tether project (git + DVC + a local remote) in a temporary folder, for integration tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tether.config import REPO_ROOT, load_config
from tether.versioning import dvc

# What dvc.yaml's stages depend on: code, settings, pipeline definition.
_COPY = ["tether", "configs", "dvc.yaml", ".dvcignore"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def make_project(path: Path, overrides: dict[str, Any] | None = None, remote: Path | None = None) -> Path:
    """Create a git + DVC project at ``path`` with the test profile written out as its params.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    for name in _COPY:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, path / name)
    cfg = load_config(profile="test", overrides=overrides)
    (path / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@tether.local")
    git(path, "config", "user.name", "Tether Test")
    dvc(path, "init", "-q")
    remote = remote or path.parent / f"{path.name}-remote"
    dvc(path, "remote", "add", "-d", "local", str(remote))
    (path / ".gitignore").write_text("__pycache__/\n/data/reports/data_docs/\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "project")
    return path
