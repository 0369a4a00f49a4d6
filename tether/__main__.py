"""``python -m tether ...`` runs the ``tether`` command line.

Launchers that start a module rather than a console script use it, e.g. several GPUs with
``torchrun --nproc_per_node 4 -m tether train`` (see docs/reliability.md, "Several GPUs").
"""

from tether.cli import app

if __name__ == "__main__":
    app(prog_name="tether")
