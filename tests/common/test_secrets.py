"""No secret ends up in MLflow (params, tags, descriptions, artifacts) or in the logs.

Planted values: secret environment variables (HF_TOKEN, AWS_SECRET_ACCESS_KEY,
MLFLOW_TRACKING_PASSWORD, a database password) and a password inside the tracking URI set in
params.yaml. The whole tiny-model pipeline runs against a real ``mlflow server``; then every
param, tag, description, artifact file, the server's database file, the gate report files and
the captured logs are scanned for the markers.
"""

from __future__ import annotations

import io
import logging
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from servers import MlflowServer, mlflow_client_env
from tiny import build_tiny_model_dir, reset_mlflow_globals

from tether.secrets import install_log_redaction, is_secret_name, redact, redact_tree, redact_uri


@pytest.fixture(autouse=True)
def _restore_mlflow():
    yield from reset_mlflow_globals()


# --------------------------------------------------------------------------- unit


def test_redact_uri_masks_passwords_and_credential_query_parameters() -> None:
    assert redact_uri("postgresql://mlflow:s3cr3t@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact_uri("postgresql+psycopg2://u:p%40ss@h/db?sslmode=require") == "postgresql+psycopg2://u:***@h/db?sslmode=require"
    assert redact_uri("https://:tok123@mlflow.internal/") == "https://:***@mlflow.internal/"
    assert "abc123" not in redact_uri("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc123&versionId=7")
    assert "versionId=7" in redact_uri("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc123&versionId=7")
    for plain in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "/a/path", "file:///x/y"):
        assert redact_uri(plain) == plain


def test_secret_names_and_values(monkeypatch) -> None:
    for name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD", "OPENAI_API_KEY",
                 "AWS_SESSION_TOKEN", "GITHUB_PAT"):
        assert is_secret_name(name), name
    for name in ("TOKENIZERS_PARALLELISM", "HF_HOME", "GIT_AUTHOR_NAME", "MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID"):
        assert not is_secret_name(name), name
    monkeypatch.setenv("HF_TOKEN", "hf_plantedvalue42")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:dbpass99@db/app")
    text = "token hf_plantedvalue42 and dbpass99 in http://u:uripass7@h/x"
    assert redact(text) == "token *** and *** in http://u:***@h/x"
    assert redact_tree({"a": ["hf_plantedvalue42", 3], "hf_plantedvalue42": None}) == {"a": ["***", 3], "***": None}


def test_log_records_are_redacted(monkeypatch, caplog) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_logmarker77")
    install_log_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("tether.test").info("token %s at %s", "hf_logmarker77", "http://u:pw123456@h:1/")
    assert "hf_logmarker77" not in caplog.text and "pw123456" not in caplog.text
    assert "http://u:***@h:1/" in caplog.text


# --------------------------------------------------------------------------- the pipeline


