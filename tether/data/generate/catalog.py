"""The generated movie catalog: readable unique titles, series, genres and descriptions.

Word lists and the genre vocabulary, and :func:`_build_catalog`, which draws a catalog from
one ``numpy`` Generator in a fixed order (so the same seed gives the same catalog).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

SERIES_CADENCE = 2  # years between the parts of a series (first parts 1975-2010, so <= 2016)

GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Comedy", "Crime", "Drama",
    "Fantasy", "Horror", "Romance", "Sci-Fi", "Thriller",
)

# How each genre is named in a description ("a tense <noun> about ...").
_GENRE_NOUN = {
    "Action": "action film", "Adventure": "adventure", "Comedy": "comedy",
    "Crime": "crime story", "Drama": "drama", "Fantasy": "fantasy tale",
    "Horror": "horror film", "Romance": "romance", "Sci-Fi": "science-fiction film",
    "Thriller": "thriller",
}
_GENRE_TONE = {
    "Action": ("fast", "explosive", "relentless"),
    "Adventure": ("sweeping", "rousing", "sun-bleached"),
    "Comedy": ("warm", "absurd", "sharp"),
    "Crime": ("gritty", "cool", "twisting"),
    "Drama": ("quiet", "tender", "unflinching"),
    "Fantasy": ("enchanting", "strange", "luminous"),
    "Horror": ("creeping", "grim", "unsettling"),
    "Romance": ("bittersweet", "playful", "tender"),
    "Sci-Fi": ("cerebral", "eerie", "dazzling"),
    "Thriller": ("tense", "taut", "paranoid"),
}

_ADJECTIVES = (
    "Silent", "Crimson", "Hidden", "Broken", "Golden", "Distant", "Frozen", "Burning",
    "Quiet", "Wild", "Hollow", "Midnight", "Scarlet", "Silver", "Forgotten", "Restless",
    "Lonely", "Bright", "Shattered", "Secret", "Savage", "Gentle", "Velvet", "Northern",
    "Southern", "Last", "Lost", "Falling", "Rising", "Wandering", "Sleeping", "Stolen",
    "Painted", "Crooked", "Hungry", "Fearless", "Bitter", "Lucky", "Strange", "Dark",
    "Pale", "Neon", "Salt", "Stone", "Glass", "Copper", "Winter", "Summer", "Little",
    "Grand", "Narrow", "Brave", "Wicked", "Tender", "Reckless", "Sudden", "Crystal",
    "Paper", "Iron", "Electric", "Emerald", "Amber", "Ancient", "Endless", "Open",
)
_VOWEL_ADJECTIVES = tuple(a for a in _ADJECTIVES if a[0] in "AEIOU")
_NOUNS = (
    "Harbor", "River", "Garden", "Mountain", "Valley", "Kingdom", "Empire", "Shadow",
    "Mirror", "Signal", "Station", "Horizon", "Island", "Forest", "Desert", "Ocean",
    "Harvest", "Promise", "Letter", "Voyage", "Journey", "Bridge", "Tower", "Castle",
    "Engine", "Orchard", "Lantern", "Compass", "Anchor", "Crown", "Dagger", "Feather",
    "Frontier", "Highway", "Lighthouse", "Meadow", "Canyon", "Circus", "Carnival",
    "Parade", "Echo", "Thunder", "Storm", "Tide", "Ember", "Comet", "Planet", "Orbit",
    "Stranger", "Detective", "Witness", "Outlaw", "Soldier", "Pilot", "Sailor", "Dancer",
    "Painter", "Gambler", "Hunter", "Wolf", "Raven", "Falcon", "Tiger", "Fox", "Serpent",
    "Dragon", "Ghost", "Phantom", "Heart", "Dream", "Night", "Morning", "Sky", "Road",
    "City", "Village", "Street", "Window", "Door", "Key", "Clock", "Song", "Melody",
)
_NAMES = (
    "Maria", "Jonah", "Ellie", "Victor", "Nora", "Felix", "Iris", "Oscar", "Clara", "Hugo",
    "Ada", "Leo", "Mabel", "Silas", "Greta", "Tobias", "Vera", "Arthur", "June", "Rufus",
)
_PLACES = (
    "Paris", "Tokyo", "Lisbon", "Cairo", "Havana", "Vienna", "Oslo", "Brooklyn", "Texas",
    "Alaska", "Marseille", "Montana", "Sicily", "Berlin", "Dublin", "Rio", "Shanghai",
    "Prague", "Nairobi", "Memphis",
)
_WHO = (
    "a retired pilot", "an estranged sister", "a young detective", "a stubborn farmer",
    "an exiled prince", "a small-town teacher", "a runaway teenager", "a weary soldier",
    "an ambitious chef", "a lonely astronomer", "a disgraced surgeon", "a reluctant heir",
    "a nervous bank clerk", "a travelling magician", "a widowed fisherman", "a rookie reporter",
)
_DOES = (
    "uncovers a family secret", "must win back a stolen fortune", "races against time",
    "falls for an unlikely rival", "searches for a missing friend", "faces an ancient curse",
    "plans one last job", "tries to save a failing theatre", "gets a second chance",
    "is hunted by a ruthless stranger", "starts over with nothing", "breaks a promise",
)
_WHERE = (
    "in a coastal town", "on a distant planet", "in 1970s Paris", "across a frozen wasteland",
    "in a city that never sleeps", "on a crumbling estate", "aboard a night train",
    "in the desert, far from home", "in a village with no name", "beneath a flooded city",
)


# Name shapes 0-4 of :func:`_base_name`, stored as they read (5-7 carry a trailing article).
_NAME_TEMPLATES = (
    "{adj} {noun}", "{noun} of {place}", "{name}'s {noun}", "{noun} to {place}", "{adj} {noun} of {place}",
)


def _base_name(rng: np.random.Generator, allow_article: bool) -> tuple[str, str]:
    """Draw a 2-4 word name; returns (key without article, MovieLens-stored form)."""
    # Series names stay short (2-3 words): ", Part n" is appended to them.
    pattern = int(rng.integers(0, 8 if allow_article else 4))
    adj = _ADJECTIVES[rng.integers(len(_ADJECTIVES))]
    noun = _NOUNS[rng.integers(len(_NOUNS))]
    place = _PLACES[rng.integers(len(_PLACES))]
    name = _NAMES[rng.integers(len(_NAMES))]
    if pattern < len(_NAME_TEMPLATES):
        key = _NAME_TEMPLATES[pattern].format(adj=adj, noun=noun, place=place, name=name)
        return key, key
    # MovieLens stores leading articles at the end: "Silent Harbor, The".
    if pattern in (5, 6):
        key = f"{adj} {noun}"
        return key, f"{key}, The"
    if pattern == 7 and rng.random() < 0.5:
        key = f"{noun} in {place}"
        return key, f"{key}, {'An' if noun[0] in 'AEIOU' else 'A'}"
    vadj = _VOWEL_ADJECTIVES[rng.integers(len(_VOWEL_ADJECTIVES))]
    key = f"{vadj} {noun}"
    return key, f"{key}, An"


def _description(rng: np.random.Generator, genre: str, series: tuple[str, int] | None) -> str:
    """One sentence naming the primary genre; a series part's names its series and part."""
    tone = _GENRE_TONE[genre][rng.integers(3)]
    article = "an" if tone[0] in "aeiou" else "a"
    who = _WHO[rng.integers(len(_WHO))]
    does = _DOES[rng.integers(len(_DOES))]
    where = _WHERE[rng.integers(len(_WHERE))]
    body = f"{article} {tone} {_GENRE_NOUN[genre]} about {who} who {does} {where}."
    if series is None:
        return body[0].upper() + body[1:]
    base, part = series
    return f"{base}, part {part}: {body}"


