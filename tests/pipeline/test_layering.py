"""The layering of docs/CONVENTIONS.md, read from the code: pure ``tether/`` -> thin ``tasks/`` -> ``flows/``."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The one module of tether/ that may import Prefect or flows/: the CLI's pipeline commands.
ORCHESTRATING = {"tether/cli/pipeline.py"}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, anywhere in the file (function bodies too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_cli_pipeline_commands_import_prefect_or_flows() -> None:
    importing = {p.relative_to(REPO).as_posix() for p in (REPO / "tether").rglob("*.py")
                 if _imports(p) & {"prefect", "flows", "tasks"}}
    assert importing == ORCHESTRATING


def test_tasks_are_thin() -> None:
    """Each Prefect task is a wrapper around one tether call: its body stays short."""
    long = {}
    for path in (REPO / "tasks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and any("task" in ast.unparse(d) for d in node.decorator_list):
                body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body  # without the docstring
                lines = body[-1].end_lineno - body[0].lineno + 1
                if lines > 15:
                    long[f"{path.name}:{node.name}"] = lines
    assert not long, long


def test_tasks_do_not_import_flows() -> None:
    for path in (REPO / "tasks").glob("*.py"):
        assert "flows" not in _imports(path), path


def _module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _tether_imports(nodes: list[ast.AST], package: str) -> set[str]:
    """``tether`` modules imported anywhere in ``nodes`` (function bodies too), with their parent packages."""
    found: set[str] = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}")}
    modules: set[str] = set()
    for name in found:
        parts = name.split(".")
        if parts[0] == "tether":
            modules |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i]))}
    return modules


def _closure(start: set[str]) -> set[Path]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += _tether_imports([ast.parse(path.read_text(encoding="utf-8"))], package)
    return {_module_file(n) for n in seen}


# Each dvc.yaml stage's command: the CLI module and function it runs.
STAGE_COMMANDS = {
    "validate": ("tether/cli/data.py", "data_validate"),
    "prepare": ("tether/cli/data.py", "data_prepare"),
    "train": ("tether/cli/stages.py", "train_cmd"),
    "evaluate": ("tether/cli/stages.py", "evaluate_cmd"),
    "gate": ("tether/cli/stages.py", "gate_cmd"),
}


def test_dvc_stage_deps_cover_every_module_the_stage_can_import() -> None:
    """A stage whose code changed must re-run: its deps name every module its command can reach.

    From the command function (its own imports and its module's, not the CLI's setup and printing
    modules), every ``tether`` import, lazy ones included, transitively.
    """
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert set(STAGE_COMMANDS) == set(stages)
    for stage, (module, function) in STAGE_COMMANDS.items():
        deps = [REPO / d for d in stages[stage]["deps"]]
        tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
        body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
        heads = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert body, (module, function)
        start = {m for m in _tether_imports(body + heads, "tether.cli") if not m.startswith("tether.cli")}
        reached = _closure(start) | {REPO / module}
        missing = sorted(p.relative_to(REPO).as_posix() for p in reached
                         if not any(p == d or d in p.parents for d in deps))
        assert not missing, (stage, missing)
