"""Every config file loads and validates; bad configs get messages that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tether.config import PROFILES_DIR, ConfigError, TetherConfig, available_profiles, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("profile", available_profiles())
def test_every_profile_loads(profile: str) -> None:
    cfg = load_config(profile=profile)
    assert isinstance(cfg, TetherConfig)


def test_profiles_dir_has_the_documented_profiles() -> None:
    assert {"gpu", "test"} <= {p.stem for p in PROFILES_DIR.glob("*.yaml")}


def test_params_yaml_every_setting_is_commented() -> None:
    """Each `key: value` line in params.yaml carries a comment (on the line or just above)."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        key, _, value = stripped.partition(":")
        if not value.strip() or value.strip().startswith("#"):
            continue  # a section header
        if "#" not in value and not lines[i - 1].strip().startswith("#"):
            uncommented.append(line)
    assert not uncommented, f"settings without a comment: {uncommented}"


def test_params_yaml_matches_model_defaults() -> None:
    """params.yaml spells out the defaults: the file and the code agree."""
    from_file = load_config().model_dump(mode="json")
    from_code = TetherConfig().model_dump(mode="json")
    assert from_file == from_code


def test_profile_overlays_only_what_it_names() -> None:
    base, test = load_config(), load_config(profile="test")
    assert test.generate.n_items < base.generate.n_items
    assert test.validation == base.validation


def test_unknown_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"clean": {"k_core_usrs": 5}}))
    with pytest.raises(ConfigError, match=r"clean\.k_core_usrs: unknown setting"):
        load_config(p)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"generate": {"n_items": "many"}}))
    with pytest.raises(ConfigError, match=r"generate\.n_items") as err:
        load_config(p)
    assert str(p) in str(err.value)


def test_inconsistent_values_are_explained(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"validation": {"rating_min": 5, "rating_max": 1}}))
    with pytest.raises(ConfigError, match="rating_min .* must be <= rating_max"):
        load_config(p)


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*test"):
        load_config(profile="nope")


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_config_hash_is_stable_and_sensitive() -> None:
    a, b = load_config(), load_config()
    assert a.config_hash() == b.config_hash()
    c = load_config(overrides={"seed": 99})
    assert c.config_hash() != a.config_hash()
