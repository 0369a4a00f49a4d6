"""The evaluate stage: candidate adapter, zero-shot base model and popularity, one protocol.

Pinned protocol (DESIGN.md): leave-last-out on the test split; per user the candidates are
the full catalog minus every item already in the user's history (train + validation items,
which include the prompt's items), or, with ``eval.candidates: sampled``, the positive plus
``eval.n_negatives`` items drawn from those with a fixed seed; an item's score is the mean
log-likelihood per token of its title given the prompt (``eval.score: sum`` switches to the
sum; the other rule is always reported too, as ``<metric>_<rule>``); the popularity baseline
ranks the same candidates by train counts.

Pieces, each usable on its own:

* :func:`load_eval_inputs` reads the processed data, samples the users and builds the
  candidates, the slices, the popularity counts, the genre vectors, the drift panel's gate half
  (:mod:`tether.eval.panel`) and the golden prompts (:class:`EvalInputs`);
* :func:`evaluate_recommendations` turns one score array per user into ranks, ranking and
  diversity metrics, slices and per-user values (:class:`RecEval`); the popularity baseline
  (:func:`popularity_scores`) and the models go through this same function;
* :func:`evaluate_model` scores one model (a peft model, or one inside ``disable_adapter()``):
  ranking, valid-item rate, the drift panel, golden-prompt generations and the NLL of the base's
  golden answers;
* :func:`evaluate_run` loads the base model once, puts the adapter on it and evaluates the base
  (adapter disabled; cached on disk), the candidate (on the base's very token ids: its
  self-samples and golden answers) and popularity, then computes the confidence intervals,
  the drift per panel source and the golden-prompt KL (:class:`Evaluation`);
* :func:`evaluate_base` evaluates the base model alone (same protocol, same on-disk cache), so an
  orchestrator can cache it as its own step and hand it to ``evaluate_run(..., base_result=...)``;
  :func:`expected_base_cache_key` gives its key without loading the model.

The base model's results depend only on the base weights, the data, the drift panel, the golden
prompts and the protocol, so they are cached under ``<model cache>/eval-cache/<key>.json``
with a key that hashes all of those (see :func:`base_cache_key`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tether.data.errors import DataError
from tether.io import atomic_write_text, jsonable, resolve, sha256_files, sha256_json
from tether.eval import metrics
from tether.eval.interest import genre_mutual_information
from tether.eval.generation import GoldenPrompt, free_generation_titles, generate, generation_health, load_golden_prompts
from tether.eval.generation import side_by_side as side_by_side_rows
from tether.eval.panel import Panel, drift_table, load_panel, measure, worst_source
from tether.eval.scoring import rank_users
from tether.eval.selfsamples import SampleRow, golden_rows, sequence_nll

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tether.config import TetherConfig

logger = logging.getLogger(__name__)

# Bump when the cached base results change shape or meaning: old entries are then ignored.
CACHE_FORMAT = 4  # 2: valid items resolved by unambiguous name (CatalogIndex); 3: packed scoring with a shared prompt prefix (same numbers within 1e-5, recomputed so base and candidate share one code path); 4: the drift panel, self-samples and golden-answer NLL
EVAL_CACHE_SUBDIR = "eval-cache"
SYSTEMS = ("candidate", "base", "popularity")
SLICES = ("short_history", "long_history", "head_item", "tail_item")


# --------------------------------------------------------------------------- inputs


@dataclass
class EvalInputs:
    """Everything the evaluation needs except the model, aligned by user.

    Attributes:
        examples: the sampled users' test examples (CONVENTIONS JSONL shape), in file order.
        user_ids: their user ids.
        candidates: per user, the candidate item ids.
        candidate_titles: per user, the candidates' titles (what the model scores).
        positives: per user, the index of the held-out item in ``candidates``.
        history_lengths: per user, interactions before the test item (train + validation).
        catalog: every item id of the catalog, in catalog order.
        titles: item id -> title.
        train_counts: item id -> interactions in the train split (popularity, novelty).
        n_train_interactions: rows of the train split.
        head_items: the ``eval.head_share`` most popular items by train count.
        histories: per user, the items of their history (train, and validation for the test split).
        item_vectors: item id -> multi-hot genre vector (intra-list diversity).
        panel: the drift panel's gate half (:func:`tether.eval.panel.load_panel`); None = none measured.
        golden_prompts: the golden prompts used (first ``n_prompts``).
        protocol: the settings that define the numbers (recorded, and part of the cache key).
        hashes: sha256 of the processed test data, the drift panel and the golden prompts.
    """

    examples: list[dict[str, Any]]
    user_ids: list[str]
    candidates: list[list[str]]
    candidate_titles: list[list[str]]
    positives: np.ndarray
    history_lengths: np.ndarray
    catalog: list[str]
    titles: dict[str, str]
    train_counts: dict[str, int]
    n_train_interactions: int
    head_items: frozenset[str]
    item_vectors: dict[str, np.ndarray]
    histories: list[list[str]] = field(default_factory=list)
    panel: Panel | None = None
    golden_prompts: list[GoldenPrompt] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def slice_masks(self) -> dict[str, np.ndarray]:
        """Boolean masks over users: history length split at the median; head vs tail target item.

        ``short_history`` is ``<= median`` (so it is never empty), ``long_history`` the rest.
        """
        median = float(np.median(self.history_lengths)) if self.n_users else 0.0
        short = self.history_lengths <= median
        head = np.array([self.candidates[u][self.positives[u]] in self.head_items for u in range(self.n_users)],
                        dtype=bool)
        return {"short_history": short, "long_history": ~short, "head_item": head, "tail_item": ~head}








def _user_rng(seed: int, user_id: str) -> np.random.Generator:
    # Per-user stream: a user's negatives do not depend on which other users were sampled.
    return np.random.default_rng([seed, zlib.crc32(str(user_id).encode())])


def load_eval_inputs(
    cfg: TetherConfig,
    root: Path,
    *,
    split: str = "test",
    panel: Panel | None | bool = True,
) -> EvalInputs:
    """Read the processed data and build the evaluation inputs under the pinned protocol.

    Users: a seeded sample of ``eval.n_users`` test users (all when null), kept in file order.
    Candidates: the catalog minus the user's train and validation items (the prompt's items
    are among them). The held-out item always stays a candidate, exactly once, even if the
    user had interacted with it before. ``eval.candidates: sampled`` keeps the positive plus
    ``eval.n_negatives`` of those (fewer if the pool is smaller), drawn and shuffled with a
    per-user generator seeded by ``(seed, user id)``.

    Args:
        cfg: the config (``seed``, ``paths``, ``eval``).
        root: the project root that relative paths resolve against.
        split: ``test`` (the pinned protocol) or ``validation`` (guarded selection: the held-out
            item is the second to last, and only train items are the user's history).
        panel: True = the drift panel's gate half; a :class:`Panel` to use as given; None or
            False = no panel (ranking only).

    Returns:
        The :class:`EvalInputs`.

    Raises:
        DataError: a processed file is missing or malformed, or a test item is not in the catalog.
    """
    from tether.model.train import read_examples

    root = Path(root)
    ec = cfg.eval
    proc = cfg.paths.resolved(root).processed_dir
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    files = {"test": proc / f"{split}.jsonl", "items": proc / "items.parquet", "interactions": proc / "interactions.parquet"}
    for path in files.values():
        if not path.exists():
            raise DataError(path, "file_exists", "processed file not found: run the prepare stage first (tether data prepare)")
    examples = read_examples(files["test"])
    if not examples:
        raise DataError(files["test"], "not_empty", "no test examples to evaluate")
    items = pd.read_parquet(files["items"])
    interactions = pd.read_parquet(files["interactions"])
    for name, df, cols in (
        ("items", items, {"item_id", "title"}),
        ("interactions", interactions, {"user_id", "item_id", "split"}),
    ):
        missing = cols - set(df.columns)
        if missing:
            raise DataError(files[name], "columns", f"missing column(s) {sorted(missing)}")

    catalog = items["item_id"].astype(str).tolist()
    if len(set(catalog)) != len(catalog):
        raise DataError(files["items"], "unique_item_id", "duplicate item ids in the catalog", column="item_id")
    titles = dict(zip(catalog, items["title"].astype(str)))
    if "genres" not in items:
        items = items.assign(genres="")
    item_vectors = metrics.genre_vectors(items.assign(item_id=items["item_id"].astype(str), genres=items["genres"].fillna("")))

    # Users: a seeded sample, in file order.
    n_total = len(examples)
    if ec.n_users is not None and ec.n_users < n_total:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(n_total, size=ec.n_users, replace=False))
        examples = [examples[i] for i in keep]
    user_ids = [str(ex["user_id"]) for ex in examples]

    inter = interactions.assign(user_id=interactions["user_id"].astype(str), item_id=interactions["item_id"].astype(str))
    train = inter[inter["split"] == "train"]
    train_counts = {str(k): int(v) for k, v in train["item_id"].value_counts().items()}
    history_splits = ["train", "validation"] if split == "test" else ["train"]
    seen = inter[inter["split"].isin(history_splits) & inter["user_id"].isin(set(user_ids))]
    history = {u: set(g) for u, g in seen.groupby("user_id")["item_id"]}

    catalog_arr = np.asarray(catalog, dtype=object)
    catalog_set = set(catalog)
    candidates: list[list[str]] = []
    positives: list[int] = []
    hist_len: list[int] = []
    for ex, user in zip(examples, user_ids):
        pos = str(ex["item_id"])
        if pos not in catalog_set:
            raise DataError(files["test"], "item_in_catalog", f"user {user!r}: test item {pos!r} is not in the catalog",
                            column="item_id")
        exclude = history.get(user, set()) | {str(i) for i in ex.get("history_item_ids", [])}
        hist_len.append(len(history.get(user, ())))
        exclude.discard(pos)
        pool_mask = ~np.isin(catalog_arr, list(exclude)) if exclude else np.ones(len(catalog), dtype=bool)
        if ec.candidates == "full":
            cands = catalog_arr[pool_mask].tolist()
            positives.append(cands.index(pos))
        else:
            pool_mask &= catalog_arr != pos
            pool = catalog_arr[pool_mask]
            rng = _user_rng(cfg.seed, user)
            n_neg = min(ec.n_negatives, len(pool))
            if n_neg < ec.n_negatives:
                logger.warning("user %s: only %d unseen items for %d negatives", user, n_neg, ec.n_negatives)
            negs = pool[np.sort(rng.choice(len(pool), size=n_neg, replace=False))].tolist() if n_neg else []
            order = rng.permutation(n_neg + 1)
            unordered = [pos, *negs]
            cands = [unordered[i] for i in order]
            positives.append(int(np.flatnonzero(order == 0)[0]))
        candidates.append(cands)

    # Head: the head_share most popular items by train count (ties in catalog order).
    n_head = max(1, math.ceil(ec.head_share * len(catalog)))
    by_pop = sorted(range(len(catalog)), key=lambda i: (-train_counts.get(catalog[i], 0), i))
    head_items = frozenset(catalog[i] for i in by_pop[:n_head])

    if panel is True:
        panel = load_panel(cfg, root, "gate")
    panel = panel or None
    prompts_file = None if ec.generation.prompts_file is None else resolve(root, ec.generation.prompts_file)
    golden = load_golden_prompts(prompts_file)
    if ec.generation.n_prompts is not None:
        golden = golden[: ec.generation.n_prompts]

    protocol = {
        "seed": cfg.seed,
        "split": split,
        **ec.model_dump(mode="json", exclude={"bootstrap_samples", "ci_level", "drift_panel"}),
    }
    # Content hashes stand in for the paths, so moving the project does not change the key.
    protocol["generation"].pop("prompts_file", None)
    hashes = {
        "test_data": sha256_files([files["test"], files["items"], files["interactions"]]),
        "panel": panel.fingerprint() if panel is not None else "",
        "golden_prompts": sha256_json([[p.id, p.category, p.prompt] for p in golden]),
    }
    inputs = EvalInputs(
        examples=examples,
        user_ids=user_ids,
        candidates=candidates,
        candidate_titles=[[titles[i] for i in c] for c in candidates],
        positives=np.asarray(positives, dtype=np.int64),
        history_lengths=np.asarray(hist_len, dtype=np.int64),
        catalog=catalog,
        titles=titles,
        train_counts=train_counts,
        n_train_interactions=len(train),
        head_items=head_items,
        item_vectors=item_vectors,
        histories=[sorted(history.get(u, set())) for u in user_ids],
        panel=panel,
        golden_prompts=golden,
        protocol=protocol,
        hashes=hashes,
    )
    sizes = [len(c) for c in candidates]
    logger.info(
        "evaluation inputs: %d of %d %s users, %s candidates (%d-%d per user), %d catalog items, "
        "drift panel %s, %d golden prompts",
        inputs.n_users, n_total, split, ec.candidates, min(sizes), max(sizes), len(catalog),
        ", ".join(panel.names()) if panel else "none", len(golden),
    )
    return inputs


# --------------------------------------------------------------------------- recommendation metrics


@dataclass
class RecEval:
    """Ranking quality and diversity of one system on the evaluation users.

    Attributes:
        ranks: 1-based rank of each user's held-out item.
        metrics: ``count``, ``mrr``, ``hr_at_K``, ``ndcg_at_K`` and, per K, ``coverage_at_K``,
            ``entropy_at_K``, ``gini_at_K``, ``ild_at_K``, ``novelty_at_K``, ``genre_mi_at_K``.
        slices: slice name (``short_history``, ``long_history``, ``head_item``, ``tail_item``)
            -> ranking metrics of those users.
        per_user: metric -> one value per user (``mrr`` = 1/rank, ``hr_at_K``, ``ndcg_at_K``),
            kept for (paired) bootstrap intervals.
        top_lists: each user's top ``max(ks)`` item ids.
    """

    ranks: np.ndarray
    metrics: dict[str, float]
    slices: dict[str, dict[str, float]]
    per_user: dict[str, np.ndarray]
    top_lists: list[list[str]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (arrays as lists, non-finite numbers as None)."""
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecEval:
        return cls(
            ranks=np.asarray(d["ranks"], dtype=np.int64),
            metrics={k: metrics.as_float(v) for k, v in d["metrics"].items()},
            slices={s: {k: metrics.as_float(v) for k, v in m.items()} for s, m in d["slices"].items()},
            per_user={k: np.asarray(v, dtype=np.float64) for k, v in d["per_user"].items()},
            top_lists=[list(t) for t in d["top_lists"]],
        )


def evaluate_recommendations(scores_per_user: Sequence[np.ndarray], inputs: EvalInputs, ks: Sequence[int]) -> RecEval:
    """Ranks, ranking and diversity metrics, slices and per-user values from candidate scores.

    Args:
        scores_per_user: one array per user, aligned with ``inputs.candidates`` (higher = better).
        inputs: the evaluation inputs.
        ks: cut-offs.

    Returns:
        The :class:`RecEval`.

    Raises:
        ValueError: if the scores do not align with the candidates.
    """
    if len(scores_per_user) != inputs.n_users:
        raise ValueError(f"{len(scores_per_user)} score arrays for {inputs.n_users} users")
    ks = sorted({int(k) for k in ks})
    ranks = np.empty(inputs.n_users, dtype=np.int64)
    top_lists: list[list[str]] = []
    for u, (scores, cands) in enumerate(zip(scores_per_user, inputs.candidates)):
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != (len(cands),):
            raise ValueError(f"user {inputs.user_ids[u]!r}: {s.shape} scores for {len(cands)} candidates")
        ranks[u] = metrics.rank_of_positive(s, int(inputs.positives[u]))
        top_lists.append(metrics.top_k(s, cands, ks[-1]))

    out = metrics.ranking_metrics(ranks, ks)
    n_catalog = len(inputs.catalog)
    n_train = max(inputs.n_train_interactions, 1)
    for k in ks:
        lists = [t[:k] for t in top_lists]
        out[f"coverage_at_{k}"] = metrics.catalog_coverage(lists, n_catalog)
        out[f"entropy_at_{k}"] = metrics.shannon_entropy(lists)
        out[f"gini_at_{k}"] = metrics.gini_index(lists, n_catalog)
        out[f"ild_at_{k}"] = metrics.intra_list_diversity(lists, inputs.item_vectors)
        out[f"novelty_at_{k}"] = metrics.novelty(lists, inputs.train_counts, n_train)
        out[f"genre_mi_at_{k}"] = genre_mutual_information(inputs.histories, lists, inputs.item_vectors) \
            if inputs.histories else float("nan")

    r = ranks.astype(np.float64)
    per_user: dict[str, np.ndarray] = {"mrr": 1.0 / r}
    for k in ks:
        per_user[f"hr_at_{k}"] = (r <= k).astype(np.float64)
        per_user[f"ndcg_at_{k}"] = np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    slices = metrics.slice_metrics(ranks, inputs.slice_masks(), ks)
    return RecEval(ranks=ranks, metrics=out, slices=slices, per_user=per_user, top_lists=top_lists)


def popularity_scores(inputs: EvalInputs) -> list[np.ndarray]:
    """The popularity baseline: each candidate scored by its train count (same candidates as the models)."""
    return [np.array([inputs.train_counts.get(i, 0) for i in c], dtype=np.float64) for c in inputs.candidates]


# --------------------------------------------------------------------------- one model


def evaluate_model(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    inputs: EvalInputs,
    cfg: TetherConfig,
    *,
    name: str = "model",
    progress: bool = True,
    reference: Mapping[str, Any] | None = None,
    samples: Sequence[SampleRow] = (),
) -> dict[str, Any]:
    """Evaluate one model: ranking, valid-item rate, the drift panel, golden-prompt generations.

    Works on a plain model, a peft model (the candidate) and a peft model inside
    ``disable_adapter()`` (the base), so one loaded model serves both. The base is evaluated
    first (``reference=None``, with its ``samples``); the candidate then gets the base's result
    as ``reference`` and scores the very token ids the base was scored on: the base's
    self-samples and its greedy answers to the golden prompts.

    Args:
        model: the causal LM.
        tokenizer: its tokenizer (the same for every system: identical tokenization).
        inputs: from :func:`load_eval_inputs`.
        cfg: the config (``eval``).
        name: label for progress bars and log lines.
        progress: show progress bars.
        reference: the base model's result (for a candidate); None = this model is the base.
        samples: the base's self-samples (for the base; a candidate takes them from ``reference``).

    Returns:
        A JSON-safe dict: ``rec`` (:meth:`RecEval.to_dict` under ``eval.score``), ``alt_rule``
        and ``alt_metrics`` (ranking metrics under the other rule), ``valid_items`` (``rate``,
        ``per_user`` 0/1, ``generations``), ``panel`` (per drift-panel source: ``per_doc``,
        ``documents``, ``nll_sum``, ``n_tokens``, ``ppl``; :func:`tether.eval.panel.measure`),
        ``generations`` (golden-prompt texts), ``golden`` (``per_doc``: NLL and tokens of the base's
        golden answers under this model), for the base also ``golden_ids`` and ``self_samples``
        (the token ids the candidate is scored on), and ``timings`` (seconds in ``scoring``,
        ``valid_items``, ``panel``, ``generation``).
    """
    ec = cfg.eval
    gc = ec.generation
    timings: dict[str, float] = {}

    started = time.perf_counter()
    scored = rank_users(
        model, tokenizer, inputs.examples, inputs.candidate_titles, batch_size=ec.batch_size,
        progress=progress, desc=f"{name}: scoring",
    )
    timings["scoring"] = time.perf_counter() - started
    n_cands = sum(len(c) for c in inputs.candidates)
    logger.info("%s: scored %d users, %d candidates in %.1f s", name, inputs.n_users, n_cands, timings["scoring"])
    rule = ec.score
    alt = "sum" if rule == "mean" else "mean"
    rec = evaluate_recommendations([r.scores(rule) for r in scored], inputs, ec.ks)
    alt_rec = evaluate_recommendations([r.scores(alt) for r in scored], inputs, ec.ks)
    alt_metrics = {k: v for k, v in alt_rec.metrics.items() if k == "mrr" or k.startswith(("hr_at_", "ndcg_at_"))}

    started = time.perf_counter()
    n_valid = min(gc.valid_item_users, inputs.n_users)
    gen_examples = inputs.examples[:n_valid]
    free = free_generation_titles(
        model, tokenizer, gen_examples, max_new_tokens=gc.valid_item_max_new_tokens, batch_size=gc.batch_size,
        progress=progress,
    )
    index = metrics.CatalogIndex(inputs.titles.values())
    per_user_valid = [0.0 if index.resolve(g) is None else 1.0 for g in free]
    rate = metrics.valid_item_rate(free, index)
    exact_rate = metrics.exact_title_rate(free, index) if free else float("nan")
    timings["valid_items"] = time.perf_counter() - started
    logger.info("%s: valid-item rate %.3f over %d free generations in %.1f s", name, rate, n_valid,
                timings["valid_items"])

    started = time.perf_counter()
    if reference is not None:
        samples = [SampleRow.from_dict(r) for r in reference.get("self_samples", [])]
    panel = measure(model, tokenizer, inputs.panel, cfg, samples=samples, progress=progress) if inputs.panel else {}
    timings["panel"] = time.perf_counter() - started
    logger.info("%s: drift panel %s in %.1f s", name,
                ", ".join(f"{k} ppl {v['ppl']:.3f} ({v['n_tokens']} tokens)" for k, v in panel.items()) or "none",
                timings["panel"])

    started = time.perf_counter()
    golden_ids: list[list[int]] = []
    texts = generate(
        model, tokenizer, [p.messages for p in inputs.golden_prompts], max_new_tokens=gc.max_new_tokens,
        batch_size=gc.batch_size, progress=progress, desc=f"{name}: golden prompts", ids_out=golden_ids,
    )
    # The golden-prompt KL check scores the base's own answers under each model.
    answers = golden_ids if reference is None else reference.get("golden_ids", [])
    golden = sequence_nll(model, golden_rows(tokenizer, inputs.golden_prompts, answers))
    timings["generation"] = time.perf_counter() - started
    logger.info("%s: %d golden-prompt generations in %.1f s", name, len(texts), timings["generation"])

    result = {
        "rec": rec.to_dict(),
        "rule": rule,
        "alt_rule": alt,
        "alt_metrics": alt_metrics,
        "valid_items": {
            "rate": rate,
            "exact_rate": exact_rate,
            "per_user": per_user_valid,
            "generations": [
                {"user_id": ex["user_id"], "generation": g, "resolved": index.resolve(g),
                 "target": inputs.titles[str(ex["item_id"])]}
                for ex, g in zip(gen_examples, free)
            ],
        },
        "panel": panel,
        "generations": texts,
        "golden": {"per_doc": [list(d) for d in golden], "documents": [p.id for p, a in zip(inputs.golden_prompts, answers) if a]},
        "timings": timings,
    }
    if reference is None:
        result["golden_ids"] = golden_ids
        result["self_samples"] = [r.to_dict() for r in samples]
    return jsonable(result)


# --------------------------------------------------------------------------- the evaluation


@dataclass
class Evaluation:
    """Candidate, base and popularity evaluated with one protocol, plus intervals and timings.

    Attributes:
        systems: system (``candidate``, ``base``, ``popularity``) -> flat metrics: ranking and
            diversity, the other scoring rule's ranking metrics (``ndcg_at_10_sum``), and for the
            models ``valid_item_rate``, ``exact_title_rate``, ``perplexity.<source>`` per drift-panel
            source and generation health.
        intervals: system -> metric -> ``(low, high)`` bootstrap interval.
        comparisons: ``candidate_vs_popularity`` / ``candidate_vs_base`` (``metric``, ``diff``,
            paired-bootstrap ``interval`` of candidate - reference over users), ``drift_panel``
            (per source: :func:`tether.eval.panel.drift_table`), ``perplexity_drift`` (the
            worst source's entry, with its ``source``) and ``golden_kl`` (``kl`` in nats per token,
            ``interval`` over prompts).
        slices: system -> slice -> ranking metrics.
        per_user: system -> metric -> one value per user (aligned with ``user_ids``).
        user_ids: the evaluated users.
        perplexity: system -> drift-panel source -> measurement (``per_doc``, ``documents``, ``ppl``).
        health: system -> generation-health metrics on the golden prompts.
        generations: side-by-side rows (``id``, ``category``, ``prompt``, ``base``, ``candidate``).
        valid_item_generations: system -> free generations with their targets.
        timings: seconds per part (``load_inputs``, ``load_model``, per model ``scoring``,
            ``valid_items``, ``panel``, ``generation``, ``popularity``, ``bootstrap``, ``total``).
        base_cache: ``key``, ``path``, ``hit``.
        protocol: the evaluation settings.
        info: adapter, base model, its hash, device, dtype, data hashes.
        ci_level: confidence level of every interval.
        bootstrap_samples: resamples per interval.
        seed: bootstrap seed.
    """

    systems: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    slices: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    per_user: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    user_ids: list[str] = field(default_factory=list)
    perplexity: dict[str, dict[str, Any]] = field(default_factory=dict)
    health: dict[str, dict[str, float]] = field(default_factory=dict)
    generations: list[dict[str, str]] = field(default_factory=list)
    valid_item_generations: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    base_cache: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    ci_level: float = 0.95
    bootstrap_samples: int = 1000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-safe dict (non-finite numbers as None, tuples as lists)."""
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evaluation:
        """Rebuild from :meth:`to_dict` output (None in numbers comes back as NaN)."""
        kw = dict(d)
        kw["systems"] = {s: {k: metrics.as_float(v) for k, v in m.items()} for s, m in d.get("systems", {}).items()}
        kw["intervals"] = {
            s: {k: (metrics.as_float(iv[0]), metrics.as_float(iv[1])) for k, iv in m.items()} for s, m in d.get("intervals", {}).items()
        }
        def with_interval(c: Mapping[str, Any]) -> dict[str, Any]:
            iv = c.get("interval")
            return {**c, "interval": None if iv is None else (metrics.as_float(iv[0]), metrics.as_float(iv[1]))}

        # drift_panel holds one comparison per source; every other key is one comparison.
        kw["comparisons"] = {
            name: {src: with_interval(e) for src, e in c.items()} if name == "drift_panel" else with_interval(c)
            for name, c in d.get("comparisons", {}).items()
        }
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        """Write the evaluation as JSON (strict: no NaN); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Evaluation:
        """Read an evaluation written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def metric(self, system: str, name: str) -> float:
        """One metric of one system (NaN when absent)."""
        return float(self.systems.get(system, {}).get(name, math.nan))


def base_cache_key(
    base_model_hash: str, inputs: EvalInputs, *, device: str = "cpu", dtype: str = "float32"
) -> str:
    """The base-results cache key: sha256 of everything the base model's numbers depend on.

    Base weights, the general-text corpus, the golden prompts, the processed test data (test
    examples, catalog, split interactions), the protocol settings (seed included), device and
    dtype (bf16 on a GPU gives other numbers than fp32 on a CPU), and :data:`CACHE_FORMAT`.
    """
    return sha256_json(
        {
            "format": CACHE_FORMAT,
            "base_model": base_model_hash,
            "hashes": inputs.hashes,
            "protocol": inputs.protocol,
            "device": str(device).split(":")[0],
            "dtype": str(dtype).removeprefix("torch."),
        }
    )


def _read_cache(path: Path, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable base-evaluation cache %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("key") != key or data.get("format") != CACHE_FORMAT:
        logger.warning("ignoring base-evaluation cache %s: key or format mismatch", path)
        return None
    return data.get("result")


def evaluate_run(
    cfg: TetherConfig,
    root: Path,
    adapter_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    base_cache: bool = True,
    progress: bool = True,
    base_result: Mapping[str, Any] | None = None,
) -> Evaluation:
    """The evaluate stage: candidate (adapter on), base (adapter off) and popularity, one protocol.

    The base model is loaded once (``cfg.model``, or ``model_dir`` for tests and tools) and the
    adapter is put on it with ``PeftModel.from_pretrained``; the base is evaluated inside
    ``disable_adapter()``. Its results are cached in ``<model cache>/eval-cache/<key>.json``
    (:func:`base_cache_key`); ``base_cache=False`` ignores the cache (and refreshes it).

    Intervals (level ``eval.ci_level``, ``eval.bootstrap_samples`` resamples, seed ``seed``):
    bootstrap over users per system for NDCG@K, HR@K, MRR and the valid-item rate; over
    documents for perplexity; paired bootstrap over users of candidate - popularity and
    candidate - base on ``gates.primary_metric``; :func:`metrics.ppl_drift_ci` for the drift.

    Args:
        cfg: the config.
        root: the project root.
        adapter_dir: the trained LoRA adapter (``adapter_model.safetensors`` + config).
        model_dir: a Hugging Face model directory to use instead of ``cfg.model``.
        base_cache: reuse cached base results when the key matches.
        progress: progress bars.
        base_result: the base model's results computed beforehand by :func:`evaluate_base`
            (e.g. a cached Prefect task); used instead of scoring the base here. Its ``key``
            must equal this evaluation's :func:`base_cache_key`, else ``ValueError``.

    Returns:
        The :class:`Evaluation`.
    """
    from peft import PeftModel

    from tether.model.train import _load_model

    t_start = time.perf_counter()
    root = Path(root).resolve()
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; train an adapter first (tether train)")
    timings: dict[str, Any] = {}

    started = time.perf_counter()
    inputs = load_eval_inputs(cfg, root)
    timings["load_inputs"] = time.perf_counter() - started

    started = time.perf_counter()
    model, tokenizer, base_name, base_hash, device, dtype = _load_model(cfg, None if model_dir is None else Path(model_dir))
    model.eval()
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    timings["load_model"] = time.perf_counter() - started
    logger.info("loaded %s + adapter %s in %.1f s", base_name, adapter_dir, timings["load_model"])

    key = base_cache_key(base_hash, inputs, device=device, dtype=str(dtype))
    cache_path = cfg.model.resolved_cache_dir() / EVAL_CACHE_SUBDIR / f"{key}.json"

    if base_result is not None:
        if base_result.get("key") != key:
            raise ValueError(
                f"the precomputed base results are for key {str(base_result.get('key'))[:12]}, this evaluation's "
                f"key is {key[:12]}: base model, data or protocol differ; evaluate the base again"
            )
        base, hit = dict(base_result["result"]), True
        logger.info("base model: precomputed results (key %s, no re-scoring)", key[:12])
        timings["base"] = {"cached": True, "precomputed": True}
    else:
        with model.disable_adapter():
            base, hit = _base_results(model, tokenizer, inputs, cfg, key, cache_path, base_name,
                                      use_cache=base_cache, progress=progress, base_hash=base_hash,
                                      device=device, dtype=str(dtype))
        timings["base"] = {"cached": True} if hit else base["timings"]

    cand = evaluate_model(model, tokenizer, inputs, cfg, name="candidate", progress=progress, reference=base)
    timings["candidate"] = cand["timings"]

    started = time.perf_counter()
    pop = evaluate_recommendations(popularity_scores(inputs), inputs, cfg.eval.ks)
    timings["popularity"] = time.perf_counter() - started

    started = time.perf_counter()
    evaluation = _assemble(cfg, inputs, cand, base, pop)
    timings["bootstrap"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - t_start
    evaluation.timings = timings
    evaluation.base_cache = {"key": key, "path": str(cache_path), "hit": hit}
    evaluation.info = {
        "adapter_dir": str(adapter_dir.resolve()),
        "base_model": base_name,
        "base_model_hash": base_hash,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "n_users": inputs.n_users,
        "n_candidates": int(sum(len(c) for c in inputs.candidates)),
        "hashes": inputs.hashes,
    }
    primary = cfg.gates.primary_metric
    drifts = ", ".join(f"{k} {v['drift']:+.2%}" for k, v in evaluation.comparisons.get("drift_panel", {}).items())
    logger.info(
        "evaluation done in %.1f s: %s candidate %.4f, base %.4f, popularity %.4f; drift by source: %s",
        timings["total"], primary, evaluation.metric("candidate", primary), evaluation.metric("base", primary),
        evaluation.metric("popularity", primary), drifts or "none measured",
    )
    return evaluation


def _base_results(
    model: Any, tokenizer: Any, inputs: EvalInputs, cfg: TetherConfig, key: str, cache_path: Path, base_name: str,
    *, use_cache: bool, progress: bool, base_hash: str, device: str, dtype: str,
) -> tuple[dict[str, Any], bool]:
    """The base model's results from the on-disk cache, else computed (and cached): ``(result, hit)``."""
    from tether.eval.panel import draw_self_samples

    base = _read_cache(cache_path, key) if use_cache else None
    if base is not None:
        logger.info("base model: cached results %s (no re-scoring)", cache_path)
        return base, True
    started = time.perf_counter()
    samples = draw_self_samples(model, tokenizer, inputs.panel, seed=cfg.seed, base_hash=base_hash,
                                cache_dir=cfg.model.resolved_cache_dir(), device=device, dtype=dtype)
    drawn = time.perf_counter() - started
    base = evaluate_model(model, tokenizer, inputs, cfg, name="base", progress=progress, samples=samples)
    base["timings"]["self_samples"] = drawn
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            cache_path,
            json.dumps({"format": CACHE_FORMAT, "key": key, "base_model": base_name, "result": base}, allow_nan=False),
        )
    except OSError as exc:  # a read-only cache must not fail the evaluation
        logger.warning("could not write the base-evaluation cache %s: %s", cache_path, exc)
    return base, False


