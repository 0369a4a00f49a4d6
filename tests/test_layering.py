"""The layering of docs/CONVENTIONS.md, read from the code: pure ``tether/`` -> thin ``tasks/`` -> ``flows/``."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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
