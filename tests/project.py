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


# Gates a tiny model can pass: quality vs popularity/base/champion and the valid-item floor off,
# generation health tolerant, drift allowed up to +10000% (test_flow_training tightens one per run).
PERMISSIVE = {
    "max_ppl_drift": 100.0, "max_golden_kl": 100.0, "min_margin_vs_popularity": -1.0, "min_margin_vs_base": -1.0,
    "min_margin_vs_champion": -1.0, "valid_item_rate_floor": 0.0,
    "health_tolerances": {"distinct_1": 1.0, "distinct_2": 1.0, "repeated_4gram_rate": 1.0, "empty_rate": 1.0,
                          "length_ratio": [0.0, 1000.0]},
}
# One drift-panel source, the packaged held-out prose (test_flow_training pretrains its tiny model on it).
EVAL = {"n_users": 6, "n_negatives": 5, "perplexity": {"window": 64, "stride": 32},
        "drift_panel": [{"name": "heldout_prose", "source": "builtin:heldout-prose", "max_tokens": 256}],
        "generation": {"n_prompts": 2, "max_new_tokens": 4, "valid_item_users": 3, "valid_item_max_new_tokens": 4}}


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
