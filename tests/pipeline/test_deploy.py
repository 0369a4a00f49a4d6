"""Scheduling for real: a `prefect server start` process, prefect.yaml deployed to it, `tether serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.deploy import build_deployment, free_port, load_deployment_spec, local_server
from tether.config import REPO_ROOT

pytestmark = pytest.mark.integration

FULL_NAME = "training_pipeline/nightly"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on a free port with its own PREFECT_HOME (stopped at teardown)."""
    home = tmp_path_factory.mktemp("prefect-home")
    with local_server(port=free_port(), home=home, timeout=90) as url:
        yield url, home


def _env(url: str, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PREFECT_API_URL": url, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    return env


def _read(url: str, name: str = FULL_NAME):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _cron(schedules) -> list[tuple[str, str | None, bool]]:
    return [(s.schedule.cron, s.schedule.timezone, s.active) for s in schedules]


def test_prefect_yaml_deploys_the_nightly_schedule(server) -> None:
    url, home = server
    env = _env(url, home)
    spec = load_deployment_spec()
    assert spec["schedules"][0]["cron"] == "0 3 * * *" and spec["schedules"][0]["timezone"] == "UTC"
    pool = spec["work_pool"]["name"]
    prefect = [sys.executable, "-m", "prefect"]
    created = subprocess.run([*prefect, "work-pool", "create", pool, "--type", "process"],
                             env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = subprocess.run([*prefect, "--no-prompt", "deploy", "--all"],
                              env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    dep = _read(url)
    assert dep is not None, deployed.stdout
    assert _cron(dep.schedules) == [("0 3 * * *", "UTC", True)]
    assert dep.parameters == spec["parameters"] == {"profile": None, "generate": True}
    assert dep.work_pool_name == pool
    assert dep.entrypoint == spec["entrypoint"]

    # `tether serve` builds its deployment from the same prefect.yaml entry: same schedule, same parameters.
    built = build_deployment(spec)
    assert built.name == dep.name
    assert _cron(built.schedules) == _cron(dep.schedules)
    assert built.parameters == dep.parameters


def test_tether_serve_registers_the_schedule_and_stops_on_ctrl_c(server, tmp_path: Path) -> None:
    url, home = server
    before = _read(url)
    if before is not None:  # deployed by the test above: start from nothing, so what we see is serve's
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            client.delete_deployment(before.id)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tether.cli", "serve"], env=_env(url, home), cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        dep = None
        while dep is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            dep = _read(url)
        assert dep is not None, log.read_text()[-3000:]
        assert _cron(dep.schedules) == [("0 3 * * *", "UTC", True)]
        assert dep.parameters == load_deployment_spec()["parameters"]
        assert dep.work_pool_name is None  # served by the process itself: no work pool, no worker
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        assert "stopped serving" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
