"""Test helpers: a model server process (``mlflow models serve`` / ``tether serve-model``) and its requests.

Imported by tests/registry/test_serving_http.py (the project's environment, tiny model) and
tests/registry/test_serving_fresh_env.py (a fresh virtual environment, the embedded model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HISTORY = ["Silent Harbor Part 1", "Silent Harbor Part 2", "Glass River Part 1"]
CANDIDATES = ["Silent Harbor Part 3", "Glass River Part 2", "Iron Meadow Part 1", "Hidden Garden Part 4"]

RANK_REQUEST: dict[str, Any] = {"dataframe_records": [{"history": HISTORY, "candidates": CANDIDATES}], "params": {"top_k": 3}}
GENERATE_REQUEST: dict[str, Any] = {"dataframe_records": [{"history": HISTORY}], "params": {"max_new_tokens": 12}}

# (name, raw JSON body, a word the 4xx message must contain). Raw text: NaN is not JSON, but
# Python's json (the scoring server's parser) accepts it, so it must be refused downstream.
BAD_REQUESTS: list[tuple[str, str, str]] = [
    ("missing history", json.dumps({"dataframe_records": [{"candidates": CANDIDATES}]}), "history"),
    ("empty history", json.dumps({"dataframe_records": [{"history": [], "candidates": CANDIDATES}]}), "history"),
    ("empty candidates", json.dumps({"dataframe_records": [{"history": HISTORY, "candidates": []}]}), "candidates"),
    ("10k-character title", json.dumps({"dataframe_records": [{"history": ["x" * 10_000], "candidates": CANDIDATES}]}), "characters"),
    ("history is a number", json.dumps({"dataframe_records": [{"history": 5}]}), "history"),
    ("history holds numbers", json.dumps({"dataframe_records": [{"history": [1, 2]}]}), "history"),
    ("history is a string", json.dumps({"dataframe_records": [{"history": "Silent Harbor Part 1"}]}), "history"),
    ("NaN title", '{"dataframe_records": [{"history": [NaN], "candidates": ["A"]}]}', "history"),
    ("NaN candidate", '{"dataframe_records": [{"history": ["A"], "candidates": ["B", NaN]}]}', "candidates"),
    ("101 candidates", json.dumps({"dataframe_records": [{"history": HISTORY, "candidates": [f"T{i}" for i in range(101)]}]}), "100"),
    ("top_k not a number", json.dumps({**RANK_REQUEST, "params": {"top_k": "many"}}), "top_k"),
    ("negative top_k", json.dumps({**RANK_REQUEST, "params": {"top_k": -1}}), "top_k"),
    ("max_new_tokens too big", json.dumps({**GENERATE_REQUEST, "params": {"max_new_tokens": 100_000}}), "max_new_tokens"),
    ("no rows", json.dumps({"dataframe_records": []}), ""),
    ("not JSON", "{history: [", ""),
]


def post(url: str, body: str | dict[str, Any], timeout: float = 120.0) -> tuple[int, Any]:
    """POST a JSON body; returns (status, parsed JSON or text) for any status."""
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class ServerProcess:
    """A server subprocess in its own session, its output in a log file."""

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def wait_ready(self, timeout: float) -> float:
        """Seconds until ``GET /ping`` answers 200; raises with the log when it exits or times out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            if self.ping():
                return time.monotonic() - started
            time.sleep(1.0)
        raise TimeoutError(f"{self.url}/ping not healthy after {timeout:.0f} s:\n{self.tail()}")

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the whole session; SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def alive_in_session(pid: int, wait: float = 30.0) -> list[str]:
    """Processes still running in the session ``pid`` started, after up to ``wait`` seconds for them to end.

    Returns ``["<pid> <command>", ...]`` (empty when all ended; zombies count as ended).
    """
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True, check=True).stdout
        rows = [line.split(None, 3) for line in out.splitlines() if line.strip()]
        alive = [f"{r[0]} {r[3] if len(r) > 3 else ''}" for r in rows if int(r[1]) == pid and not r[2].startswith("Z")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)
