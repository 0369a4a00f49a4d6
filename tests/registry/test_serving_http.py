"""``tether serve-model`` over real HTTP: MLflow's scoring server on the tiny champion (project environment).

The same requests as the fresh-environment test (tests/registry/test_serving_fresh_env.py, slow tier),
here in seconds: rankings and a generation equal to the in-process model's, every bad request
answered 4xx with a message (never a 500, the server keeps serving), SIGTERM ends every process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from serving_http import BAD_REQUESTS, GENERATE_REQUEST, RANK_REQUEST, ServerProcess, alive_in_session, post
from servers import free_port
from test_serving_delivery import register
from tiny import reset_mlflow_globals

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


def in_process(cfg, root: Path) -> tuple[dict, dict]:
    """The champion's answers to RANK_REQUEST and GENERATE_REQUEST, computed in this process."""
    from tether.registry import load_champion

    model = load_champion(cfg, root=root)
    ranked = model.predict(pd.DataFrame(RANK_REQUEST["dataframe_records"]), params=RANK_REQUEST["params"])
    generated = model.predict(pd.DataFrame(GENERATE_REQUEST["dataframe_records"]), params=GENERATE_REQUEST["params"])
    return ranked.iloc[0].to_dict(), generated.iloc[0].to_dict()


def check_answers(url: str, ranked: dict, generated: dict) -> tuple[dict, dict]:
    """POST the good requests; their answers equal the in-process ones. Returns both response bodies."""
    status, body = post(f"{url}/invocations", RANK_REQUEST)
    assert status == 200, body
    got = body["predictions"][0]
    assert got["mode"] == "ranked" and got["recommendations"] == list(ranked["recommendations"])
    assert len(got["recommendations"]) == RANK_REQUEST["params"]["top_k"]
    np.testing.assert_allclose(got["scores"], ranked["scores"], atol=1e-4)
    status, gen = post(f"{url}/invocations", GENERATE_REQUEST)
    assert status == 200, gen
    g = gen["predictions"][0]
    assert g["mode"] == "generated" and g["scores"] == [] and g["recommendations"] == list(generated["recommendations"])
    assert isinstance(g["recommendations"][0], str)
    return body, gen


def check_bad_requests(server: ServerProcess) -> list[dict]:
    """Every bad request gets a 4xx whose message names the problem; the server is alive after each."""
    answers = []
    for name, payload, word in BAD_REQUESTS:
        status, body = post(f"{server.url}/invocations", payload)
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        assert 400 <= status < 500, (name, status, body)
        assert message and word in message, (name, message[:500])
        code = body.get("error_code") if isinstance(body, dict) else None
        assert code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), (name, body)
        answers.append({"case": name, "status": status, "error_code": code, "message": message[:300]})
    assert server.ping() and server.proc.poll() is None
    return answers


def test_tether_serve_model_ranks_generates_and_refuses_bad_requests(registry_project, tiny, tmp_path: Path) -> None:
    cfg, root = registry_project
    register(cfg, root, tiny["resolved"], tiny["adapter"], key="http")
    ranked, generated = in_process(cfg, root)
    (root / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    port = free_port()
    argv = [str(Path(sys.executable).parent / "tether"), "serve-model", "--params", str(root / "params.yaml"), "--port", str(port)]
    server = ServerProcess(argv, env=dict(os.environ), cwd=tmp_path, log=tmp_path / "serve.log", port=port)
    try:
        server.wait_ready(240)
        check_answers(server.url, ranked, generated)
        check_bad_requests(server)
        check_answers(server.url, ranked, generated)  # still serving, same answers
    finally:
        server.stop()
    assert "serving models:/tether-recommender@champion (version 1)" in server.tail()
    assert alive_in_session(server.proc.pid) == []


def test_serve_model_without_a_champion_says_so(registry_project, tmp_path: Path) -> None:
    import subprocess

    cfg, root = registry_project
    (root / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "tether"), "serve-model", "--params", str(root / "params.yaml")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    said = " ".join(out.stdout.split())  # rich wraps long lines
    assert out.returncode == 2, out.stdout + out.stderr
    assert "models:/tether-recommender@champion is not in the registry" in said and "`tether run`" in said
