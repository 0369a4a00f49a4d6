"""Orchestration overhead of the demo: wall time outside the stage functions (not a test).

    .venv/bin/python bench/bench_orchestration.py [--profile P] [--no-base-cache]

Runs the whole ``training_pipeline`` flow once, in this process, exactly as ``tether demo``
does (Prefect ephemeral server, sqlite MLflow, DVC), with a timer around every ``tether``
function the tasks and flows call (the outermost call only, so nested stage functions are
not counted twice). Then:

* **overhead** = flow wall time - time inside the stage functions: what Prefect (engine,
  ephemeral server, task runs, result handling, artifacts, logging) adds. Target <= 5%.
* **core compute** = training + candidate/base scoring + perplexity + generation, the
  issue's narrow definition; everything else (data stages, model loading, bootstrap,
  MLflow logging, registration) is listed stage by stage, so both readings are possible.

The base model's evaluation is cached on disk after the first run; ``--no-base-cache``
removes it (and points Prefect's result storage at an empty directory) so the run is a
fresh machine's first demo, except for the one-off GGUF conversion (~25 s, not repeated here). Prints a table and writes
``bench/results/orchestration.json``.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if "--no-base-cache" in sys.argv:  # a fresh machine: Prefect's result cache too, before Prefect is imported
    import tempfile

    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = tempfile.mkdtemp(prefix="tether-bench-results-")

from tether.env import configure_environment  # noqa: E402

configure_environment(ROOT)

import torch  # noqa: E402

_local = threading.local()
TIMES: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def _timed(name: str, fn: Any) -> Any:
    """Wrap ``fn`` so the outermost call's duration is added to ``TIMES[name]``."""
    if getattr(fn, "_bench_timed", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_local, "depth", 0)
        _local.depth = depth + 1
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _local.depth = depth
            if depth == 0:
                TIMES[name] += time.perf_counter() - started
                CALLS[name] += 1

    wrapper._bench_timed = True  # type: ignore[attr-defined]
    return wrapper


def instrument(modules: list[Any]) -> list[str]:
    """Replace every ``tether`` function (and ``tether`` module's functions) the modules reference."""
    wrapped = []
    for mod in modules:
        for attr, obj in list(vars(mod).items()):
            if inspect.isfunction(obj) and obj.__module__.startswith("tether."):
                setattr(mod, attr, _timed(f"{obj.__module__.removeprefix('tether.')}.{obj.__name__}", obj))
                wrapped.append(f"{mod.__name__}.{attr}")
            elif inspect.ismodule(obj) and obj.__name__.startswith("tether."):
                for fattr, fobj in list(vars(obj).items()):
                    if inspect.isfunction(fobj) and fobj.__module__ == obj.__name__ and not fattr.startswith("_"):
                        setattr(obj, fattr, _timed(f"{obj.__name__.removeprefix('tether.')}.{fattr}", fobj))
                        wrapped.append(f"{obj.__name__}.{fattr}")
    return wrapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="config profile (default: params.yaml alone, the demo)")
    ap.add_argument("--no-base-cache", action="store_true", help="drop the cached base evaluation first")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "orchestration.json")
    args = ap.parse_args()

    from tether.config import load_config

    cfg = load_config(profile=args.profile)
    if args.no_base_cache:  # the base's evaluation and its self-samples, as on a fresh machine
        shutil.rmtree(cfg.model.resolved_cache_dir() / "eval-cache", ignore_errors=True)
        shutil.rmtree(cfg.model.resolved_cache_dir() / "self-samples", ignore_errors=True)

    import flows.data_pipeline
    import flows.training_pipeline
    import tasks.data
    import tasks.evaluate
    import tasks.model

    wrapped = instrument([tasks.data, tasks.model, tasks.evaluate, flows.data_pipeline, flows.training_pipeline])
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = flows.training_pipeline.training_pipeline(profile=args.profile)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()

    inside = sum(TIMES.values())
    timings = result["evaluation"].timings
    train_s = result["train"].train_seconds

    def part(system: str, key: str) -> float:
        # The base is evaluated by its own (cached) task: its timings come with the flow's result.
        t = result.get("base_timings", {}) if system == "base" else timings.get(system, {})
        return float(t.get(key, 0.0)) if isinstance(t, dict) else 0.0

    core = train_s + sum(part(s, k) for s in ("candidate", "base")
                         for k in ("scoring", "panel", "generation", "valid_items"))
    # The drift panel's cost: measuring it for base and candidate, drawing the base's self-samples,
    # and guarded selection's trials (validation ranking + the panel's selection half).
    selection_s = float((result["train"].selection or {}).get("seconds", 0.0))
    panel_s = part("candidate", "panel") + part("base", "panel") + part("base", "self_samples")
    overhead = wall - inside
    out = {
        "benchmark": "orchestration",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load_average_before": load_before, "load_average_after": load_after},
        "profile": args.profile, "base_cache_dropped": args.no_base_cache,
        "base_cache_hit": result["evaluation"].base_cache.get("hit"),
        "wall_seconds": wall, "inside_stage_functions_seconds": inside,
        "overhead_seconds": overhead, "overhead_share": overhead / wall,
        "core_compute_seconds": core, "core_compute_share": core / wall,
        "train_seconds": train_s, "evaluation_timings": timings,
        "drift_panel_seconds": panel_s, "drift_panel_share": panel_s / wall,
        "selection_seconds": selection_s, "selection_share": selection_s / wall,
        "drift": {k: v["drift"] for k, v in result["evaluation"].comparisons.get("drift_panel", {}).items()},
        "golden_kl": (result["evaluation"].comparisons.get("golden_kl") or {}).get("kl"),
        "selection_chosen": (result["train"].selection or {}).get("chosen"),
        "stages": {k: {"seconds": v, "calls": CALLS[k]} for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1])},
        "instrumented": wrapped, "verdict": result["report"].verdict,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))

    print(f"\n{'stage function':<44}{'calls':>6}{'seconds':>10}{'share':>8}")
    for name, v in out["stages"].items():
        if v["seconds"] >= 0.05:
            print(f"{name:<44}{v['calls']:>6}{v['seconds']:>10.1f}{v['seconds'] / wall:>8.1%}")
    print(f"{'inside stage functions':<50}{inside:>10.1f}{inside / wall:>8.1%}")
    print(f"{'orchestration overhead (wall - inside)':<50}{overhead:>10.1f}{overhead / wall:>8.1%}   target <= 5%")
    print(f"{'core compute (train, scoring, ppl, generation)':<50}{core:>10.1f}{core / wall:>8.1%}")
    print(f"{'drift panel (base + candidate + self-samples)':<50}{panel_s:>10.1f}{panel_s / wall:>8.1%}")
    print(f"{'guarded selection (trials)':<50}{selection_s:>10.1f}{selection_s / wall:>8.1%}")
    print(f"{'flow wall time':<50}{wall:>10.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
