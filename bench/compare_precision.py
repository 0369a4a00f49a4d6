"""Compare the gate numbers of two demo runs that differ only in ``train.precision`` (not a test).

The cpu-bf16 training precision is adopted only if the gates read the same from its adapter as
from the float32 one: every gated number within the noise of the float32 run (half the width of
its 95% interval where the gate has one; half the tolerance for the generation-health differences;
a tenth of the base's length for the length ratio) and the same verdict. Run the demo twice in two clones of one commit, one with
``train.precision: fp32`` and one with ``auto``, then::

    python bench/compare_precision.py /tmp/prec/fp32 /tmp/prec/bf16

Prints a table and writes ``bench/results/precision.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _run(project: Path) -> dict[str, Any]:
    gate = json.loads((project / "outputs/gate/gate_report.json").read_text())
    metrics = json.loads((project / "outputs/eval/metrics.json").read_text())
    log = (project / "demo.log").read_text() if (project / "demo.log").exists() else ""
    trained = re.search(r"trained (\d+) steps in (\d+) s \((\d+) tokens/s on \w+, ([\w-]+)\)", log)
    wall = re.search(r"wall=(\d+)", log)
    return {"gate": gate, "metrics": metrics,
            "train": {"steps": int(trained[1]), "seconds": int(trained[2]), "tokens_per_second": int(trained[3]),
                      "precision": trained[4]} if trained else None,
            "wall_seconds": int(wall[1]) if wall else None}


def compare(ref: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Per gated number: both values, the difference, the float32 run's noise and whether it is within."""
    n_users = ref["metrics"]["n_users"]
    rows = []
    for a, b in zip(ref["gate"]["gates"], other["gate"]["gates"]):
        if (a["gate"], a["metric"]) != (b["gate"], b["metric"]):
            raise SystemExit(f"the two runs gate different things: {a['gate']}/{a['metric']} vs {b['gate']}/{b['metric']}")
        if a["candidate"] is None or b["candidate"] is None:
            continue
        diff = b["candidate"] - a["candidate"]
        if a.get("interval"):
            noise, kind = (a["interval"][1] - a["interval"][0]) / 2, "CI half-width"
            if a["gate"] == "perplexity_drift":  # the interval is of the drift; compare drifts
                diff = b["candidate"] / b["reference"] - a["candidate"] / a["reference"]
        elif isinstance(a["threshold"], list):  # length_ratio's band [0.5, 2.0]
            noise, kind = 0.1, "a tenth of the base's length"
        else:
            noise, kind = abs(a["threshold"] or 0) / 2, "half the tolerance"
        rows.append({"gate": a["gate"], "metric": a["metric"], "fp32": a["candidate"], "other": b["candidate"],
                     "difference": diff, "noise": noise, "noise_kind": kind, "within_noise": abs(diff) <= noise,
                     "passed": [a["passed"], b["passed"]]})
    m_ref, m_other = ref["metrics"]["candidate"], other["metrics"]["candidate"]
    headline = {k: {"fp32": m_ref[k], "other": m_other[k], "difference": m_other[k] - m_ref[k]}
                for k in ("ndcg_at_10", "hr_at_10", "mrr", "valid_item_rate", "exact_title_rate")}
    return {"gates": rows, "headline": headline, "n_users": n_users,
            "same_verdict": ref["gate"]["verdict"] == other["gate"]["verdict"],
            "verdicts": [ref["gate"]["verdict"], other["gate"]["verdict"]],
            "all_within_noise": all(r["within_noise"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32_project", type=Path)
    parser.add_argument("other_project", type=Path)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision.json"))
    args = parser.parse_args()
    ref, other = _run(args.fp32_project), _run(args.other_project)
    result = compare(ref, other)
    print(f"{'gate':<18}{'metric':<22}{'fp32':>10}{'other':>10}{'diff':>10}{'noise':>10}  within")
    for r in result["gates"]:
        print(f"{r['gate']:<18}{r['metric']:<22}{r['fp32']:>10.4f}{r['other']:>10.4f}{r['difference']:>+10.4f}"
              f"{r['noise']:>10.4f}  {r['within_noise']} ({r['noise_kind']})")
    for k, h in result["headline"].items():
        print(f"{k:<40}{h['fp32']:>10.4f}{h['other']:>10.4f}{h['difference']:>+10.4f}")
    print(f"verdicts {result['verdicts']}; every gated number within the float32 run's noise: {result['all_within_noise']}")
    print(f"training: fp32 {ref['train']}, other {other['train']}; demo wall {ref['wall_seconds']} s vs {other['wall_seconds']} s")
    report = {"benchmark": "precision", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "bench/compare_precision.py", *sys.argv[1:]]),
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
              "train": {"fp32": ref["train"], "other": other["train"]},
              "wall_seconds": {"fp32": ref["wall_seconds"], "other": other["wall_seconds"]},
              "lineage": {"fp32": ref["gate"].get("lineage"), "other": other["gate"].get("lineage")},
              **result}
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