def _build_catalog(
    rng: np.random.Generator, n_items: int, series_share: float
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Build the catalog.

    Returns:
        items (movieId order = row order), genre matrix (n_items x n_genres, bool),
        next_part (index of the next part or -1), is_entry (standalone or Part 1).
    """
    n_series_items_target = int(round(n_items * series_share))
    # Series lengths 2-4 until the series budget is spent.
    lengths: list[int] = []
    while sum(lengths) < n_series_items_target:
        remaining = n_series_items_target - sum(lengths)
        length = int(rng.choice([2, 3, 4], p=[0.35, 0.4, 0.25]))
        if remaining < 2:
            break
        lengths.append(min(length, remaining))
    n_standalone = n_items - sum(lengths)

    used_keys: set[str] = set()
    used_titles: set[str] = set()

    def fresh_name(allow_article: bool, year: int) -> tuple[str, str]:
        for attempt in range(200):
            key, stored = _base_name(rng, allow_article)
            # Prefer a name never used; on huge catalogs accept a reuse in another year.
            if key not in used_keys or (attempt >= 50 and f"{stored} ({year})" not in used_titles):
                used_keys.add(key)
                return key, stored
        raise RuntimeError("could not draw a unique title; the word lists are exhausted")

    rows: list[dict[str, Any]] = []
    g = len(GENRES)
    for length in lengths:
        genres = _draw_genres(rng, g)
        year = int(rng.integers(1975, 2011))
        key, _ = fresh_name(False, year)
        for part in range(1, length + 1):
            title = f"{key}, Part {part} ({year})"
            used_titles.add(title)
            rows.append({
                # "next": the row (construction order) of the following part, -1 for the last.
                "title": title, "genres": genres, "part": part, "next": len(rows) + 1 if part < length else -1,
                "description": _description(rng, GENRES[genres[0]], (key, part)),
            })
            # A regular cadence, one part every SERIES_CADENCE years: the next part's year follows
            # from the previous part's, which is in the user's history. With random gaps (the
            # first version) no model could name a sequel's year without memorising it, and free
            # generations were near-misses ("Tide to Lisbon, Part 4 (1981)" for 1982). The draw
            # stays, so every other draw, hence every name and interaction, is unchanged.
            rng.integers(1, 5)
            year += SERIES_CADENCE
    for _ in range(n_standalone):
        genres = _draw_genres(rng, g)
        year = int(rng.integers(1970, 2019))
        _, stored = fresh_name(True, year)
        title = f"{stored} ({year})"
        used_titles.add(title)
        rows.append({
            "title": title, "genres": genres, "part": 0, "next": -1,
            "description": _description(rng, GENRES[genres[0]], None),
        })

    # Random movieId order, so ids carry no series or genre information.
    order = rng.permutation(n_items)
    rows = [rows[i] for i in order]
    pos_of_old = np.empty(n_items, dtype=np.int64)
    pos_of_old[order] = np.arange(n_items)

    genre_matrix = np.zeros((n_items, g), dtype=bool)
    next_part = np.full(n_items, -1, dtype=np.int64)
    is_entry = np.zeros(n_items, dtype=bool)
    for new_idx, row in enumerate(rows):
        genre_matrix[new_idx, list(row["genres"])] = True
        is_entry[new_idx] = row["part"] <= 1
        if row["next"] >= 0:
            next_part[new_idx] = pos_of_old[row["next"]]

    items = pd.DataFrame({
        "item_id": [str(i + 1) for i in range(n_items)],
        "title": [r["title"] for r in rows],
        "genres": ["|".join(sorted(GENRES[k] for k in r["genres"])) for r in rows],
        "description": [r["description"] for r in rows],
    })
    return items, genre_matrix, next_part, is_entry


def _draw_genres(rng: np.random.Generator, g: int) -> tuple[int, ...]:
    """One primary genre, and a second one half of the time (primary first)."""
    primary = int(rng.integers(g))
    if rng.random() < 0.5:
        second = int(rng.integers(g - 1))
        second += second >= primary
        return (primary, second)
    return (primary,)


def _zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like popularity ``1 / rank ** exponent`` over a random ranking of ``n`` items."""
    ranks = rng.permutation(n) + 1
    return 1.0 / ranks.astype(np.float64) ** exponent

