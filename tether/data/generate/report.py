"""How learnable a log is: series continuations, popularity skew, favourite-genre share."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from tether.data.generate.catalog import GENRES

_TITLE_PART_RE = re.compile(r"^(?P<base>.+), Part (?P<part>\d+) \(\d{4}\)$")


def structure_report(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    favourite_genres: dict[str, tuple[str, ...]] | None = None,
    history_length: int = 5,
) -> dict[str, float]:
    """Numbers that say how learnable a log is (works on any canonical tables).

    Args:
        interactions: canonical interactions (``user_id``, ``item_id``, ``timestamp``).
        items: canonical items (``item_id``, ``title``, ``genres``).
        favourite_genres: each user's favourite genres, when known (the generator's truth).
        history_length: the prompt window used for the "previous part in the window" share.

    Returns:
        ``series_continuation_share`` (all interactions and ``last_item_*`` for each user's
        last item: Part n>1 whose Part n-1 the user watched before; ``_in_window``: within
        the last ``history_length`` items), ``top10pct_item_share`` of interactions,
        ``favourite_genre_share`` and its ``_chance`` level (when favourites are given),
        ``mean_history_length``.
    """
    df = interactions[["user_id", "item_id", "timestamp"]].copy()
    if "source_row" in interactions:
        df["source_row"] = interactions["source_row"].to_numpy()
    else:
        df["source_row"] = np.arange(len(df))
    df = df.sort_values(["user_id", "timestamp", "source_row"], kind="stable").reset_index(drop=True)
    parts = items["title"].str.extract(_TITLE_PART_RE)
    base_of = dict(zip(items["item_id"], parts["base"]))
    part_of = dict(zip(items["item_id"], pd.to_numeric(parts["part"]).fillna(0).astype(int)))
    key = [(base_of.get(i), part_of.get(i, 0)) for i in df["item_id"]]

    users = df["user_id"].to_numpy()
    cont = np.zeros(len(df), dtype=bool)
    cont_window = np.zeros(len(df), dtype=bool)
    seen: dict[tuple[Any, int], int] = {}
    prev_user = None
    for i, (u, k) in enumerate(zip(users, key)):
        if u != prev_user:
            seen = {}
            prev_user = u
        base, part = k
        if isinstance(base, str) and part > 1 and (base, part - 1) in seen:
            cont[i] = True
            cont_window[i] = i - seen[(base, part - 1)] <= history_length
        if isinstance(base, str):
            seen[(base, part)] = i
    last = np.r_[users[1:] != users[:-1], True] if len(users) else np.zeros(0, dtype=bool)

    counts = df["item_id"].value_counts().to_numpy()
    top = max(1, int(np.ceil(0.1 * len(items))))
    out: dict[str, float] = {
        "n_interactions": float(len(df)),
        "mean_history_length": float(len(df) / max(1, df["user_id"].nunique())),
        "series_continuation_share": float(cont.mean()) if len(df) else 0.0,
        "last_item_series_continuation_share": float(cont[last].mean()) if last.any() else 0.0,
        "last_item_series_continuation_in_window_share": float(cont_window[last].mean()) if last.any() else 0.0,
        "top10pct_item_share": float(np.sort(counts)[::-1][:top].sum() / max(1, counts.sum())),
    }
    if favourite_genres is not None:
        # Genre membership as bit masks: one integer per interaction and per user.
        bit = {gname: 1 << k for k, gname in enumerate(GENRES)}
        item_bits = {
            i: sum(bit.get(gname, 0) for gname in set(str(gs).split("|")))
            for i, gs in zip(items["item_id"], items["genres"].fillna(""))
        }
        row_bits = df["item_id"].map(item_bits).fillna(0).to_numpy(dtype=np.int64)
        user_bits = {u: sum(bit.get(gname, 0) for gname in set(favs)) for u, favs in favourite_genres.items()}
        fav_bits = df["user_id"].map(user_bits).fillna(0).to_numpy(dtype=np.int64)
        out["favourite_genre_share"] = float(((row_bits & fav_bits) != 0).mean()) if len(df) else 0.0
        # Chance: how often an interaction drawn from the whole log hits the user's favourites.
        bits_count = pd.Series(row_bits).value_counts()
        chance_of: dict[int, float] = {}
        for b in set(user_bits.values()):
            chance_of[b] = float(bits_count[(bits_count.index.to_numpy() & b) != 0].sum() / max(1, len(df)))
        out["favourite_genre_share_chance"] = (
            float(np.mean([chance_of[b] for b in user_bits.values()])) if user_bits else 0.0
        )
    return out

