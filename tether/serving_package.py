"""What travels with a registered version so that it serves where Tether is not installed.

A version is logged as an MLflow *models-from-code* pyfunc (``python_model`` is the path of
:mod:`tether.serving_entry`, never a pickle) with the ``tether`` package copied into the
model's ``code/`` folder (MLflow ``code_paths``; MLflow puts that folder first on
``sys.path`` before it runs the entry file). Why models-from-code rather than a pickled
``PythonModel``: MLflow 3 warns on every pickled model and recommends this form, and a
pickle would name classes by reference anyway, so the code has to travel either way.

The pip requirements come from one place, the project's ``pyproject.toml`` (or, where the
source tree is absent, the installed ``tether`` distribution's metadata, which pip wrote from
it): for each distribution the served code imports (:data:`SERVING_DISTRIBUTIONS`) an exact
``==`` pin of pyproject is written as it is; a range (``pandas>=2.2``) is pinned to the version
installed in the running environment, the one the version was registered and validated with.
A running environment that does not satisfy pyproject.toml is refused: its pins would lie.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tomllib
from collections.abc import Mapping
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import tether
from tether.config import REPO_ROOT

# Every third-party distribution that tether.serving and the modules it loads import at serving
# time (prompt building, scoring, generation, base-model resolution and GGUF conversion).
# Their own dependencies (tokenizers, safetensors, huggingface_hub, fastapi, uvicorn, ...) follow
# from these pins. tests/registry/test_serving_package.py checks this list against what a load imports.
SERVING_DISTRIBUTIONS = (
    "torch", "transformers", "peft", "accelerate", "gguf", "mlflow", "pydantic", "pyyaml", "pandas", "numpy",
)
# Copied with the package but never needed to serve: bulky evaluation data.
CODE_IGNORE = ("__pycache__", "*.pyc", "resources")
ENTRY_FILE = Path(tether.__file__).resolve().parent / "serving_entry.py"


class PackagingError(RuntimeError):
    """The version cannot be packaged to serve elsewhere; the message says what to fix."""


def project_requirements(root: Path | None = None) -> tuple[dict[str, Requirement], str]:
    """The project's declared dependencies by canonical name, and where they were read.

    Args:
        root: a source tree holding Tether's ``pyproject.toml`` (None = the repository).

    Returns:
        ``({canonical name: Requirement}, source)``; source is the pyproject path or
        ``importlib.metadata(tether)``.

    Raises:
        PackagingError: neither a Tether pyproject.toml nor an installed ``tether`` distribution.
    """
    pyproject = Path(root or REPO_ROOT) / "pyproject.toml"
    lines: list[str] | None = None
    source = str(pyproject)
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "tether":
            lines = list(project.get("dependencies", []))
    if lines is None:
        try:
            lines = [r for r in importlib.metadata.requires("tether") or [] if "extra ==" not in r]
        except importlib.metadata.PackageNotFoundError:
            raise PackagingError(
                f"no pyproject.toml of Tether at {pyproject} and no installed 'tether' distribution: the serving "
                "requirements are derived from one of them. Register from the project's environment (make venv)."
            ) from None
        source = "importlib.metadata(tether)"
    reqs = {canonicalize_name(r.name): r for r in map(Requirement, lines)}
    return reqs, source


def _exact_pin(req: Requirement) -> str | None:
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
        return specs[0].version
    return None


def serving_requirements(
    root: Path | None = None, installed: Mapping[str, str] | None = None
) -> list[str]:
    """Exact pins for :data:`SERVING_DISTRIBUTIONS` (see the module docstring).

    Args:
        root: the source tree with pyproject.toml (None = the repository).
        installed: ``{distribution: version}`` to use instead of the running environment's
            (tests); None = ``importlib.metadata``.

    Returns:
        ``["torch==2.13.0", ...]`` in :data:`SERVING_DISTRIBUTIONS` order.

    Raises:
        PackagingError: pyproject.toml does not list a serving distribution, one is not
            installed, or the installed version is not the one pyproject.toml asks for.
    """
    reqs, source = project_requirements(root)
    pins: list[str] = []
    for name in SERVING_DISTRIBUTIONS:
        req = reqs.get(canonicalize_name(name))
        if req is None:
            raise PackagingError(
                f"{source} does not list {name!r}, which the served model imports: add it to the project's "
                "dependencies (pinned), so that a registered version can name it in its requirements"
            )
        try:
            have = installed[name] if installed is not None else importlib.metadata.version(name)
        except (KeyError, importlib.metadata.PackageNotFoundError):
            raise PackagingError(f"{name} is not installed in this environment; install the project (make venv)") from None
        if not req.specifier.contains(have, prereleases=True):
            raise PackagingError(
                f"this environment has {name}=={have}, but {source} asks for {req}: the version's requirements "
                "would not be what it was validated with. Reinstall the project (make venv), then register again."
            )
        # An exact pin stays as declared: torch==2.13.0 also matches the local build 2.13.0+cpu here
        # and the CUDA build elsewhere. A range gets the installed public version.
        pins.append(f"{name}=={_exact_pin(req) or Version(have).public}")
    return pins


def stage_code(dst: Path) -> Path:
    """Copy the ``tether`` package (without caches and evaluation resources) into ``dst/tether``.

    Args:
        dst: an empty staging folder.

    Returns:
        The copied package folder, to pass to ``log_model(code_paths=[...])``.
    """
    src = Path(tether.__file__).resolve().parent
    out = Path(dst) / "tether"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(*CODE_IGNORE))
    return out
