"""The golden prompts of the generation-health check: the packaged file, its format, its loader.

One ``{"id", "category", "prompt"}`` JSON object a line; every key required, no other key, so a
misspelt key is refused rather than silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Packaged with the code, found relative to this file so it works from any working directory.
GOLDEN_PROMPTS_PATH = Path(__file__).resolve().parents[2] / "resources" / "golden_prompts.jsonl"
_GOLDEN_KEYS = ("id", "category", "prompt")


class GoldenPromptError(ValueError):
    """A golden-prompts file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class GoldenPrompt:
    """One fixed prompt of the generation-health check.

    Attributes:
        id: unique id (``gp01``).
        category: kind of task (``explain``, ``creative``, ...), for reading the report.
        prompt: the user message.
    """

    id: str
    category: str
    prompt: str

    @property
    def messages(self) -> list[dict[str, str]]:
        """The prompt as a one-turn chat conversation (no system message: the model's default applies)."""
        return [{"role": "user", "content": self.prompt}]


def load_golden_prompts(path: str | Path | None = None) -> list[GoldenPrompt]:
    """Read golden prompts from a JSONL file (one ``{"id", "category", "prompt"}`` object a line).

    Blank lines are skipped. Every key is required and must be a non-empty string; other keys
    are refused (a misspelt key would otherwise be silently ignored).

    Args:
        path: the JSONL file; None = the packaged ``tether/resources/golden_prompts.jsonl``.

    Returns:
        The prompts in file order.

    Raises:
        GoldenPromptError: naming the file and line, on bad JSON, a missing, empty, unknown or
            non-string key, a duplicate id, or a file without prompts.
        FileNotFoundError: if the file does not exist.
    """
    path = Path(path) if path is not None else GOLDEN_PROMPTS_PATH
    prompts: list[GoldenPrompt] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise GoldenPromptError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise GoldenPromptError(f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in _GOLDEN_KEYS if k not in row]
            if missing:
                raise GoldenPromptError(f"{where}: missing key(s) {missing}; every line needs {list(_GOLDEN_KEYS)}")
            unknown = sorted(set(row) - set(_GOLDEN_KEYS))
            if unknown:
                raise GoldenPromptError(f"{where}: unknown key(s) {unknown}; allowed: {list(_GOLDEN_KEYS)}")
            for key in _GOLDEN_KEYS:
                if not isinstance(row[key], str) or not row[key].strip():
                    raise GoldenPromptError(f"{where}: {key!r} must be a non-empty string, got {row[key]!r}")
            if row["id"] in first_line:
                raise GoldenPromptError(
                    f"{where}: duplicate id {row['id']!r} (first used on line {first_line[row['id']]})"
                )
            first_line[row["id"]] = lineno
            prompts.append(GoldenPrompt(id=row["id"], category=row["category"], prompt=row["prompt"]))
    if not prompts:
        raise GoldenPromptError(f"{path}: no golden prompts in the file")
    return prompts
