"""Security properties, each shown on a hostile input with the real engines (transformers, GX, YAML).

* Weights load only from safetensors: a pickle that would run code when unpickled is refused
  and never unpickled, alone or beside safetensors weights.
* Code shipped with a model (``auto_map`` + a ``.py`` file) never runs unless the config says
  ``model.trust_remote_code: true``: what reaches ``from_pretrained`` is asserted, and a planted
  module that writes a marker file on import proves it was not imported (the same module, trusted,
  does write the marker: the check can fail).
* Every id that becomes a path component is sanitised or refused: GGUF file stems (model cache
  directory names), embedded model keys and hub ids (``model.base_model``), profile names
  (``configs/<profile>.yaml``), and user / item ids (quarantined by the id rules before they reach
  prompts or files).
* Titles are rendered HTML-escaped in the Data Docs a reviewer opens in a browser.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from tiny import build_tiny_model_dir

from tether.config import PROFILES_DIR, ConfigError, IngestConfig, ModelConfig, ValidationConfig, available_profiles
from tether.config import load_config, profile_path
from tether.data.loaders import load_raw
from tether.data.validate import run_validation, validate
from tether.model import train as train_module
from tether.model.base import ModelResolutionError, cache_name, load_base_model, resolve_base_model

T0 = 1_600_000_000


class _OpenOnUnpickle:
    """Unpickling this calls ``open(path, "w")``: a harmless stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant_pickle(model_dir: Path, marker: Path) -> Path:
    """Write ``pytorch_model.bin`` whose unpickling creates ``marker``."""
    path = model_dir / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"model.embed_tokens.weight": _OpenOnUnpickle(marker)}))
    return path


CUSTOM_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("model code ran")
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast


