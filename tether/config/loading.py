"""Loading: ``params.yaml``, a profile overlay from ``configs/``, explicit overrides, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tether.config.errors import ConfigError
from tether.config.tree import TetherConfig

# tether/config/loading.py -> the repository (the folder holding params.yaml and configs/).
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PARAMS = REPO_ROOT / "params.yaml"
PROFILES_DIR = REPO_ROOT / "configs"


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def profile_path(profile: str, profiles_dir: Path = PROFILES_DIR) -> Path:
    """The overlay file of a named profile; raises with the list of known profiles."""
    path = profiles_dir / f"{profile}.yaml"
    known = available_profiles(profiles_dir)
    # A profile is a name, never a path: "../params" or "/etc/x" must not read files outside profiles_dir.
    if profile not in known or not path.is_file():
        raise ConfigError(f"unknown profile {profile!r}: expected one of {known} (files in {profiles_dir})")
    return path


def available_profiles(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    """Profile names: ``cpu`` (params.yaml alone) plus every ``configs/*.yaml``."""
    return ["cpu"] + sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def is_params_yaml_run(profile: str | None, params: str | Path | None, root: str | Path) -> bool:
    """Whether a run uses ``<root>/params.yaml`` itself: no profile, no other params file.

    Only such a run may write and record the DVC stages' outputs: ``dvc.lock`` records
    params.yaml's values, so numbers made under other settings must not be recorded against them.
    """
    params_path = Path(params) if params else Path(root) / "params.yaml"
    return profile is None and params_path.resolve() == (Path(root) / "params.yaml").resolve()


def load_config(
    params: Path | str | None = None,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> TetherConfig:
    """Load ``params.yaml``, overlay a profile and explicit overrides, and validate.

    Args:
        params: the base params file (default: the repository's ``params.yaml``).
        profile: a profile name from ``configs/`` beside the params file (falling back to
            the repository's ``configs/``); ``cpu`` or None = the base file alone.
        overrides: nested dict of settings applied last (tests, CLI flags).

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: naming the file and each bad setting with what to fix.
    """
    base_path = Path(params) if params is not None else DEFAULT_PARAMS
    data = _read_yaml(base_path)
    sources = [str(base_path)]
    if profile and profile != "cpu":
        local_profiles = base_path.resolve().parent / "configs"
        ppath = profile_path(profile, local_profiles if local_profiles.is_dir() else PROFILES_DIR)
        data = _deep_merge(data, _read_yaml(ppath))
        sources.append(str(ppath))
    if overrides:
        data = _deep_merge(data, overrides)
        sources.append("overrides")
    try:
        return TetherConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (typo? see params.yaml for the known keys)"
            lines.append(f"  {where}: {msg} (got {err.get('input')!r})")
        raise ConfigError(f"invalid config from {' + '.join(sources)}:\n" + "\n".join(lines)) from None
