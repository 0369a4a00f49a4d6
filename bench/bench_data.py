"""Benchmark the data path on a 1M-interaction log: rows/s for load, validate, clean, split, examples.

    .venv/bin/python bench/bench_data.py [--rows 1000000] [--out bench/results/data.json]

Targets on the 2-core reference machine: GX validation of 1M rows <= 30 s;
clean + split >= 200k rows/s. The table is printed and the JSON written with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tether.env import configure_environment  # noqa: E402

configure_environment(ROOT)

import pandas as pd  # noqa: E402

from tether.config import load_config  # noqa: E402
from tether.data.clean import clean  # noqa: E402
from tether.data.examples import build_examples  # noqa: E402
from tether.data.generate import make_large_log  # noqa: E402
from tether.data.loaders import load_raw  # noqa: E402
from tether.data.split import assert_no_leakage, leave_last_out  # noqa: E402
from tether.data.validate import validate  # noqa: E402


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_movielens_latest(interactions: pd.DataFrame, items: pd.DataFrame, out: Path) -> None:
    """Write the canonical tables as MovieLens-latest files (what a user would hand us)."""
    out.mkdir(parents=True, exist_ok=True)
    interactions.rename(columns={"user_id": "userId", "item_id": "movieId"})[
        ["userId", "movieId", "rating", "timestamp"]
    ].to_csv(out / "ratings.csv", index=False)
    items.rename(columns={"item_id": "movieId"})[["movieId", "title", "genres", "description"]].to_csv(
        out / "movies.csv", index=False
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="interactions in the generated log")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data.json")
    args = ap.parse_args()

    cfg = load_config()
    timings: dict[str, tuple[float, int]] = {}

    t = time.perf_counter()
    interactions, items = make_large_log(args.rows, seed=cfg.seed)
    timings["generate (not a stage)"] = (time.perf_counter() - t, len(interactions))

    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = Path(tmp) / "raw"
        write_movielens_latest(interactions, items, raw_dir)
        t = time.perf_counter()
        raw = load_raw(raw_dir, cfg.ingest)
        timings["load (CSV -> canonical)"] = (time.perf_counter() - t, len(raw.interactions))

    import great_expectations  # noqa: F401  -- import time (~5 s) is not validation time

    t = time.perf_counter()
    result = validate(raw, cfg.validation)
    timings["validate (GX, 3 suites)"] = (time.perf_counter() - t, len(raw.interactions))
    acc = result.accounting["interactions"]
    assert acc["rows_in"] == acc["kept"] + acc["quarantined"]

    t = time.perf_counter()
    cleaned = clean(result.interactions, result.items, cfg.clean)
    t_clean = time.perf_counter() - t
    timings["clean"] = (t_clean, len(result.interactions))

    t = time.perf_counter()
    split = leave_last_out(cleaned.interactions)
    assert_no_leakage(split)
    t_split = time.perf_counter() - t
    timings["split (+ leakage check)"] = (t_split, len(cleaned.interactions))
    timings["clean + split"] = (t_clean + t_split, len(result.interactions))

    t = time.perf_counter()
    examples = build_examples(split, cleaned.items, cfg.examples)
    timings["examples"] = (time.perf_counter() - t, len(split))

    rows = []
    print(f"\nData path on {args.rows:,} interactions ({len(items):,} items), {os.cpu_count()} cores")
    print(f"{'stage':<26}{'seconds':>10}{'rows':>12}{'rows/s':>14}")
    for name, (sec, n) in timings.items():
        rate = n / sec if sec > 0 else float("inf")
        rows.append({"stage": name, "seconds": round(sec, 3), "rows": n, "rows_per_s": round(rate)})
        print(f"{name:<26}{sec:>10.2f}{n:>12,}{rate:>14,.0f}")
    gx_s = timings["validate (GX, 3 suites)"][0]
    cs_rate = timings["clean + split"][1] / timings["clean + split"][0]
    targets = {
        "validate_1m_rows_s <= 30": {"value": round(gx_s, 2), "met": gx_s <= 30},
        "clean_split_rows_per_s >= 200000": {"value": round(cs_rate), "met": cs_rate >= 200_000},
    }
    print(f"\nexamples built: {len(examples):,}; peak RSS {_peak_rss_mib():,.0f} MiB")
    for name, t_ in targets.items():
        print(f"target {name}: {t_['value']} -> {'met' if t_['met'] else 'NOT met'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "data_path",
                "command": "python bench/bench_data.py --rows %d" % args.rows,
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                    "pandas": pd.__version__,
                },
                "rows": args.rows,
                "stages": rows,
                "examples": len(examples),
                "accounting": result.accounting,
                "peak_rss_mib": round(_peak_rss_mib()),
                "targets": targets,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
