"""Fault drills with real components: SIGKILL mid-training, the tracking server stopped mid-flow,
a failing artifact store, ten promoter processes racing on a real MLflow server.

Every drill injects a real fault (a signal to a real process, a stopped server, a storage path that
cannot be written) and then checks what a user would check: the adapter, the registry's versions,
aliases and tags, the Prefect task runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from servers import REPO_ROOT, mlflow_server_for_test
from test_registry import assert_one_consistent_champion
from tiny import make_project as make_tiny_data, reset_mlflow_globals

from tether.config import load_config

pytestmark = pytest.mark.integration

PY = sys.executable


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


def _registry_cfg(tiny, experiment: str = "faults"):
    return load_config(
        profile="test",
        overrides={
            "model": {"base_model": str(tiny["base"]), "cache_dir": str(tiny["cache"]), "device": "cpu"},
            "tracking": {"experiment": experiment},
        },
    )


def _register(cfg, root: Path, tiny, metric: float, key: str):
    """A real register_candidate of the tiny adapter into a fresh run on the configured server."""
    import mlflow

    from tether.eval.gates import beats_reference_gate, perplexity_drift_gate
    from tether.eval.report import GateReport, to_markdown
    from tether.registry import register_candidate
    from tether.tracking import setup_tracking

    uri = setup_tracking(cfg, root)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.get_experiment_by_name(cfg.tracking.experiment).experiment_id)
    client.set_terminated(run.info.run_id)
    gates = [perplexity_drift_gate(101.0, 100.0, 0.05), beats_reference_gate("ndcg_at_10", metric, -1.0, "popularity")]
    report = GateReport(gates=gates, metrics={"candidate": {"ndcg_at_10": metric}})
    return register_candidate(
        cfg, root, run_id=run.info.run_id, adapter_dir=tiny["adapter"], resolved_base=tiny["resolved"],
        gate_report_md=to_markdown(report), gate_results=gates, metrics={"candidate": {"ndcg_at_10": metric}},
        idempotency_key=key,
    )


def _aliases(client, name: str) -> dict[str, str]:
    try:
        return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    except Exception:  # noqa: BLE001 - no such model yet
        return {}


def _versions(client, name: str) -> list[str]:
    return sorted((str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")), key=int)


# --------------------------------------------------------------------------- a. kill -9 mid-training

_ENTRY = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)  # the same kernels in every process: bit-identical arithmetic
    from tether.config import load_config
    from tether.model.train import train

    root, output_dir, resume, model_dir, stall_from = sys.argv[1:6]
    if int(stall_from):
        # Hold the save of checkpoint-<stall_from> half-written (adapter and optimizer on disk, no
        # RNG state, no trainer_state.json) so that the SIGKILL lands mid-save, deterministically.
        from transformers import Trainer
        save_rng = Trainer._save_rng_state
        def stalled(self, out):
            if self.state.global_step >= int(stall_from):
                Path(out, "STALLED").touch()
                time.sleep(120)
            return save_rng(self, out)
        Trainer._save_rng_state = stalled
    cfg = load_config(Path(root) / "params.yaml", overrides={"train": {"output_dir": output_dir}})
    result = train(cfg, Path(root), resume=resume == "1", model_dir=Path(model_dir))
    print("RESULT " + json.dumps({"steps": result.steps, "resumed_from": result.resumed_from}))
    """
)