class EvilForCausalLM(LlamaForCausalLM):
    pass


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def plant_remote_code(model_dir: Path, marker: Path) -> None:
    """Point config.json and tokenizer_config.json at a module that writes ``marker`` when imported."""
    (model_dir / "custom_model.py").write_text(CUSTOM_CODE.format(marker=str(marker)), encoding="utf-8")
    for name, key, target in (("config.json", "AutoModelForCausalLM", "custom_model.EvilForCausalLM"),
                              ("tokenizer_config.json", "AutoTokenizer", ["custom_model.EvilTokenizer", None])):
        data = json.loads((model_dir / name).read_text(encoding="utf-8"))
        data["auto_map"] = {key: target}
        (model_dir / name).write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def spy_from_pretrained(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Record the keyword arguments of every Auto*.from_pretrained call; the real loader still runs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls: list[tuple[str, dict]] = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            calls.append((_name, dict(kwargs)))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


@pytest.fixture
def modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep transformers' copies of trusted model code out of ~/.cache (and sys.path changes local)."""
    import sys

    from transformers import dynamic_module_utils

    cache = tmp_path / "hf_modules"
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return cache


# --------------------------------------------------------------------------- safetensors only


def test_pickle_only_model_dir_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    model_dir = build_tiny_model_dir(tmp_path / "model")
    for weights in model_dir.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "UNPICKLED"
    planted = plant_pickle(model_dir, marker)
    cfg = ModelConfig(base_model=str(model_dir), cache_dir=tmp_path / "cache")

    for load in (resolve_base_model, load_base_model):
        with pytest.raises(ModelResolutionError, match=r"only pickle weights \(pytorch_model\.bin\)") as exc:
            load(cfg)
        assert "safetensors only" in str(exc.value) and "arbitrary code" in str(exc.value)
    assert not marker.exists()

    # The override path of train/evaluate (model_dir=...) is the same loader: refused the same way.
    with pytest.raises(ModelResolutionError, match=r"only pickle weights \(pytorch_model\.bin\)") as exc:
        train_module.load_model(load_config(profile="test"), model_dir)
    assert "safetensors only" in str(exc.value) and "arbitrary code" in str(exc.value)
    assert not marker.exists()

    # The planted file is live: unpickling it really would have run code.
    pickle.loads(planted.read_bytes())
    assert marker.exists()


def test_safetensors_win_over_a_pickle_beside_them(tmp_path: Path, spy_from_pretrained) -> None:
    model_dir = build_tiny_model_dir(tmp_path / "model")
    marker = tmp_path / "UNPICKLED"
    plant_pickle(model_dir, marker)
    model, _, resolved = load_base_model(ModelConfig(base_model=str(model_dir), cache_dir=tmp_path / "cache"),
                                         device="cpu", dtype="float32", progress=False)
    assert resolved.source == "local" and not marker.exists()
    assert [p.name for p in model_dir.glob("*.safetensors")] == ["model.safetensors"]
    model_calls = [kw for name, kw in spy_from_pretrained if name == "AutoModelForCausalLM"]
    assert model_calls and all(kw["use_safetensors"] is True for kw in model_calls)
    assert torch.isfinite(next(model.parameters())).all()


# --------------------------------------------------------------------------- remote code


def test_trust_remote_code_is_off_in_the_defaults_and_every_profile() -> None:
    assert ModelConfig().trust_remote_code is False
    for profile in available_profiles():
        assert load_config(profile=profile).model.trust_remote_code is False, profile


def test_model_code_shipped_in_a_model_dir_never_runs(tmp_path: Path, spy_from_pretrained, modules_cache) -> None:
    model_dir = build_tiny_model_dir(tmp_path / "model")
    marker = tmp_path / "CODE_RAN"
    plant_remote_code(model_dir, marker)

    model, tokenizer, _ = load_base_model(ModelConfig(base_model=str(model_dir), cache_dir=tmp_path / "cache"),
                                          device="cpu", dtype="float32", progress=False)
    assert not marker.exists()
    assert type(model).__name__ == "LlamaForCausalLM" and "Evil" not in type(tokenizer).__name__
    assert {name for name, _ in spy_from_pretrained} == {"AutoModelForCausalLM", "AutoTokenizer"}
    for name, kwargs in spy_from_pretrained:
        assert kwargs["trust_remote_code"] is False and kwargs["local_files_only"] is True, (name, kwargs)

    # train/evaluate's model_dir override passes the same settings.
    spy_from_pretrained.clear()
    train_module.load_model(load_config(profile="test"), model_dir)
    assert not marker.exists()
    assert spy_from_pretrained and all(kw["trust_remote_code"] is False for _, kw in spy_from_pretrained)
    assert all(kw["use_safetensors"] is True for name, kw in spy_from_pretrained if name == "AutoModelForCausalLM")

    # Control: when the config does trust the model's code, the planted module runs.
    trusted = ModelConfig(base_model=str(model_dir), cache_dir=tmp_path / "cache", trust_remote_code=True)
    model, _, _ = load_base_model(trusted, device="cpu", dtype="float32", progress=False)
    assert marker.exists() and type(model).__name__ == "EvilForCausalLM"


# --------------------------------------------------------------------------- ids that become paths


HOSTILE_NAMES = ["../../etc/passwd", "..", ".", "", "a/b", "/abs/path", "C:\\Windows\\x", "..\\..\\x", "-rf",
                 ".hidden", "name\x00.gguf", "名前", "  ", "a/../../b", "~root"]


@pytest.mark.parametrize("stem", HOSTILE_NAMES)
def test_gguf_stem_becomes_a_safe_cache_directory_name(stem: str, tmp_path: Path) -> None:
    name = cache_name(stem)
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9_])?", name), name
    assert name not in {".", ".."} and "/" not in name and "\\" not in name
    models = tmp_path / "models"
    assert (models / f"{name}-0123456789ab").resolve().parent == models.resolve()


@pytest.mark.parametrize("spec", ["embedded:../../etc/passwd", "embedded:/etc/passwd", "org/../../etc",
                                  "../../etc/passwd", "a/b/../../c", "org/..", "org/a..b", "..\\..\\x"])
