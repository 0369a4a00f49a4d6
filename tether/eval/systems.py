"""The one table of systems, headline metrics and metric labels that every reader shares.

The evaluate stage, the gate report (tables and chart), the DVC stage outputs
(:mod:`tether.outputs`) and the command line (:mod:`tether.cli.show`) all read the systems, their
order, the metrics they show and how a metric is labelled from here, so adding a system or a
headline metric is an edit of this file alone.

Systems, in display order (references first, the candidate last):

=============  ==========================================================  ==========
system         what it is                                                  evaluated
=============  ==========================================================  ==========
popularity     the candidates ranked by their train counts                 yes
base           the zero-shot base model (the adapter disabled)             yes
champion       the registry's ``@champion``, from its own evaluation        no
candidate      the base model with the trained LoRA adapter                yes
=============  ==========================================================  ==========

"Evaluated" systems are measured by :func:`tether.eval.evaluate.evaluate_run` on the same users and
candidates; the champion's numbers come from the registry and appear only in the gate report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class System:
    """One row of the systems table.

    Attributes:
        name: the key of the system in every metrics mapping (``Evaluation.systems``, reports).
        colour: its colour in the gate report's chart.
        evaluated: measured by the evaluate stage (False: its numbers come from elsewhere).
        model: a language model (it has perplexities, generations and a valid-item rate).
    """

    name: str
    colour: str
    evaluated: bool
    model: bool


SYSTEM_TABLE: tuple[System, ...] = (
    System("popularity", "#9e9e9e", evaluated=True, model=False),
    System("base", "#4c72b0", evaluated=True, model=True),
    System("champion", "#8172b2", evaluated=False, model=True),
    System("candidate", "#dd8452", evaluated=True, model=True),
)
# Display order of every system a report may hold (columns of tables, bars of the chart).
SYSTEM_ORDER: tuple[str, ...] = tuple(s.name for s in SYSTEM_TABLE)
# The systems the evaluate stage measures, in display order (CLI tables, systems.csv rows).
EVALUATED_SYSTEMS: tuple[str, ...] = tuple(s.name for s in SYSTEM_TABLE if s.evaluated)
# The systems that are language models and evaluated (scored by evaluate_model).
MODEL_SYSTEMS: tuple[str, ...] = tuple(s.name for s in SYSTEM_TABLE if s.evaluated and s.model)
# The references the candidate is compared with on the primary metric in every evaluation.
REFERENCES: tuple[str, ...] = ("popularity", "base")
# Colour of a system not in the table (a report may carry others).
OTHER_COLOUR = "#64b5cd"
COLOURS: dict[str, str] = {s.name: s.colour for s in SYSTEM_TABLE}

# --------------------------------------------------------------------------- metrics

# The CLI's headline columns (candidate vs base vs popularity after `tether evaluate` / a run).
HEADLINE_METRICS: tuple[str, ...] = ("ndcg_at_10", "hr_at_10", "mrr", "valid_item_rate", "exact_title_rate")
# Rates of free generations naming a catalog item, recorded with the ranking metrics.
ITEM_RATE_METRICS: tuple[str, ...] = ("valid_item_rate", "exact_title_rate")
# Metrics about general text and free generation; every other metric is a recommendation metric.
GENERATION_METRICS: tuple[str, ...] = (
    "perplexity",
    "distinct_1",
    "distinct_2",
    "repeated_4gram_rate",
    "empty_rate",
    "mean_length",
    "length_ratio",
)
# Generation-health metrics the report's chart draws (base vs candidate).
HEALTH_CHART_METRICS: tuple[str, ...] = ("distinct_1", "distinct_2", "repeated_4gram_rate", "empty_rate")
# Reading order of the non-ranking metrics in the report's tables (the ``_at_K`` suffix dropped).
METRIC_ORDER: tuple[str, ...] = (
    "coverage", "catalog_coverage", "entropy", "shannon_entropy", "gini", "gini_index",
    "intra_list_diversity", "ild", "novelty", "genre_mi", *ITEM_RATE_METRICS, *GENERATION_METRICS,
)
PERPLEXITY_PREFIX = "perplexity."
_RANKING = re.compile(r"(hr|ndcg)_at_(\d+)")
_LABELS = {
    "mrr": "MRR",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "repeated_4gram_rate": "repeated\n4-grams",
    "empty_rate": "empty",
    "valid_item_rate": "valid-item rate",
    "exact_title_rate": "exact-title rate",
}


def ranking_metrics(ks: Iterable[int]) -> list[str]:
    """The ranking metrics at cut-offs ``ks``: ``mrr``, then ``hr_at_K``, ``ndcg_at_K`` per K, in the order given."""
    names = ["mrr"]
    for k in ks:
        names += [f"hr_at_{k}", f"ndcg_at_{k}"]
    return names


def is_ranking_metric(name: str) -> bool:
    """``mrr``, ``hr_at_K`` or ``ndcg_at_K`` (the metrics a scoring rule changes)."""
    return name == "mrr" or name.startswith(("hr_at_", "ndcg_at_"))


def ranking_cutoff(name: str) -> tuple[str, int] | None:
    """``("ndcg", 10)`` for ``ndcg_at_10`` (likewise ``hr``); None for any other name."""
    m = _RANKING.fullmatch(name)
    return None if m is None else (m.group(1), int(m.group(2)))


def is_generation_metric(name: str) -> bool:
    """A metric of general text or free generation (:data:`GENERATION_METRICS`, ``perplexity.<source>``)."""
    return name in GENERATION_METRICS or name.startswith(PERPLEXITY_PREFIX)


def is_recorded_metric(name: str, ks: Iterable[int]) -> bool:
    """Whether the DVC metrics file records ``name``: ranking metrics at ``ks``, item rates, perplexities."""
    return name in ranking_metrics(ks) or name in ITEM_RATE_METRICS or name.startswith(PERPLEXITY_PREFIX)


def metric_label(metric: str) -> str:
    """The short label of a metric on the chart: ``NDCG@10``, ``MRR``, ``valid-item rate``; else the name."""
    cut = ranking_cutoff(metric)
    if cut is not None:
        return f"{cut[0].upper()}@{cut[1]}"
    return _LABELS.get(metric, metric)
