"""Evaluation inputs: the sampled users, their candidates, slices, popularity, genres, panel and prompts.

:func:`load_eval_inputs` reads the processed data under the pinned protocol (see
:mod:`tether.eval.evaluate`) and returns the :class:`EvalInputs` every system is evaluated on.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tether.data.errors import DataError
from tether.eval import metrics
from tether.eval.generation import GoldenPrompt, load_golden_prompts
from tether.eval.panel import Panel, load_panel
from tether.io import resolve, sha256_files, sha256_json

if TYPE_CHECKING:
    from tether.config import TetherConfig

logger = logging.getLogger(__name__)

SLICES = ("short_history", "long_history", "head_item", "tail_item")


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