class _Tee(io.TextIOBase):
    """Records what is written and passes it on. Used instead of capfd: Prefect's console handler
    keeps the stream it was created with, and capfd's is closed after the test (later tests' log
    lines then fail to print, and a log_prints flow recurses); this one stays usable."""

    def __init__(self, stream) -> None:
        self.stream, self.seen = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.seen.write(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")


def _scan_files(root: Path, markers: dict[str, str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for label, m in markers.items():
                if m.encode() in data:
                    found.setdefault(label, []).append(str(p))
    return found


def _mlflow_texts(client) -> list[tuple[str, str]]:
    """Every param, tag, description and name the tracking server holds, as (where, text)."""
    out: list[tuple[str, str]] = []
    for exp in client.search_experiments():
        out += [(f"experiment {exp.name}", exp.name), (f"experiment {exp.name} location", exp.artifact_location)]
        out += [(f"experiment tag {k}", f"{k}={v}") for k, v in exp.tags.items()]
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            rid = run.info.run_id
            out.append((f"run {rid} name", run.info.run_name or ""))
            out += [(f"run {rid} param {k}", f"{k}={v}") for k, v in run.data.params.items()]
            out += [(f"run {rid} tag {k}", f"{k}={v}") for k, v in run.data.tags.items()]  # incl. mlflow.note.content
            out += [(f"run {rid} metric {k}", k) for k in run.data.metrics]
        for lm in client.search_logged_models(experiment_ids=[exp.experiment_id]):
            out += [(f"logged model {lm.model_id} param {k}", f"{k}={v}") for k, v in (lm.params or {}).items()]
            out += [(f"logged model {lm.model_id} tag {k}", f"{k}={v}") for k, v in (lm.tags or {}).items()]
    for rm in client.search_registered_models():
        out += [(f"model {rm.name}", rm.name), (f"model {rm.name} description", rm.description or "")]
        out += [(f"model {rm.name} tag {k}", f"{k}={v}") for k, v in rm.tags.items()]
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            out.append((f"version {mv.version} description", mv.description or ""))
            out += [(f"version {mv.version} tag {k}", f"{k}={v}") for k, v in mv.tags.items()]
    return out


def _prefect_logs() -> list[str]:
    from prefect.client.orchestration import get_client

    messages, offset = [], 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(limit=200, offset=offset)
            messages += [log.message for log in page]
            if len(page) < 200:
                return messages
            offset += 200


@pytest.mark.integration
def test_planted_secrets_never_reach_mlflow_or_logs(tmp_path: Path, prefect_harness, monkeypatch, caplog) -> None:
    import mlflow

    from flows.training_pipeline import training_pipeline
    from project import make_project
    from test_faults import flow_overrides

    tag = uuid.uuid4().hex[:10]
    markers = {
        "HF_TOKEN": f"hf_{tag}TOKEN",
        "AWS_SECRET_ACCESS_KEY": f"aws{tag}SECRETKEY",
        "MLFLOW_TRACKING_PASSWORD": f"mlf{tag}PASSWORD",
        "TETHER_DB_PASSWORD": f"db{tag}PASSWORD",
        "uri password": f"uri{tag}PASSWORD",
    }
    server = MlflowServer(tmp_path / "server").start()
    try:
        mlflow_client_env(monkeypatch)
        for name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "TETHER_DB_PASSWORD"):
            monkeypatch.setenv(name, markers[name])
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tether")  # MLflow sends basic auth; the server ignores it
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the config's URI, password and all, is used
        monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
        secret_uri = server.uri.replace("http://", f"http://tether:{markers['uri password']}@")
        tiny = build_tiny_model_dir(tmp_path / "tiny-model")
        overrides = flow_overrides(tiny)
        overrides["tracking"] = {"uri": secret_uri, "experiment": "secrets"}
        root = make_project(tmp_path / "proj", overrides=overrides)
        assert markers["uri password"] in (root / "params.yaml").read_text()  # planted in a config value

        caplog.set_level(logging.INFO)
        stdout, stderr = _Tee(sys.stdout), _Tee(sys.stderr)
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "stderr", stderr)
        result = training_pipeline(root=str(root))
        assert result["registry"]["version"]

        client = mlflow.MlflowClient(server.uri)  # the plain URI: the scan itself must not plant anything
        texts = _mlflow_texts(client)
        leaks = [(where, label) for where, text in texts for label, m in markers.items() if m in (text or "")]
        assert not leaks, leaks
        # Positive controls: the scan saw the run's params and the resolved config, which does carry the URI.
        assert any(" param train.lora_rank" in where for where, _ in texts)
        resolved = list(server.artifacts.rglob("resolved.yaml"))
        assert resolved and "http://tether:***@127.0.0.1" in resolved[0].read_text()
        assert list(server.artifacts.rglob("gate_report.md")) and list(server.artifacts.rglob("tether_model.json"))

        # Every artifact file, the server's whole database, the project's outputs (gate reports).
        for folder in (server.artifacts, root / "outputs"):
            assert not _scan_files(folder, markers), _scan_files(folder, markers)
        db = (server.workdir / "mlflow.db").read_bytes()
        assert not [label for label, m in markers.items() if m.encode() in db]

        # Logs: Python logging records, everything printed, Prefect's stored flow and task logs.
        out, err = stdout.seen.getvalue(), stderr.seen.getvalue()
        logs = {"caplog": caplog.text, "stdout": out, "stderr": err, "prefect": "\n".join(_prefect_logs())}
        leaks = [(where, label, text[max(0, text.index(m) - 300): text.index(m) + 100])
                 for where, text in logs.items() for label, m in markers.items() if m in text]
        assert not leaks, leaks
        assert "gate verdict" in logs["prefect"] and "Loading weights" in logs["stderr"]  # the scans saw real output
    finally:
        server.stop()
