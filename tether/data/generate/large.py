"""A large, somewhat dirty log built with vectorised numpy, for benchmarks of the cleaning stage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tether.data.generate.catalog import _build_catalog, _zipf_weights


def make_large_log(
    n_interactions: int,
    seed: int,
    n_items: int | None = None,
    dirty: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A large log in canonical table form, fast (vectorised numpy), for benchmarks.

    Same ingredients as :func:`generate_tables` (Zipf popularity, favourite genres, series
    continuations) approximated without a per-user loop; users may re-watch items (the
    cleaning stage drops those duplicates). With ``dirty`` some item text carries MovieLens
    article titles, full-width letters, control characters, emails, phone numbers and URLs,
    ties in timestamps exist, and a few users have fewer than 3 interactions.

    Args:
        n_interactions: exact number of interaction rows.
        seed: randomness source.
        n_items: catalog size (default ``max(500, n_interactions // 200)``).
        dirty: inject the text problems listed above.

    Returns:
        ``(interactions, items)`` with the canonical columns, rows ordered by user then item
        (like MovieLens files, so chronological order is the cleaner's job).
    """
    rng = np.random.default_rng(seed)
    n_items = n_items or max(500, n_interactions // 200)
    items, genre_matrix, next_part, is_entry = _build_catalog(rng, n_items, 0.35)
    g = genre_matrix.shape[1]

    # Users: history lengths ~ 3 + geometric(mean ~20); the last user takes the remainder.
    lengths = 3 + rng.geometric(1 / 18, size=n_interactions // 10 + 10)
    csum = np.cumsum(lengths)
    n_users = int(np.searchsorted(csum, n_interactions) + 1)
    lengths = lengths[:n_users]
    lengths[-1] -= int(csum[n_users - 1] - n_interactions)
    if dirty:  # a few short users for k-core filtering to remove
        short = rng.choice(n_users - 1, size=max(1, n_users // 200), replace=False)
        moved = lengths[short] - 2
        lengths[short] = 2
        lengths[-1] += int(moved.sum())
    user = np.repeat(np.arange(n_users), lengths)
    fav = rng.integers(g, size=n_users)[user]

    weights = np.where(is_entry, _zipf_weights(rng, n_items, 1.0), 0.0)
    item = np.empty(n_interactions, dtype=np.int64)
    from_fav = rng.random(n_interactions) < 0.7
    u01 = rng.random(n_interactions)
    entry = np.flatnonzero(is_entry)
    cdf_all = np.cumsum(weights[entry])
    pick = ~from_fav
    item[pick] = entry[np.minimum(np.searchsorted(cdf_all / cdf_all[-1], u01[pick]), len(entry) - 1)]
    for k in range(g):
        rows = np.flatnonzero(from_fav & (fav == k))
        idx = entry[genre_matrix[entry, k]]
        cdf = np.cumsum(weights[idx])
        item[rows] = idx[np.minimum(np.searchsorted(cdf / cdf[-1], u01[rows]), len(idx) - 1)]
    # Sampling with replacement repeats popular items within a user: redraw those a few
    # times from the whole catalog, so duplicates stay a small, realistic share.
    for _ in range(8):
        dup = pd.Series(user * n_items + item).duplicated().to_numpy()
        if not dup.any():
            break
        redraw = np.searchsorted(cdf_all / cdf_all[-1], rng.random(int(dup.sum())))
        item[dup] = entry[np.minimum(redraw, len(entry) - 1)]
    # One pass of series continuations: after Part n, often Part n+1.
    same_user = np.r_[False, user[1:] == user[:-1]]
    prev_next = np.r_[-1, next_part[item[:-1]]]
    cont = same_user & (prev_next >= 0) & (rng.random(n_interactions) < 0.6)
    item[cont] = prev_next[cont]
    if dirty:  # explicit re-watches: the cleaner keeps the earliest
        rewatch = np.flatnonzero(same_user & (rng.random(n_interactions) < 0.01))
        item[rewatch] = item[rewatch - 1]

    start = 1_546_300_800  # 2019-01-01 UTC
    gaps = np.floor(rng.exponential(2 * 86_400, size=n_interactions)).astype(np.int64)
    if dirty:
        gaps[rng.random(n_interactions) < 0.01] = 0  # ties: the cleaner breaks them by source_row
    first = np.r_[True, ~same_user[1:]]
    gaps[first] = rng.integers(0, 730 * 86_400, size=int(first.sum()))
    csum = np.cumsum(gaps)
    user_base = np.r_[0, csum[:-1]][first]  # cumsum before each user's first row
    ts = csum - np.repeat(user_base, lengths) + start
    rating = np.clip(np.round((3.5 + rng.normal(0, 1.0, n_interactions)) * 2) / 2, 0.5, 5.0)

    order = np.lexsort((item, user))
    interactions = pd.DataFrame({
        "user_id": (user[order] + 1).astype(str),
        "item_id": (item[order] + 1).astype(str),
        "timestamp": ts[order].astype(np.int64),
        "rating": rating[order].astype(np.float64),
    })
    interactions["source_row"] = np.arange(1, n_interactions + 1, dtype=np.int64)

    if dirty:
        titles = items["title"].to_numpy(dtype=object).copy()
        desc = items["description"].to_numpy(dtype=object).copy()
        r = rng.random(n_items)
        for i in np.flatnonzero(r < 0.01):
            titles[i] = titles[i].replace("a", "\uff41")  # full-width 'a', NFKC maps it back
        for i in np.flatnonzero((r >= 0.01) & (r < 0.02)):
            titles[i] = titles[i].replace(" ", "  \t", 1) + "\u200b"
        for i in np.flatnonzero((r >= 0.02) & (r < 0.03)):
            desc[i] = desc[i] + " Contact press@example.com for screeners."
        for i in np.flatnonzero((r >= 0.03) & (r < 0.04)):
            desc[i] = desc[i] + " Tickets: +1 555-123-4567."
        for i in np.flatnonzero((r >= 0.04) & (r < 0.05)):
            desc[i] = desc[i] + " More at https://example.com/films?id=" + str(i) + "."
        items = items.assign(title=titles, description=desc)
        items["title"] = items["title"].astype(str)
        items["description"] = items["description"].astype(str)
    items = items.copy()
    items["source_row"] = np.arange(1, n_items + 1, dtype=np.int64)
    return interactions, items
