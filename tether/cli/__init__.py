"""The ``tether`` command line.

    tether run                       # the whole pipeline as a Prefect flow (`tether demo`: the same)
    tether serve                     # serve prefect.yaml's scheduled deployment (nightly run)
    tether data generate|validate|prepare
    tether model fetch
    tether train [--resume]
    tether evaluate [--adapter DIR]  # candidate vs zero-shot base vs popularity
    tether gate [--no-fail]          # verdicts + gate report
    tether status                    # champion, challenger, last verdicts
    tether promote VERSION --reason  # manual override, recorded in tags
    tether serve-model               # @champion over HTTP (mlflow models serve; docs/serving.md)
    tether drift --adapter DIR       # perplexity drift of adapters on any text

Every command reads ``params.yaml`` (in the current directory, else the repository's)
plus an optional ``--profile`` overlay from ``configs/``.

=================  ============================================================
``app.py``         the typer app, shared options, setup and error exits
``show.py``        what commands print (tables, verdict)
``data.py``        ``data generate|validate|prepare``
``model.py``       ``model fetch``
``stages.py``      ``train``, ``evaluate``, ``gate``, ``drift``
``registry.py``    ``status``, ``promote``
``serving.py``     ``serve-model``
``pipeline.py``    ``run``, ``demo``, ``serve``: the only module of ``tether/`` that imports
                   Prefect or ``flows/``
=================  ============================================================

The table below registers every command, in the order ``tether --help`` lists them; a new
command is a function in its module plus one line here.
"""

from __future__ import annotations

from tether.cli.app import app, console, data_app, model_app, profiles
from tether.cli.data import data_generate, data_prepare, data_validate
from tether.cli.model import model_fetch
from tether.cli.pipeline import demo, print_next_steps, run_cmd, serve_cmd
from tether.cli.registry import promote_cmd, status_cmd
from tether.cli.serving import serve_model_cmd
from tether.cli.show import print_accounting, print_summary, print_train_result, print_verdict
from tether.cli.stages import drift_cmd, evaluate_cmd, gate_cmd, train_cmd

data_app.command("generate")(data_generate)
data_app.command("validate")(data_validate)
data_app.command("prepare")(data_prepare)
model_app.command("fetch")(model_fetch)
app.command("train")(train_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("gate")(gate_cmd)
app.command("status")(status_cmd)
app.command("promote")(promote_cmd)
app.command("run")(run_cmd)
app.command("demo")(demo)
app.command("serve")(serve_cmd)
app.command("serve-model")(serve_model_cmd)
app.command("drift")(drift_cmd)
app.command("profiles")(profiles)

__all__ = [
    "app", "console", "data_app", "model_app", "main",
    "print_accounting", "print_next_steps", "print_summary", "print_train_result", "print_verdict",
]


def main() -> None:  # pragma: no cover - console entry
    app()

