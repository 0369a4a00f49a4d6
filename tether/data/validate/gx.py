"""Great Expectations plumbing: one ephemeral context, suites run on dataframes, results read back.

GX decides every verdict; this module only builds the context, runs a suite of
:class:`~tether.data.validate.checks._Check` expectations on a dataframe (optionally building
Data Docs), and reads the failing index labels and per-expectation summaries out of the result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult

    from tether.data.validate.checks import _Check

DATA_DOCS_SITE = "tether_data_docs"


def _gx_env() -> None:
    """No usage analytics: validation runs offline and must not phone home."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _expectations_module() -> Any:
    """``great_expectations.expectations``, imported late (GX takes seconds to import)."""
    _gx_env()
    import great_expectations.expectations as gxe

    return gxe


class _GX:
    """One ephemeral GX context; with ``docs_dir`` every run also updates a Data Docs site."""

    def __init__(self, docs_dir: Path | None = None) -> None:
        _gx_env()
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.gx = gx
        sites = {}
        if docs_dir is not None:
            sites[DATA_DOCS_SITE] = {
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            }
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            progress_bars=ProgressBarsConfig(globally=False),
            data_docs_sites=sites,
            analytics_enabled=False,
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.docs = docs_dir is not None
        self.source = self.context.data_sources.add_pandas("tether")

    def run(self, name: str, df: pd.DataFrame, checks: list[_Check]) -> ExpectationSuiteValidationResult:
        gx = self.gx
        batch_def = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        # One store write for the whole suite (add_expectation persists on every call).
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=[c.expectation for c in checks]))
        vd = self.context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        if self.docs:
            cp = self.context.checkpoints.add(gx.Checkpoint(
                name=name, validation_definitions=[vd], result_format="COMPLETE", actions=[]))
            key, result = next(iter(cp.run(batch_parameters={"dataframe": df}).run_results.items()))
            self._update_docs(key, result)
            return result
        return vd.run(batch_parameters={"dataframe": df}, result_format="COMPLETE")

    def _update_docs(self, key: Any, result: ExpectationSuiteValidationResult) -> None:
        """Render Data Docs from an HTML-escaped copy of ``result``.

        GX writes unexpected values into the pages verbatim, so a title such as
        ``<script>...</script>`` would run in the browser of whoever opens the report. The
        verdicts come from the original result; only the stored copy the pages are built
        from is escaped.
        """
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        originals = [r.result for r in result.results]
        try:
            for r in result.results:
                r.result = _html_escaped(r.result)
            self.context.validation_results_store.set(key, result)
        finally:
            for r, original in zip(result.results, originals):
                r.result = original
        self.context.build_data_docs(
            site_names=[DATA_DOCS_SITE],
            resource_identifiers=[key, ExpectationSuiteIdentifier(name=key.expectation_suite_identifier.name)],
        )


def _html_escaped(value: Any) -> Any:
    """``value`` with every string HTML-escaped, recursively through dicts, lists and tuples."""
    import html

    if isinstance(value, str):
        return html.escape(value, quote=True)
    if isinstance(value, dict):
        return {k: _html_escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_html_escaped(v) for v in value)
    return value


def _failures(result: ExpectationSuiteValidationResult, checks: list[_Check]) -> dict[str, list[Any]]:
    """Rule -> unexpected index labels, read from the GX result (which decides every verdict)."""
    by_rule = {c.rule: c for c in checks}
    out: dict[str, list[Any]] = {}
    for r in result.results:
        rule = (r.expectation_config.meta or {}).get("rule")
        if r.exception_info and r.exception_info.get("raised_exception"):
            raise RuntimeError(f"Great Expectations failed to evaluate rule {rule!r}: "
                               f"{r.exception_info.get('exception_message')}")
        if rule not in by_rule:
            continue
        out[rule] = [] if r.success else list(r.result.get("unexpected_index_list") or [])
        if not r.success and len(out[rule]) != r.result.get("unexpected_count", len(out[rule])):
            raise RuntimeError(f"rule {rule!r}: GX reported {r.result.get('unexpected_count')} failures "
                               f"but {len(out[rule])} indices")
    missing = set(by_rule) - set(out)
    if missing:
        raise RuntimeError(f"no GX result for rule(s) {sorted(missing)}")
    return out


def _summaries(suite: str, result: ExpectationSuiteValidationResult) -> list[dict[str, Any]]:
    rows = []
    for r in result.results:
        cfg = r.expectation_config
        rows.append({
            "suite": suite,
            "rule": (cfg.meta or {}).get("rule"),
            "expectation": cfg.type,
            "column": cfg.kwargs.get("column"),
            "success": bool(r.success),
            "unexpected_count": int(r.result.get("unexpected_count") or 0),
        })
    return rows

