"""``tether data generate|validate|prepare``: the data path, one stage per command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.cli.app import ParamsOpt, ProfileOpt, _run_stage, _setup
from tether.cli.show import print_summary


def data_generate(
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: paths.raw_dir).")] = None,
) -> None:
    """Write the deterministic sample catalog and interaction log (MovieLens-latest format).

    The same seed and settings give byte-identical files, so data.dvc's hash is stable.
    """
    from tether.data.generate import generate_sample_data

    cfg, root = _setup(params, profile)
    out_dir = out or cfg.paths.resolved(root).raw_dir
    summary = _run_stage("generate", generate_sample_data, cfg.generate, cfg.seed, out_dir)
    print_summary("generate", summary)


def data_validate(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Validate data/raw with Great Expectations: quarantine bad rows, stop on critical failures.

    Writes data/validated/*.parquet, data/quarantine/*.csv (each row with its reason),
    data/reports/validation.json and Data Docs HTML under data/reports/data_docs/.
    """
    from tether.data.validate import run_validation

    cfg, root = _setup(params, profile)
    summary = _run_stage("validate", run_validation, cfg, root)
    print_summary("validate", summary)


def data_prepare(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Clean, split leave-last-out, and write chat-formatted examples to data/processed/.

    Token lengths in data/processed/stats.json use the base model's tokenizer when
    examples.token_stats is true (else whitespace word counts).
    """
    from tether.stages import prepare_data

    cfg, root = _setup(params, profile)
    summary = _run_stage("prepare", prepare_data, cfg, root)
    print_summary("prepare", summary)
