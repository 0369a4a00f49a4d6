"""``python -m tether.cli ...``: the same command line as ``tether ...`` and ``python -m tether ...``."""

from tether.cli import app

if __name__ == "__main__":
    app(prog_name="tether")
