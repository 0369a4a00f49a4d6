"""What the commands print: row accounting, stage summaries, the fine-tune's headline, the verdict."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from tether.cli.app import console
from tether.eval.systems import EVALUATED_SYSTEMS, HEADLINE_METRICS

# The rows of the systems table: the systems the evaluate stage measures, in display order.
SYSTEMS = EVALUATED_SYSTEMS


def _as_dict(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, dict):
        return obj
    return {"value": obj}


def print_accounting(title: str, accounting: dict[str, dict[str, Any]]) -> None:
    """Print a rows-in / kept / quarantined table, one row per table."""
    table = Table(title=title)
    keys: list[str] = []
    for acc in accounting.values():
        keys += [k for k in acc if k not in keys]
    table.add_column("table")
    for k in keys:
        table.add_column(k, justify="right")
    for name, acc in accounting.items():
        table.add_row(name, *[f"{acc.get(k, '')}" for k in keys])
    console.print(table)


def print_summary(title: str, summary: Any) -> None:
    """Print a summary object: its row accounting as a table, other fields as key: value."""
    data = _as_dict(summary)
    accounting = data.pop("accounting", None)
    if accounting:
        print_accounting(f"{title}: row accounting", accounting)
    for key, value in data.items():
        if isinstance(value, (dict, list)) and len(str(value)) > 160:
            continue  # long structures are in the written report files
        console.print(f"  [bold]{key}[/]: {value}", highlight=False)


def print_systems(title: str, metrics: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> None:
    """One row per system (popularity, base, candidate), one column per metric; ``-`` where there is none."""
    table = Table(title=title)
    table.add_column("system")
    for m in names:
        table.add_column(m, justify="right")
    for system in SYSTEMS:
        vals = metrics.get(system, {})
        table.add_row(system, *[f"{vals[m]:.4f}" if isinstance(vals.get(m), (int, float)) else "-" for m in names])
    console.print(table)


def print_train_result(result: Any) -> None:
    """The fine-tune's headline: validation loss of the adapter against the base model."""
    table = Table(title="fine-tune: validation loss on the same examples (lower is better)")
    for col in ("model", "validation loss"):
        table.add_column(col)
    table.add_row("base (zero-shot)", f"{result.base_eval_loss:.4f}")
    table.add_row("base + LoRA adapter", f"{result.eval_loss:.4f}")
    console.print(table)
    better = result.eval_loss < result.base_eval_loss
    console.print(
        f"  adapter {'[green]beats[/]' if better else '[red]does not beat[/]'} the base on validation loss; "
        f"{result.steps} steps, {result.tokens_per_second:.0f} tokens/s on {result.device}, "
        f"{result.train_seconds:.0f} s of training",
        highlight=False,
    )
    console.print(f"  adapter: {result.adapter_dir}", highlight=False)
    if result.mlflow_run_id:
        console.print(f"  MLflow run: {result.mlflow_run_id}", highlight=False)


def print_verdict(report: Any, paths: dict[str, Any], registry: dict[str, Any] | None = None) -> None:
    """Candidate vs base vs popularity, the gate verdicts, and what the registry did."""
    from tether.eval.report import to_rich_table

    metrics = report.metrics
    names = [m for m in HEADLINE_METRICS if any(m in metrics.get(s, {}) for s in metrics)]
    print_systems("recommendation quality on the test split (same users, same candidates)", metrics, names)
    console.print(to_rich_table(report))
    colour = "green" if report.verdict == "PROMOTE" else "red"
    console.print(f"verdict: [bold {colour}]{report.verdict}[/]", highlight=False)
    for g in report.blocking_failures:
        console.print(f"  blocked by {g.gate}: {g.reason}", highlight=False)
    console.print(f"  gate report: {paths.get('markdown')} (+ .json, .png)", highlight=False)
    if registry:
        d = registry["decision"]
        console.print(
            f"  registry: {d.name} version {registry['version']} is @challenger; "
            f"@champion {'moved to it' if d.promoted else 'stays at ' + str(d.champion_after)} ({d.decision})",
            highlight=False,
        )
