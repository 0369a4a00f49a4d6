"""The drift gate at its edge: 4.9% real drift passes, 5.1% blocks, and `tether gate` agrees.

A damaged tiny adapter drifts well over 5% on a corpus. Scaling its LoRA update (what guarded
selection does) moves the drift continuously, so a bisection over the scale finds adapters whose
*measured* drift is 4.9% and 5.1% on the gate's documents. The real evaluate stage and the real
gates judge both; then the CLI's gate command re-judges the saved evaluation and must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_drift_gate import _train_adapter, setup  # noqa: F401  (the module fixture)
from test_evaluate import eval_config

from tether.eval.evaluate import evaluate_run
from tether.eval.gating import run_gates

pytestmark = pytest.mark.integration


def _scaled(adapter: Path, scale: float, out: Path) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in adapter.iterdir():
        if f.name != "adapter_model.safetensors":
            shutil.copy2(f, out / f.name)
    state = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({k: v * scale if "lora_B" in k else v for k, v in state.items()}, str(out / "adapter_model.safetensors"))
    return out


def _drift(setup, adapter: Path, cfg) -> tuple[float, object]:
    evaluation = evaluate_run(cfg, setup["root"], adapter, model_dir=setup["model"], progress=False)
    return evaluation.comparisons["drift_panel"]["corpus"]["drift"], evaluation


def test_the_gate_passes_at_4_9_and_blocks_at_5_1_percent(setup, tmp_path, monkeypatch) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from tether.cli import app

    # Only the corpus: the edge is about one source's number, not the self-samples.
    cfg = eval_config(setup["root"], cache=setup["base"] / "cache",
                      drift_panel=[{"name": "corpus", "source": str(setup["root"] / "corpus"), "max_tokens": None}])
    damaged = _train_adapter(setup, "edge", junk=True, lr=0.05, steps=12)
    full, _ = _drift(setup, damaged, cfg)
    assert full > 0.06, full

    found = {}
    for target in (0.049, 0.051):
        lo, hi = 0.0, 1.0
        for i in range(40):  # drift grows with the scale of the update: bisect to +-0.01 points
            mid = (lo + hi) / 2
            drift, evaluation = _drift(setup, _scaled(damaged, mid, tmp_path / f"s{target}-{i}"), cfg)
            if abs(drift - target) < 1e-4:
                found[target] = evaluation
                break
            lo, hi = (mid, hi) if drift < target else (lo, mid)
        assert target in found, f"no scale gave {target:.1%} drift (last {drift:.4%})"

    for target, evaluation in found.items():
        report, paths = run_gates(cfg, evaluation, {}, tmp_path / f"gate-{target}")
        gate = next(g for g in report.gates if (g.gate, g.metric) == ("perplexity_drift", "corpus"))
        assert gate.passed is (target < 0.05), gate.reason
        measured = evaluation.comparisons["drift_panel"]["corpus"]["drift"]
        assert abs(measured - target) < 1e-4 and gate.threshold == 0.05 and f"{measured:+.2%}" in gate.reason

        # The saved evaluation, judged again by the command line, gives the same verdict on that gate.
        params = tmp_path / f"params-{target}.yaml"
        params.write_text(json.dumps(cfg.model_dump(mode="json")))
        out = tmp_path / f"cli-{target}"
        result = CliRunner().invoke(app, ["gate", "--params", str(params), "--evaluation", str(paths["evaluation"]),
                                          "--out", str(out), "--no-fail"])
        assert result.exit_code == 0, result.output
        verdict = json.loads((out / "verdict.json").read_text())
        assert verdict["gates"]["perplexity_drift.corpus"] is (target < 0.05)
        assert verdict["verdict"] == report.verdict
