"""``tether status|promote``: the registry's state, and the manual override."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tether.cli.app import ParamsOpt, ProfileOpt, _fail, _setup, console


def status_cmd(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Show the registry: @champion, @challenger and the latest versions with their verdicts."""
    from tether.registry import registry_status

    cfg, root = _setup(params, profile)
    st = registry_status(cfg, root=root)
    console.print(f"registered model [bold]{st['name']}[/] (primary metric {st['primary_metric']})", highlight=False)
    table = Table()
    for col in ("version", "aliases", st["primary_metric"], "protocol", "verdict", "decision",
                "blocked reason / manual reason"):
        table.add_column(col)
    for v in st["recent"]:
        value = v.get("primary_metric_value")
        protocol = v.get("eval_protocol_hash")  # versions compare only under the same protocol hash
        table.add_row(
            v["version"], ", ".join(v["aliases"]) or "-", f"{value:.4f}" if value is not None else "-",
            protocol[:12] if protocol else "unknown",
            str(v.get("verdict") or "-"), str(v.get("decision") or "-"),
            str(v.get("blocked_reason") or v.get("manual_reason") or ""),
        )
    console.print(table)
    for role in ("champion", "challenger"):
        v = st[role]
        console.print(f"  @{role}: {'version ' + v['version'] if v else 'none'}", highlight=False)


def promote_cmd(
    version: Annotated[str, typer.Argument(help="The registered version to make @champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why the gates are overridden (recorded in tags).")],
    user: Annotated[
        str | None, typer.Option("--user", help="Who overrides (default: $USER).")
    ] = None,
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Manual override: move @champion to VERSION whatever its gates said; who and why go into its tags."""
    import getpass

    from tether.registry import RegistryError, manual_promote

    cfg, root = _setup(params, profile)
    try:
        decision = manual_promote(cfg, version, reason, user or getpass.getuser(), root=root)
    except (RegistryError, ValueError) as exc:
        _fail(str(exc))
    console.print(
        f"@champion: {decision.champion_before} -> {decision.champion_after} (manual, reason recorded)", highlight=False
    )