def expected_base_cache_key(cfg: TetherConfig, root: Path, base_model_hash: str) -> str:
    """The :func:`base_cache_key` an evaluation of ``cfg.model`` will use, without loading the model.

    Device and dtype are the ones :func:`tether.model.base.load_base_model` picks for ``cfg.model``.
    Cheap (reads and hashes the processed test data), so an orchestrator can key a cache on it.
    """
    from tether.model.base import _device_and_dtype

    device, dtype = _device_and_dtype(cfg.model, None, None)
    return base_cache_key(base_model_hash, load_eval_inputs(cfg, Path(root).resolve()), device=device, dtype=str(dtype))


def evaluate_base(cfg: TetherConfig, root: Path, *, base_cache: bool = True, progress: bool = True) -> dict[str, Any]:
    """The zero-shot base model alone, under the same protocol :func:`evaluate_run` uses.

    Its output can be handed to ``evaluate_run(..., base_result=...)``, which then scores only
    the candidate; the on-disk cache (:func:`base_cache_key`) is read and written as there.

    Args:
        cfg: the config (``cfg.model`` is the base model).
        root: the project root.
        base_cache: reuse cached base results when the key matches.
        progress: progress bars.

    Returns:
        ``key`` (:func:`base_cache_key`), ``base_model``, ``base_model_hash``, ``device``, ``dtype``,
        ``hit`` (the on-disk cache answered), ``seconds`` and ``result`` (the :func:`evaluate_model` dict).
    """
    from tether.model.train import _load_model

    started = time.perf_counter()
    root = Path(root).resolve()
    inputs = load_eval_inputs(cfg, root)
    model, tokenizer, base_name, base_hash, device, dtype = _load_model(cfg, None)
    model.eval()
    key = base_cache_key(base_hash, inputs, device=device, dtype=str(dtype))
    cache_path = cfg.model.resolved_cache_dir() / EVAL_CACHE_SUBDIR / f"{key}.json"
    result, hit = _base_results(model, tokenizer, inputs, cfg, key, cache_path, base_name,
                                use_cache=base_cache, progress=progress, base_hash=base_hash, device=device,
                                dtype=str(dtype))
    return {
        "key": key, "base_model": base_name, "base_model_hash": base_hash, "device": device,
        "dtype": str(dtype).removeprefix("torch."), "hit": hit, "seconds": time.perf_counter() - started,
        "result": result,
    }


