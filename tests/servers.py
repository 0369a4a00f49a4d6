"""Real servers for the reliability tests: an ``mlflow server`` process and a throwaway PostgreSQL cluster.

Imported in tests as ``from servers import ...`` (pytest puts ``tests/`` on ``sys.path``).
Every process is started in its own session and stopped by its process group id, so a test
never leaves a server behind and never touches a process it did not start.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MLFLOW_BIN = Path(sys.executable).parent / "mlflow"
PG_BIN_DIRS = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group this test started, SIGKILL it if it does not go."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1, flags as in mlflow/server.sh; artifacts proxied by the server.

    Args:
        workdir: holds the sqlite store (unless ``backend_uri``), the artifact folder and the log.
        backend_uri: the backend store (default ``sqlite:///<workdir>/mlflow.db``).
    """

    def __init__(self, workdir: Path, backend_uri: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backend_uri = backend_uri or f"sqlite:///{(self.workdir / 'mlflow.db').as_posix()}"
        self.artifacts = self.workdir / "artifacts"
        self.log = self.workdir / "server.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> "MlflowServer":
        self.artifacts.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # one process instead of ~10
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            str(MLFLOW_BIN), "server",
            "--backend-store-uri", self.backend_uri,
            "--serve-artifacts", "--artifacts-destination", self.artifacts.as_uri(),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"mlflow server on {self.uri} not healthy after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None

    def restart(self) -> "MlflowServer":
        self.stop()
        return self.start()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def mlflow_client_env(monkeypatch) -> None:
    """Short client-side HTTP patience, so a dead server fails in seconds, not minutes."""
    # One immediate retry: covers a pooled connection gone stale across a server restart.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@contextlib.contextmanager
def mlflow_server_for_test(workdir: Path, monkeypatch) -> Iterator[MlflowServer]:
    """A started :class:`MlflowServer` that this test's MLflow client uses; stopped on exit.

    Sets the short client-side patience of :func:`mlflow_client_env` and points
    ``MLFLOW_TRACKING_URI`` at the server (both undone by ``monkeypatch``). The test may stop and
    start the server in between; stopping it twice is harmless.
    """
    server = MlflowServer(workdir).start()
    try:
        mlflow_client_env(monkeypatch)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- PostgreSQL


def find_pg_bin() -> Path:
    """The folder holding initdb / pg_ctl, or a failure that says how to install them (never a skip)."""
    candidates = list(PG_BIN_DIRS)
    which = shutil.which("pg_ctl")
    if which:
        candidates.insert(0, Path(which).parent)
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH: "
        "install them with `apt-get install postgresql` (Debian/Ubuntu) to run the PostgreSQL-backed MLflow test"
    )


class PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a unix socket in a temporary folder.

    PostgreSQL refuses to run as root, so when the tests run as root the cluster is created and
    run as an unprivileged user (``postgres`` if it exists, else ``nobody``). The folder lives
    directly under the system temp dir: pytest's tmp_path is private to root.
    """

    def __init__(self, password: str = "tether-pg-test") -> None:
        self.bin = find_pg_bin()
        self.port = free_port()
        self.password = password
        self.base = Path(tempfile.mkdtemp(prefix="tether-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "postgres.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                    self.user = name
                    break
                except KeyError:
                    continue
            if self.user is None:
                raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")
        self.started = False

    def _run(self, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        full = (["runuser", "-u", self.user, "--"] if self.user else []) + list(cmd)
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{self.tail()}")
        return proc

    def start(self) -> "PostgresCluster":
        self.sock.mkdir()
        if self.user:
            info = pwd.getpwnam(self.user)
            for p in (self.base, self.sock):
                os.chown(p, info.pw_uid, info.pw_gid)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if self.user:
            os.chown(pwfile, pwd.getpwnam(self.user).pw_uid, -1)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions")
        pwfile.unlink()
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", "60", "start")
        self.started = True
        return self

    def psql(self, sql: str, db: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": self.password}
        proc = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1",
             "-At", "-c", sql],
            capture_output=True, text=True, env=env, timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {proc.stderr}")
        return proc.stdout

    def create_database(self, name: str, owner: str, password: str) -> str:
        """A role and a database it owns; returns the SQLAlchemy URI (with the password)."""
        self.psql(f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'")
        self.psql(f"CREATE DATABASE {name} OWNER {owner}")
        # postgresql+psycopg2: SQLAlchemy 2.1 defaults postgresql:// to psycopg 3, not installed here.
        return f"postgresql+psycopg2://{owner}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.started:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""
