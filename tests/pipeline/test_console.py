"""The console (tether/console.py): one line per event, bars only on a terminal, one line per step.

Every check runs a real process: a small script on a pseudo-terminal or a pipe for the handler and
the bars (unit tier, ~1 s each), and ``tether run`` + ``tether train`` on a throwaway project with a
tiny model for the whole pipeline's console (integration tier, ~60-90 s on 2 cores).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

from tether.console import format_step

PYTHON = sys.executable
TETHER = str(Path(sys.executable).parent / "tether")
# A record as the console writes it: "HH:MM:SS LEVEL   name: message".
RECORD = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+: ")


def _run_on_pty(code: str, timeout: float = 120.0) -> str:
    """Run ``python -c code`` on a pseudo-terminal (120 columns) and return what it wrote there."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin/stdout/stderr are the pty's slave end
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # tqdm needs a width
        os.execv(PYTHON, [PYTHON, "-c", code])
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def _run_piped(code: str) -> str:
    """Run ``python -c code`` with stdout and stderr on one pipe (as ``2>&1 | tee`` would)."""
    proc = subprocess.run([PYTHON, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    text = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    return text


def _lines_with_two_records(text: str) -> list[str]:
    """Lines (split at newlines and carriage returns) holding two records, or a record not at their start."""
    bad = []
    for line in re.split(r"[\r\n]", text):
        starts = [m.start() for m in RECORD.finditer(line)]
        if len(starts) > 1 or (starts and starts[0] != 0):
            bad.append(line)
    return bad


# A thread logs while the main thread draws a bar: what a flow does (Prefect's workers, the
# scoring loop's bar). OLD_SETUP is the console before tether/console.py, to show the check bites.
_BARS_AND_THREADS = """
import logging, threading, time
{setup}
log = logging.getLogger("tether.test")
def chatter():
    for i in range(30):
        log.info("record %d from a thread", i)
        time.sleep(0.011)
t = threading.Thread(target=chatter)
t.start()
bar = progress_bar(total=60, desc="scoring", unit="user", mininterval=0)
for _ in range(60):
    time.sleep(0.01)
    bar.update(1)
bar.close()
t.join()
log.info("last record")
"""
NEW_SETUP = "from tether.console import setup_console, progress_bar\nsetup_console()"
OLD_SETUP = (
    "logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(levelname)-7s %(name)s: %(message)s', "
    "datefmt='%H:%M:%S')\nlogging.getLogger('tether').setLevel(logging.INFO)\nfrom tqdm.auto import tqdm as progress_bar"
)


def test_on_a_terminal_records_and_bars_never_share_a_line() -> None:
    text = _run_on_pty(_BARS_AND_THREADS.format(setup=NEW_SETUP))
    assert "scoring:" in text and "|" in text, "no bar was drawn on the terminal"
    records = [m.group(0) for m in re.finditer(r"record \d+ from a thread", text)]
    assert len(records) == 30 and "last record" in text
    assert _lines_with_two_records(text) == []


def test_the_terminal_check_fails_on_the_old_console() -> None:
    """The same script with the old setup (basicConfig + plain tqdm) garbles: the check can fail."""
    text = _run_on_pty(_BARS_AND_THREADS.format(setup=OLD_SETUP))
    assert _lines_with_two_records(text), "the old console did not garble this time; the check proves nothing"


def test_off_a_terminal_no_bars_and_a_summary_line_per_interval() -> None:
    text = _run_piped(textwrap.dedent("""
        import time
        from tether.console import setup_console, progress_bar
        setup_console(summary_seconds=0.2)
        for _ in progress_bar(range(3), desc="short loop", unit="user"):
            pass  # shorter than one interval: no line at all
        bar = progress_bar(total=12, desc="base: scoring", unit="user")
        for i in range(12):
            time.sleep(0.05)
            bar.update(1)
            bar.set_postfix(candidates=20 * (i + 1))  # refreshes at every call: still one line per interval
        bar.close()
    """))
    assert "\r" not in text
    summaries = [line for line in text.splitlines() if "tether.progress: base: scoring: " in line]
    assert 1 <= len(summaries) <= 4, text  # 0.6 s of loop at one line per 0.2 s (the first after 0.2 s)
    assert re.search(r"base: scoring: \d+/12 user \(\d+%\), \S+ elapsed, \S+ left", summaries[0])
    assert "short loop" not in text
    assert _lines_with_two_records(text) == []


def test_warnings_one_line_pointless_ones_filtered_library_records_once() -> None:
    text = _run_piped(textwrap.dedent("""
        import logging, warnings
        from tether.console import setup_console
        setup_console()
        import mlflow  # brings its own stderr handler unless told not to
        from huggingface_hub.utils import logging as hub_logging
        from transformers.utils import logging as hf_logging
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        import mlflow.pyfunc

        class Model(mlflow.pyfunc.PythonModel):  # MLflow warns here, under its own "once" filter
            def predict(self, context, model_input):
                return model_input
        warnings.warn("this one matters", UserWarning)
        hub_logging.get_logger("huggingface_hub.test").warning("hub says once")
        hf_logging.get_logger("transformers.test").warning("transformers says once")
        logging.getLogger("mlflow.test").warning("mlflow says once")
    """))
    lines = text.splitlines()
    assert not any("is_gradient_checkpointing" in line or "Add type hints" in line for line in lines), text
    (warned,) = [line for line in lines if "this one matters" in line]
    assert RECORD.match(warned) and "UserWarning" in warned
    assert not any(line.strip().startswith("warnings.warn(") for line in lines)  # no quoted source line
    for said in ("hub says once", "transformers says once", "mlflow says once"):
        found = [line for line in lines if said in line]
        assert len(found) == 1 and RECORD.match(found[0]), (said, text)


def test_one_line_per_training_step() -> None:
    assert format_step(12, {"loss": 2.33265, "tokens_per_second": 421.7, "learning_rate": 4.444e-05, "grad_norm": 0.5036}) \
        == "step 12: loss 2.3327, 422 tokens/s, lr 4.44e-05, grad_norm 0.5036"
    assert format_step(50, {"eval_loss": 1.07356}) == "step 50: eval_loss 1.0736"


def test_bad_summary_interval_is_refused() -> None:
    from tether.console import setup_console

    with pytest.raises(ValueError, match="summary_seconds"):
        setup_console(summary_seconds=0)


# --------------------------------------------------------------------------- the pipeline's console


@pytest.fixture(scope="module")
def run_console(tmp_path_factory) -> dict:
    """``tether run --profile test`` and then ``tether train`` on a throwaway project, output piped."""
    from project import make_project
    from tiny import build_tiny_model_dir

    tmp = tmp_path_factory.mktemp("console")
    tiny = build_tiny_model_dir(tmp / "tiny-model")
    root = make_project(tmp / "proj", overrides={
        "model": {"base_model": str(tiny), "device": "cpu"},
        "examples": {"token_stats": False},
        # the test profile's perplexity / drift settings are already sized for a tiny model
        "eval": {"n_users": 5, "n_negatives": 4,
                 "generation": {"n_prompts": 2, "max_new_tokens": 4, "valid_item_users": 2,
                                "valid_item_max_new_tokens": 4}},
    })
    env = {**os.environ, "TETHER_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_CONFIGURE_LOGGING",
                "HF_HUB_DISABLE_PROGRESS_BARS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        env.pop(key, None)  # its own temporary Prefect server and store; its console switches set by itself
    params = ["--params", str(root / "params.yaml")]
    out = {}
    for name, args in (("run", ["run", *params]), ("train", ["train", *params])):
        proc = subprocess.run([TETHER, *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=600)
        out[name] = proc.stdout.decode("utf-8", "replace")
        (tmp / f"{name}.log").write_text(out[name], encoding="utf-8")  # to read after a failure
        assert proc.returncode == 0, out[name][-6000:]
    from tether.config import load_config

    out["max_steps"] = load_config(root / "params.yaml").train.max_steps
    out["root"] = root
    return out


@pytest.mark.integration
@pytest.mark.parametrize("command", ["run", "train"])
def test_pipeline_console_is_whole_lines_one_per_step(run_console: dict, command: str) -> None:
    text = run_console[command]
    assert "\r" not in text  # no bar refreshes in a pipe
    assert _lines_with_two_records(text) == []
    assert "{'loss'" not in text and "'eval_loss'" not in text  # the Trainer's own dict print is off
    steps = re.findall(r"^\S+ INFO +\S+: step (\d+): loss ", text, flags=re.M)
    assert sorted(map(int, steps)) == list(range(1, run_console["max_steps"] + 1)), text[-4000:]
    assert re.findall(r"^\S+ INFO +\S+: step \d+: eval_loss ", text, flags=re.M)  # validation logged too


@pytest.mark.integration
def test_run_ends_with_the_verdict_and_where_to_look_next(run_console: dict) -> None:
    lines = [line for line in run_console["run"].splitlines() if line.strip()]
    tail = lines[-4:]
    assert tail[0].startswith("where to look next:"), lines[-30:]
    assert tail[1].split()[:2] == ["gate", "report"] and "gate_report.md" in tail[1]
    assert Path(tail[1].split()[2]).exists()
    assert tail[2].split()[:2] == ["MLflow", "UI"] and "#/models/tether-recommender/versions/1" in tail[2]
    assert "mlflow server --backend-store-uri sqlite:///" in tail[2]  # another project: not mlflow/server.sh
    assert tail[3].split() == ["registry", "tether", "status"]
    before = "\n".join(lines[-80:-4])
    assert "Gate verdicts:" in before and re.search(r"^verdict: (PROMOTE|BLOCKED)$", before, flags=re.M)
    assert re.search(r"done in \d+ s", lines[-5])
    assert "Stopping temporary server" not in run_console["run"]
