"""The gate report renders every verdict, stays strict JSON, escapes table cells and draws a real PNG."""

from __future__ import annotations

import json
import math
import re

import pytest

from tether.eval import gates as G
from tether.eval.report import (
    GateReport,
    from_json,
    plot,
    to_json,
    to_markdown,
    to_rich_table,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _gates(drift_ok: bool = False) -> list[G.GateResult]:
    return [
        G.perplexity_drift_gate(21.0 if drift_ok else 24.9, 22.1, 0.10, interval=(0.09, 0.165)),
        *G.generation_health_gate(
            {"distinct_2": 0.72, "empty_rate": 0.0, "length_ratio": 0.82},
            {"distinct_2": 0.74, "empty_rate": 0.0},
            {"distinct_2": 0.05, "empty_rate": 0.02, "length_ratio": (0.5, 2.0)},
        ),
        G.beats_reference_gate("ndcg_at_10", 0.142, 0.081, "popularity", interval=(0.04, 0.08)),
        G.floor_gate("valid_item_rate", 0.87, 0.8, interval=(0.83, 0.91)),
        G.floor_gate("catalog_coverage_at_10", 0.01, 0.05, blocking=False),
    ]


def _report(drift_ok: bool = False, **kw) -> GateReport:
    metrics = {
        "candidate": {"count": 50, "ndcg_at_10": 0.142, "hr_at_10": 0.26, "mrr": 0.11, "perplexity": 24.9,
                      "distinct_2": 0.72, "empty_rate": 0.0, "length_ratio": 0.82},
        "base": {"count": 50, "ndcg_at_10": 0.03, "hr_at_10": 0.06, "mrr": 0.02, "perplexity": 22.1,
                 "distinct_2": 0.74, "empty_rate": 0.0},
        "popularity": {"count": 50, "ndcg_at_10": 0.081, "hr_at_10": 0.16, "mrr": float("nan")},
    }
    intervals = {"candidate": {"ndcg_at_10": (0.12, 0.16)}, "popularity": {"ndcg_at_10": (0.07, float("inf"))}}
    generations = [
        {"id": "gp01", "category": "explain", "prompt": "Why | how?", "base": "line one\nline | two",
         "candidate": "Title (1999) " * 100},
        {"id": "gp02", "category": "creative", "prompt": "A <b>poem</b>", "base": "ok", "candidate": ""},
    ]
    lineage = {"git_commit": "abc123", "config": {"seed": 1}}
    return GateReport(_gates(drift_ok), metrics, intervals, generations, lineage, **kw)


# --------------------------------------------------------------------------- verdict


def test_verdict_follows_the_blocking_gates() -> None:
    blocked = _report()
    assert blocked.verdict == "BLOCKED"
    assert [g.gate for g in blocked.blocking_failures] == ["perplexity_drift"]
    assert [g.metric for g in blocked.advisory_failures] == ["catalog_coverage_at_10"]
    assert _report(drift_ok=True).verdict == "PROMOTE"  # the advisory failure does not block
    assert GateReport([]).verdict == "BLOCKED"  # nothing checked, nothing promoted
    with pytest.raises(ValueError, match="perplexity_drift"):
        _report(promote=True)
    assert _report(drift_ok=True, promote=False).verdict == "BLOCKED"


# --------------------------------------------------------------------------- markdown


def test_markdown_has_headline_and_one_row_per_gate() -> None:
    report = _report()
    md = to_markdown(report)
    first = md.splitlines()[2]
    assert first.startswith("**Verdict: ❌ BLOCKED**") and "perplexity_drift (perplexity)" in first
    gate_rows = [line for line in md.splitlines() if line.startswith(("| perplexity_drift", "| generation_health",
                                                                       "| beats_", "| floor"))]
    assert len(gate_rows) == len(report.gates)
    for g, row in zip(report.gates, gate_rows):
        cells = [c.strip() for c in _UNESCAPED_PIPE.split(row)[1:-1]]
        assert cells[:2] == [g.gate, g.metric]
        assert cells[6].startswith("✅" if g.passed else "❌")
    drift_row = gate_rows[0]
    assert "max 10.00%" in drift_row and "[+9.00%, +16.50%]" in drift_row
    assert "❌ (advisory)" in gate_rows[-1]
    assert "| ndcg_at_10 | 0.081 [0.07, inf] | 0.03 | 0.142 [0.12, 0.16] |" in md
    assert "| mrr | NaN | 0.02 | 0.11 |" in md

    promoted = to_markdown(_report(drift_ok=True))
    assert "**Verdict: ✅ PROMOTE**" in promoted


def test_markdown_tables_escape_pipes_newlines_and_html() -> None:
    md = to_markdown(_report(), max_chars=80)
    # Every table line has as many unescaped pipes as its header: no cell broke the table.
    tables: list[list[str]] = [[]]
    for line in md.splitlines():
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    for table in filter(None, tables):
        n = len(_UNESCAPED_PIPE.findall(table[0]))
        assert all(len(_UNESCAPED_PIPE.findall(row)) == n for row in table), table
    assert "line one<br>line \\| two" in md
    assert "Why \\| how?" in md
    assert "A &lt;b&gt;poem&lt;/b&gt;" in md and "<b>" not in md
    cells = [c.strip() for line in md.splitlines() for c in _UNESCAPED_PIPE.split(line)]
    long_cell = next(c for c in cells if c.startswith("Title (1999)"))
    assert long_cell.endswith("…") and len(long_cell) <= 80
    assert "*(empty)*" in md


# --------------------------------------------------------------------------- JSON


def test_json_is_strict_and_round_trips() -> None:
    report = _report()
    text = to_json(report)

    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")

    data = json.loads(text, parse_constant=refuse)
    assert data["verdict"] == "BLOCKED" and data["promote"] is False
    assert data["metrics"]["popularity"]["mrr"] is None  # NaN -> null
    assert data["intervals"]["popularity"]["ndcg_at_10"] == [0.07, None]  # inf -> null
    assert len(data["gates"]) == len(report.gates)
    assert data["gates"][0]["threshold"] == 0.10
    assert data["gates"][3]["threshold"] == [0.5, 2.0]

    back = from_json(text)
    assert back.verdict == report.verdict
    assert [g.passed for g in back.gates] == [g.passed for g in report.gates]
    assert back.gates[3].threshold == (0.5, 2.0)
    assert math.isnan(back.metrics["popularity"]["mrr"])
    assert to_json(back) == text


# --------------------------------------------------------------------------- chart, rich, files


def test_write_report_writes_json_markdown_and_a_real_png(tmp_path) -> None:
    import matplotlib.image

    paths = write_report(_report(), tmp_path / "out")
    assert set(paths) == {"json", "markdown", "png"}
    assert paths["png"].name == "gate_report.png"
    png = paths["png"].read_bytes()
    assert png[:8] == PNG_MAGIC
    assert len(png) > 30_000  # three panels of bars and text, not an empty canvas
    pixels = matplotlib.image.imread(paths["png"])
    assert pixels.shape[0] > 400 and pixels.shape[1] > 1000
    # Not a blank image: many distinct colours (bars, verdict colours, text).
    assert len({tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3).round(2).tolist()}) > 20
    assert json.loads(paths["json"].read_text())["verdict"] == "BLOCKED"
    assert paths["markdown"].read_text().startswith("# Tether gate report")


def test_plot_without_metrics_still_writes_a_png(tmp_path) -> None:
    out = plot(GateReport([]), tmp_path / "deep" / "empty.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_rich_table_has_one_row_per_gate() -> None:
    from rich.console import Console

    report = _report()
    table = to_rich_table(report)
    assert table.row_count == len(report.gates)
    assert len(table.columns) == 8
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert "BLOCKED" in text and text.count("FAIL") >= 2 and "PASS" in text