def _assemble(
    cfg: TetherConfig, inputs: EvalInputs, cand: dict[str, Any], base: dict[str, Any], pop: RecEval
) -> Evaluation:
    ec = cfg.eval
    n_boot, alpha, seed = ec.bootstrap_samples, 1.0 - ec.ci_level, cfg.seed
    recs = {"candidate": RecEval.from_dict(cand["rec"]), "base": RecEval.from_dict(base["rec"]), "popularity": pop}
    models = {"candidate": cand, "base": base}

    cand_texts, base_texts = list(cand["generations"]), list(base["generations"])
    health = {"base": generation_health(base_texts), "candidate": generation_health(cand_texts, base_texts)} \
        if inputs.golden_prompts else {}

    systems: dict[str, dict[str, float]] = {}
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    for name, rec in recs.items():
        m = dict(rec.metrics)
        iv: dict[str, tuple[float, float]] = {}
        for metric, values in rec.per_user.items():
            iv[metric] = metrics.bootstrap_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
        if name in models:
            res = models[name]
            m.update({f"{k}_{res['alt_rule']}": v for k, v in res["alt_metrics"].items()})
            vi = res["valid_items"]
            m["valid_item_rate"] = metrics.as_float(vi["rate"])
            m["exact_title_rate"] = metrics.as_float(vi.get("exact_rate", float("nan")))
            if vi["per_user"]:
                iv["valid_item_rate"] = metrics.bootstrap_ci(vi["per_user"], n_boot=n_boot, alpha=alpha, seed=seed)
            for source, entry in res["panel"].items():
                m[f"perplexity.{source}"] = metrics.as_float(entry["ppl"])
                iv[f"perplexity.{source}"] = _ppl_ci(entry["per_doc"], n_boot, alpha, seed)
            m.update({k: v for k, v in health.get(name, {}).items() if k != "n"})
        systems[name] = {k: metrics.as_float(v) for k, v in m.items()}
        intervals[name] = iv

    primary = cfg.gates.primary_metric
    comparisons: dict[str, dict[str, Any]] = {}
    for ref in ("popularity", "base"):
        a, b = recs["candidate"].per_user.get(primary), recs[ref].per_user.get(primary)
        diff = systems["candidate"].get(primary, math.nan) - systems[ref].get(primary, math.nan)
        interval = None
        if a is not None and b is not None:
            interval = metrics.paired_bootstrap_ci(a, b, n_boot=n_boot, alpha=alpha, seed=seed)
        comparisons[f"candidate_vs_{ref}"] = {"metric": primary, "diff": diff, "interval": interval}
    limits = {src.name: src.max_drift for src in (inputs.panel.sources if inputs.panel else [])}
    panel = drift_table(cand["panel"], base["panel"], limits, n_boot=n_boot, alpha=alpha, seed=seed)
    comparisons["drift_panel"] = panel
    worst = worst_source(panel)
    if worst is not None:
        comparisons["perplexity_drift"] = {"metric": f"perplexity.{worst}", "source": worst, **panel[worst]}
    golden = drift_table({"golden": {**cand["golden"], "ppl": _ppl(cand["golden"])}},
                         {"golden": {**base["golden"], "ppl": _ppl(base["golden"])}}, {"golden": math.nan},
                         n_boot=n_boot, alpha=alpha, seed=seed)["golden"] if cand["golden"]["per_doc"] else None
    if golden is not None:
        # With identical tokens, drift = exp(nll_diff) - 1, so the interval maps to nats by log1p.
        iv = golden["interval"]
        comparisons["golden_kl"] = {
            "metric": "golden_kl", "kl": golden["nll_diff"], "n_tokens": golden["n_tokens"], "n_prompts": golden["n_docs"],
            "interval": None if iv is None else (math.log1p(iv[0]), math.log1p(iv[1])),
        }

    rows = side_by_side_rows(inputs.golden_prompts, base_texts, cand_texts) if inputs.golden_prompts else []
    return Evaluation(
        systems=systems,
        intervals=intervals,
        comparisons=comparisons,
        slices={name: rec.slices for name, rec in recs.items()},
        per_user={name: {k: v.tolist() for k, v in rec.per_user.items()} for name, rec in recs.items()},
        user_ids=list(inputs.user_ids),
        perplexity={name: res["panel"] for name, res in models.items()},
        health=health,
        generations=rows,
        valid_item_generations={name: res["valid_items"]["generations"] for name, res in models.items()},
        protocol=dict(inputs.protocol),
        ci_level=ec.ci_level,
        bootstrap_samples=n_boot,
        seed=seed,
    )


def _ppl(entry: Mapping[str, Any]) -> float:
    nll, n = sum(d[0] for d in entry["per_doc"]), sum(d[1] for d in entry["per_doc"])
    return math.exp(nll / n) if n else math.nan


def _ppl_ci(per_doc: Sequence[Sequence[float]], n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    """Bootstrap interval of the corpus perplexity over documents (token-weighted, as pinned)."""
    nll = np.array([d[0] for d in per_doc], dtype=np.float64)
    tok = np.array([d[1] for d in per_doc], dtype=np.float64)

    def stat(idx: np.ndarray) -> float:
        i = idx.astype(np.int64)
        t = tok[i].sum()
        return float(np.exp(nll[i].sum() / t)) if t > 0 else math.nan

    return metrics.bootstrap_ci(np.arange(len(nll), dtype=np.float64), stat=stat, n_boot=n_boot, alpha=alpha, seed=seed)