def _lora_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_sigkill_mid_checkpoint_then_resume_gives_the_uninterrupted_adapter(tmp_path: Path, tiny, monkeypatch) -> None:
    import torch

    root = make_tiny_data(tmp_path / "proj", n_train=40, n_val=4, corpus=False)
    cfg = load_config(profile="test", overrides={
        "train": {"max_steps": 8, "save_every": 2, "eval_every": 2, "learning_rate": 0.02, "lora_dropout": 0.1,
                  "save_total_limit": 3, "target_modules": ["q_proj", "v_proj"]},
        "tracking": {"experiment": "kill-drill"},
    })
    (root / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    entry = tmp_path / "entry.py"
    entry.write_text(_ENTRY)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own sqlite store

    def run(out: str, resume: bool, stall_from: int = 0) -> subprocess.Popen:
        return subprocess.Popen(
            [PY, str(entry), str(root), str(root / out), "1" if resume else "0", str(tiny["base"]), str(stall_from)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root,
        )

    def finish(proc: subprocess.Popen) -> dict:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]
        return json.loads(out.rsplit("RESULT ", 1)[1].splitlines()[0])

    straight = finish(run("straight", resume=False))
    assert straight["steps"] == 8 and straight["resumed_from"] is None

    victim = run("crashed", resume=False, stall_from=4)
    crashed = root / "crashed"
    deadline = time.monotonic() + 240
    while not (crashed / "checkpoint-4" / "STALLED").exists():
        assert victim.poll() is None, victim.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "the victim never reached checkpoint-4"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # a real kill -9 of a real training process, mid-save
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert (crashed / "checkpoint-2" / "trainer_state.json").exists()
    assert not (crashed / "checkpoint-4" / "trainer_state.json").exists()  # the half-written checkpoint
    assert not (crashed / "adapter").exists()

    resumed = finish(run("crashed", resume=True))
    # The half-written checkpoint-4 is skipped; training continues from checkpoint-2.
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 8
    a, b = _lora_tensors(root / "straight" / "adapter"), _lora_tensors(crashed / "adapter")
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)

    # MLflow: the resume closes the killed run (KILLED, not left RUNNING forever) and links both
    # ways; the resumed run records where it resumed.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{(root / 'mlflow' / 'mlflow.db').as_posix()}")
    runs = client.search_runs([client.get_experiment_by_name("kill-drill").experiment_id], order_by=["start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "KILLED", "FINISHED"]
    killed, again = runs[1], runs[2]
    assert again.data.tags["resumed_from"] == "checkpoint-2"
    assert again.data.tags["resumes_run"] == killed.info.run_id
    assert killed.data.tags["resumed_by"] == again.info.run_id
    assert "resumes_run" not in runs[0].data.tags  # a fresh run resumes nothing


# --------------------------------------------------------------------------- b. tracking server stopped mid-flow

PERMISSIVE = {
    "max_ppl_drift": 100.0, "min_margin_vs_popularity": -1.0, "min_margin_vs_base": -1.0,
    "min_margin_vs_champion": -1.0, "valid_item_rate_floor": 0.0,
    "health_tolerances": {"distinct_1": 1.0, "distinct_2": 1.0, "repeated_4gram_rate": 1.0, "empty_rate": 1.0,
                          "length_ratio": [0.0, 1000.0]},
}


def flow_overrides(tiny_base: Path) -> dict:
    """The tiny-model settings of tests/pipeline/test_flow_training.py: seconds per stage, permissive gates."""
    return {
        "model": {"base_model": str(tiny_base)},
        "examples": {"token_stats": False},
        "eval": {"n_users": 4, "n_negatives": 4, "perplexity": {"window": 64, "stride": 32},
                 "generation": {"n_prompts": 1, "max_new_tokens": 4, "valid_item_users": 2,
                                "valid_item_max_new_tokens": 4}},
        "gates": PERMISSIVE,
    }


def _task_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_tracking_server_stopped_mid_flow_retries_fails_cleanly_then_recovers(
    tmp_path: Path, tiny, prefect_harness, monkeypatch
) -> None:
    import mlflow

    import flows.training_pipeline as pipeline
    from project import make_project
    from tether.tracking import TrackingUnavailableError

    with mlflow_server_for_test(tmp_path / "server", monkeypatch) as server:
        monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
        root = make_project(tmp_path / "proj", overrides=flow_overrides(tiny["base"]))
        cfg = load_config(root / "params.yaml")
        name = cfg.registry.name
        client = mlflow.MlflowClient(server.uri)
        # A champion already exists: the drill must leave it where it is.
        seeded = _register(cfg, root, tiny, 0.0, key="seed")
        from tether.registry import promote

        promote(cfg, seeded, all_gates_passed=True, candidate_metric=0.0, root=root)
        before = {"versions": _versions(client, name), "aliases": _aliases(client, name)}
        assert before == {"versions": ["1"], "aliases": {"champion": "1", "challenger": "1"}}

        # The fault: the server stops the moment the gate task completes, i.e. after training,
        # evaluation and gating logged to it, and before registration (a real Prefect state hook).
        stopped = []

        def stop_server(task, task_run, state):
            server.stop()
            stopped.append(time.monotonic())

        original_gate = pipeline.gate_task
        monkeypatch.setattr(pipeline, "gate_task", original_gate.with_options(on_completion=[stop_server]))
        t0 = time.monotonic()
        state = pipeline.training_pipeline(root=str(root), return_state=True)
        failed_after = time.monotonic() - t0
        assert stopped, "the hook never ran"
        assert state.is_failed()
        exc = state.result(raise_on_failure=False)
        # A clean failure: one line that names the server and the registry's state, no HTTP retry chain.
        assert isinstance(exc, TrackingUnavailableError), repr(exc)
        text = str(exc)
        assert server.uri in text and "unreachable" in text and "No complete version was registered" in text
        assert "\n" not in text and "Traceback" not in text and "HTTPConnectionPool" not in text
        assert exc.__cause__ is None and exc.__suppress_context__
        # Prefect retried the registry task (retries=2): three attempts, then Failed.
        runs = {r.name.rsplit("-", 1)[0]: r for r in _task_runs(state.state_details.flow_run_id)}
        register = runs["register-and-promote"]
        assert register.run_count == 3 and register.state.is_failed(), (register.run_count, register.state)
        assert runs["gate"].state.is_completed() and runs["fine-tune"].state.is_completed()

        # The registry is unchanged: no new version, aliases where they were.
        server.start()
        after = {"versions": _versions(client, name), "aliases": _aliases(client, name)}
        assert after == before
        assert "promotion-lock" not in str([m.name for m in client.search_registered_models()])

        # The seeded champion stands for one measured under this protocol: give it the
        # protocol hash the failed run's gate computed (else the candidate is blocked as
        # incomparable, see test_champion_protocol.py).
        (report_json,) = (root / "outputs" / "gate").glob("*/gate_report.json")
        protocol_hash = json.loads(report_json.read_text())["lineage"]["eval_protocol_hash"]
        client.set_model_version_tag(name, "1", "eval_protocol_hash", protocol_hash)

        # The server is back: the same flow, re-run, registers and promotes.
        monkeypatch.setattr(pipeline, "gate_task", original_gate)
        again = pipeline.training_pipeline(root=str(root), generate=False)
        assert again["registry"]["decision"].promoted
        assert _versions(client, name) == ["1", "2"]
        assert _aliases(client, name) == {"champion": "2", "challenger": "2"}
        assert client.get_model_version(name, "2").tags["tether.registration"] == "complete"
        print(f"failed cleanly {failed_after:.0f} s after the flow started")


# --------------------------------------------------------------------------- c. failed artifact upload


def test_failed_artifact_upload_registers_nothing(tmp_path: Path, tiny, monkeypatch) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from tether.tracking import TrackingUnavailableError

    with mlflow_server_for_test(tmp_path / "server", monkeypatch) as server:
        root = tmp_path / "proj"
        root.mkdir()
        cfg = _registry_cfg(tiny)
        name = cfg.registry.name
        client = mlflow.MlflowClient(server.uri)
        first = _register(cfg, root, tiny, 0.3, key="flow-run-A")
        from tether.registry import promote

        promote(cfg, first, all_gates_passed=True, candidate_metric=0.3, root=root)
        before = {"versions": _versions(client, name), "aliases": _aliases(client, name)}

        # The fault: the server's artifact store cannot be written (its root is now a file), so
        # the upload of the adapter fails on the server side with an HTTP 500.
        hidden = server.artifacts.with_name("artifacts.hidden")
        server.artifacts.rename(hidden)
        server.artifacts.write_text("not a directory")
        with pytest.raises((MlflowException, TrackingUnavailableError)) as err:
            _register(cfg, root, tiny, 0.5, key="flow-run-B")
        # The server answers 500 (or drops the upload mid-body): either way the message says where to look.
        text = str(err.value)
        assert "500" in text or "artifact store may be unwritable" in text, text
        assert "is unreachable" not in text
        assert {"versions": _versions(client, name), "aliases": _aliases(client, name)} == before
        assert "promotion-lock" not in str([m.name for m in client.search_registered_models()])

        # Storage is back: the same flow run (same idempotency key) registers exactly once.
        server.artifacts.unlink()
        hidden.rename(server.artifacts)
        second = _register(cfg, root, tiny, 0.5, key="flow-run-B")
        again = _register(cfg, root, tiny, 0.5, key="flow-run-B")
        assert str(second.version) == str(again.version) == "2"
        assert _versions(client, name) == ["1", "2"]
        mv = client.get_model_version(name, "2")
        assert mv.tags["tether.registration"] == "complete" and mv.tags["adapter_sha256"]


# --------------------------------------------------------------------------- d. ten promoter processes

_PROMOTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tether.config import load_config
    from tether.registry import promote
    import mlflow.store.model_registry.rest_store  # imported before the start signal, not during the race
    root, version, metric, passed, go = sys.argv[1:6]
    cfg = load_config(Path(root) / "params.yaml")
    Path(go + "." + version).touch()  # ready
    while not Path(go).exists():
        time.sleep(0.005)
    d = promote(cfg, version, all_gates_passed=passed == "1", candidate_metric=float(metric),
                reasons=[] if passed == "1" else ["perplexity drift"], root=Path(root))
    print("DECISION", version, d.decision, d.champion_before, d.champion_after)
    """
)


def test_ten_promoter_processes_on_a_real_server_leave_one_consistent_champion(tmp_path: Path, tiny, monkeypatch) -> None:
    import mlflow

    from tether.registry import TAG_COMPLETE, verdict_tags
    from tether.eval.gates import beats_reference_gate, perplexity_drift_gate

    procs: list[subprocess.Popen] = []
    with mlflow_server_for_test(tmp_path / "server", monkeypatch) as server:
        try:
            root = tmp_path / "proj"
            root.mkdir()
            cfg = _registry_cfg(tiny)
            (root / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            name = cfg.registry.name
            client = mlflow.MlflowClient(server.uri)
            metrics = [0.31, 0.47, 0.22, 0.52, 0.40, 0.38, 0.60, 0.29, 0.45, 0.33]
            passed = [True, True, True, True, True, True, False, True, True, True]  # 0.60 fails a gate
            # One real registration; nine copies of it with their own metric and verdict (promotion
            # reads only tags and aliases).
            first = client.get_model_version(name, _register(cfg, root, tiny, metrics[0], key="race-0").version)
            versions = [str(first.version)]
            for i, (m, p) in enumerate(zip(metrics[1:], passed[1:]), 1):
                tags = {k: v for k, v in first.tags.items() if k != TAG_COMPLETE and not k.startswith("gate")}
                drift = perplexity_drift_gate(103.0 if p else 130.0, 100.0, 0.05)
                tags.update(verdict_tags([drift, beats_reference_gate("ndcg_at_10", m, 0.2, "popularity")]))
                tags.update({"primary_metric_value": repr(m), "idempotency_key": f"race-{i}"})
                mv = client.create_model_version(name, first.source, run_id=first.run_id, tags=tags,
                                                  model_id=first.model_id or first.source.removeprefix("models:/"))
                client.set_model_version_tag(name, mv.version, TAG_COMPLETE, "complete")
                versions.append(str(mv.version))

            script = tmp_path / "promoter.py"
            script.write_text(_PROMOTER)
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_TRACKING_URI": server.uri,
                   "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "OMP_NUM_THREADS": "1"}
            go = tmp_path / "go"
            procs = [
                subprocess.Popen([PY, str(script), str(root), v, repr(m), "1" if p else "0", str(go)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                for v, m, p in zip(versions, metrics, passed)
            ]
            deadline = time.monotonic() + 180
            while not all(Path(f"{go}.{v}").exists() for v in versions):  # every process imported and waiting
                assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            go.touch()  # they start together
            outputs = [p.communicate(timeout=240)[0] for p in procs]
            for p, out in zip(procs, outputs):
                assert p.returncode == 0, out[-3000:]
            late = [out for out in outputs if "DECISION" not in out]
            assert not late

            tags = {v: client.get_model_version(name, v).tags for v in versions}
            best = max((m, v) for v, m, p in zip(versions, metrics, passed) if p)[1]
            aliases = _aliases(client, name)
            assert aliases["champion"] == best
            assert aliases["challenger"] == versions[-1]
            assert_one_consistent_champion(tags, best)
            assert "promotion-lock" not in str([m.name for m in client.search_registered_models()])
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()


_LEASE_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import mlflow
    from tether.config import load_config
    from tether.registry import promotion_lock
    cfg = load_config(Path(sys.argv[1]))
    with promotion_lock(cfg, mlflow.MlflowClient(sys.argv[2]), sys.argv[2]):
        print("HELD", flush=True)
        time.sleep(600)
    """
)


def test_a_promoter_killed_holding_the_lease_blocks_the_next_no_longer_than_the_lease_timeout(
    tmp_path: Path, tiny, monkeypatch
) -> None:
    """kill -9 of a process inside the registry lease (a remote store's lock): the lease stays in
    the registry, the next promotion waits for it to expire (registry.lock_timeout_s), breaks it,
    and promotes; it neither fails nor waits for ever."""
    import mlflow

    from tether.registry import promote

    timeout_s = 8.0
    with mlflow_server_for_test(tmp_path / "server", monkeypatch) as server:
        root = tmp_path / "proj"
        root.mkdir()
        cfg = _registry_cfg(tiny)
        cfg = load_config(profile="test", overrides={**{k: cfg.model_dump(mode="json")[k] for k in ("model", "tracking")},
                                                     "registry": {"lock": "registry", "lock_timeout_s": timeout_s}})
        (root / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        cfg = load_config(root / "params.yaml")
        version = _register(cfg, root, tiny, 0.4, key="lease-0").version
        client = mlflow.MlflowClient(server.uri)
        lease = f"{cfg.registry.name}.promotion-lock"

        script = tmp_path / "holder.py"
        script.write_text(_LEASE_HOLDER)
        holder = subprocess.Popen([PY, str(script), str(root / "params.yaml"), server.uri], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        try:
            assert holder.stdout.readline().strip() == "HELD", holder.stdout.read()[-3000:]
            held_at = time.monotonic()
            holder.send_signal(signal.SIGKILL)  # dies inside the lease: no finally, no cleanup
            holder.wait(10)
        finally:
            if holder.poll() is None:
                holder.kill()
        assert client.get_registered_model(lease) is not None  # the dead holder's lease is still there

        decision = promote(cfg, str(version), all_gates_passed=True, candidate_metric=0.4, reasons=[], root=root)
        waited = time.monotonic() - held_at
        assert decision.decision == "champion", decision
        assert _aliases(client, cfg.registry.name)["champion"] == str(version)
        # it waited for the lease to expire (it was not ignored) and not much longer
        assert timeout_s - 1.0 <= waited <= timeout_s + 15.0, waited
        assert lease not in [m.name for m in client.search_registered_models()]