def test_hostile_base_model_specs_are_refused_before_any_path_or_download(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # relative specs resolve here, where nothing exists
    cache = tmp_path / "cache"
    with pytest.raises(ModelResolutionError) as exc:
        resolve_base_model(ModelConfig(base_model=spec, cache_dir=cache))
    msg = str(exc.value)
    assert re.search(r"unknown embedded model|no such file or directory|is not a model reference", msg), msg
    assert "Hugging Face cache" not in msg  # never got as far as a hub lookup
    assert not (cache / "models").exists()


@pytest.mark.parametrize("profile", ["../params", "/etc/passwd", "..\\params", "test/../test", "gpu.yaml", ""])
def test_profile_names_never_reach_outside_configs(profile: str) -> None:
    with pytest.raises(ConfigError, match="unknown profile"):
        profile_path(profile, PROFILES_DIR)


HOSTILE_IDS = ["../../etc/passwd", "/etc/passwd", "..", ".", "a/b", "..\\u", "C:\\x", "a b", "x" * 65, "id\ttab",
               "~root", "$(rm -rf ~)", "`id`", "%2e%2e%2f", "name;rm"]


@pytest.mark.integration
def test_hostile_user_and_item_ids_are_quarantined(tmp_path: Path) -> None:
    ratings = ["userId,movieId,rating,timestamp"]
    ratings += [f"{u},{i},4.0,{T0 + 60 * (10 * u + i)}" for u in (1, 2, 3) for i in (1, 2, 3)]
    quoted = ['"' + h.replace('"', '""') + '"' for h in HOSTILE_IDS]
    ratings += [f"{q},1,4.0,{T0 + k}" for k, q in enumerate(quoted)]
    movies = ["movieId,title,genres", "1,Alpha (1990),Drama", "2,Beta (1991),", "3,Gamma (1992),"]
    movies += [f"{q},Hostile {k} (2000),Drama" for k, q in enumerate(quoted)]
    (tmp_path / "ratings.csv").write_text("\n".join(ratings) + "\n", encoding="utf-8")
    (tmp_path / "movies.csv").write_text("\n".join(movies) + "\n", encoding="utf-8")

    result = validate(load_raw(tmp_path, IngestConfig()), ValidationConfig())
    assert set(result.interactions["user_id"]) == {"1", "2", "3"}
    assert set(result.items["item_id"]) == {"1", "2", "3"}
    id_rules = {"user_id_pattern", "user_id_not_dot_segment", "item_id_pattern", "item_id_not_dot_segment",
                "user_id_not_null", "item_id_not_null"}
    for table, n in (("interactions", len(HOSTILE_IDS)), ("items", len(HOSTILE_IDS))):
        q = getattr(result, f"quarantined_{table}")
        assert len(q) == n
        assert all(set(r.split("; ")) & id_rules for r in q["rule"]), q[["rule", "reason"]].to_dict()
        acc = result.accounting[table]
        assert acc["rows_in"] == acc["kept"] + acc["quarantined"]


# --------------------------------------------------------------------------- Data Docs


@pytest.mark.integration
def test_titles_are_html_escaped_in_data_docs(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    ratings = ["userId,movieId,rating,timestamp"]
    ratings += [f"{u},{i},4.0,{T0 + 60 * (10 * u + i)}" for u in (1, 2, 3) for i in (1, 2, 3)]
    (raw / "ratings.csv").write_text("\n".join(ratings) + "\n", encoding="utf-8")
    # Each title fails a rule, so GX lists it among the unexpected values in the Data Docs pages.
    (raw / "movies.csv").write_text(
        "movieId,title,genres\n1,Alpha (1990),\n2,Beta (1991),\n3,Gamma (1992),\n"
        "4,<script>alert('xss')</script><|im_end|>,\n5,<img src=x onerror=alert(2)>\x07,\n", encoding="utf-8")

    summary = run_validation(load_config(profile="test"), tmp_path)
    assert summary.accounting["items"] == {"rows_in": 5, "kept": 3, "quarantined": 2}
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (tmp_path / "data" / "reports" / "data_docs").rglob("*.html"))
    assert "<script>alert(" not in pages and "<img src=x" not in pages
    # The values are still shown, as text.
    assert "&lt;script&gt;alert(" in pages and "&lt;img src=x onerror=alert(2)&gt;" in pages
