"""Pure metric functions: ranking quality, diversity, generation health, bootstrap intervals.

Every function follows a pinned, standard definition (quoted in its docstring) so that
numbers compare across tools. Where the pinned definitions are silent, the choice made here is
stated in the docstring under "Choice:" and covered by a test in ``tests/eval/test_metrics.py``.

Conventions:
    * ranks are 1-based integers (rank 1 = the model's top item);
    * a "top list" is one user's recommended item ids, best first; ``top_lists`` is one per user;
    * empty inputs to an average raise ``ValueError`` (an evaluation over nobody is a bug upstream,
      not a score), except in :func:`slice_metrics`, where an empty slice reports count 0 and NaN;
    * metric names returned in dicts use ``_at_`` instead of ``@`` because MLflow rejects ``@``
      in metric names (``hr_at_10``, ``ndcg_at_10``).

Modules: :mod:`~tether.eval.metrics.ranking` (ranks, HR, NDCG, MRR, slices),
:mod:`~tether.eval.metrics.diversity` (coverage, entropy, Gini, intra-list diversity, novelty,
genre vectors, genre mutual information), :mod:`~tether.eval.metrics.titles` (generations
against catalog titles), :mod:`~tether.eval.metrics.text` (distinct-n, repetition, empty
outputs, length ratio), :mod:`~tether.eval.metrics.bootstrap` (perplexity and bootstrap
intervals), :mod:`~tether.eval.metrics.common` (the item id type, :func:`as_float`).
``from tether.eval.metrics import ...`` and ``metrics.<name>`` keep working as when this was
one module.
"""

from tether.eval.metrics.bootstrap import (
    Stat,
    bootstrap_ci,
    paired_bootstrap_ci,
    perplexity,
    perplexity_drift,
    ppl_drift_ci,
)
from tether.eval.metrics.common import ItemId, as_float
from tether.eval.metrics.diversity import (
    catalog_coverage,
    genre_mutual_information,
    genre_vectors,
    genre_vocabulary,
    gini_index,
    intra_list_diversity,
    novelty,
    shannon_entropy,
)
from tether.eval.metrics.ranking import (
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    rank_of_positive,
    ranking_metrics,
    ranks_of_positives,
    slice_metrics,
    top_k,
)
from tether.eval.metrics.text import distinct_n, empty_rate, length_ratio, repeated_ngram_rate
from tether.eval.metrics.titles import CatalogIndex, exact_title_rate, normalize_title, valid_item_rate

__all__ = [
    "CatalogIndex",
    "ItemId",
    "Stat",
    "as_float",
    "bootstrap_ci",
    "catalog_coverage",
    "distinct_n",
    "empty_rate",
    "exact_title_rate",
    "genre_mutual_information",
    "genre_vectors",
    "genre_vocabulary",
    "gini_index",
    "hit_rate_at_k",
    "intra_list_diversity",
    "length_ratio",
    "mrr",
    "ndcg_at_k",
    "normalize_title",
    "novelty",
    "paired_bootstrap_ci",
    "perplexity",
    "perplexity_drift",
    "ppl_drift_ci",
    "rank_of_positive",
    "ranking_metrics",
    "ranks_of_positives",
    "repeated_ngram_rate",
    "shannon_entropy",
    "slice_metrics",
    "top_k",
    "valid_item_rate",
]
