"""The sample-data generator: determinism, file format, and the structure a model can learn."""

from __future__ import annotations

import csv
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tether.config import GenerateConfig, load_config
from tether.data.clean import normalize_titles
from tether.data.generate import GENRES, generate_sample_data, generate_tables, make_large_log, structure_report

PART_RE = re.compile(r"^(?P<base>.+), Part (?P<part>\d+) \((?P<year>\d{4})\)$")


@pytest.fixture(scope="module")
def default_data():
    """The demo-size log (params.yaml defaults): 600 users, 300 items, ~0.2 s."""
    cfg = load_config()
    return cfg, generate_tables(cfg.generate, cfg.seed)


def test_same_seed_gives_identical_files(tmp_path: Path, test_config) -> None:
    a = generate_sample_data(test_config.generate, 7, tmp_path / "a")
    b = generate_sample_data(test_config.generate, 7, tmp_path / "b")
    c = generate_sample_data(test_config.generate, 8, tmp_path / "c")
    for name in ("ratings.csv", "movies.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "ratings.csv").read_bytes() != (tmp_path / "c" / "ratings.csv").read_bytes()
    assert a.to_dict()["structure"] == b.to_dict()["structure"]
    assert c.n_interactions > 0


def test_files_are_movielens_latest_format(tmp_path: Path, test_config) -> None:
    summary = generate_sample_data(test_config.generate, 3, tmp_path)
    with open(summary.ratings_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["userId", "movieId", "rating", "timestamp"]
    assert len(rows) - 1 == summary.n_interactions
    assert all(re.fullmatch(r"\d+,\d+,\d\.\d,\d+", ",".join(r)) for r in rows[1:])
    text = summary.movies_path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "movieId,title,genres,description"
    with open(summary.movies_path, newline="", encoding="utf-8") as f:
        movies = list(csv.reader(f))[1:]
    assert len(movies) == test_config.generate.n_items
    assert all(len(r) == 4 for r in movies)
    # MovieLens quoting: a field is quoted exactly when it contains a comma.
    for line, row in zip(text.splitlines()[1:], movies):
        assert (f'"{row[1]}"' in line) == ("," in row[1])
    assert any("," in r[1] for r in movies), "some titles carry ', The' or ', Part n'"


def test_ids_ratings_timestamps_valid(default_data) -> None:
    cfg, data = default_data
    inter, items = data.interactions, data.items
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "rating", "source_row"]
    assert set(inter["item_id"]) <= set(items["item_id"])
    assert inter["user_id"].nunique() == cfg.generate.n_users
    assert items["item_id"].is_unique and items["title"].is_unique
    assert set(inter["rating"].unique()) <= {x / 2 for x in range(2, 11)}
    assert not inter.duplicated(["user_id", "item_id"]).any()
    start = datetime(2019, 1, 1, tzinfo=timezone.utc).timestamp()
    assert inter["timestamp"].min() >= start
    assert inter["timestamp"].max() < datetime.now(tz=timezone.utc).timestamp()
    # Strictly increasing within a user: no ties, so the order is unambiguous.
    ordered = inter.sort_values(["user_id", "timestamp"])
    assert not ordered.duplicated(["user_id", "timestamp"]).any()
    lengths = inter.groupby("user_id").size()
    assert lengths.min() >= cfg.generate.min_history and lengths.max() <= cfg.generate.max_history


def test_titles_are_readable_and_genres_known(default_data) -> None:
    _, data = default_data
    titles = normalize_titles(data.items["title"])  # "Silent Harbor, The" -> "The Silent Harbor"
    for title in titles:
        m = re.fullmatch(r"(?P<name>.+) \((?P<year>\d{4})\)", title)
        assert m, title
        name = re.sub(r", Part \d+$", "", m["name"])
        assert 2 <= len(name.split()) <= 4, title
        assert 1970 <= int(m["year"]) <= 2018
    for genres in data.items["genres"]:
        parts = genres.split("|")
        assert 1 <= len(parts) <= 2 and set(parts) <= set(GENRES) and parts == sorted(parts)
    assert all(d.endswith(".") and d.count(".") == 1 for d in data.items["description"])


def test_series_parts_are_watched_in_order(default_data) -> None:
    _, data = default_data
    parts = data.items["title"].str.extract(PART_RE)
    info = dict(zip(data.items["item_id"], zip(parts["base"], pd.to_numeric(parts["part"]))))
    n_later_parts = 0
    for _, g in data.interactions.sort_values(["user_id", "timestamp"]).groupby("user_id"):
        seen: set[tuple[str, int]] = set()
        for item in g["item_id"]:
            base, part = info[item]
            if isinstance(base, str):
                if part > 1:
                    n_later_parts += 1
                    assert (base, part - 1) in seen, f"part {part} of {base} before part {part - 1}"
                seen.add((base, int(part)))
    assert n_later_parts > 0.2 * len(data.interactions)


def test_structure_is_learnable(default_data) -> None:
    cfg, data = default_data
    report = structure_report(data.interactions, data.items, data.favourite_genres)
    # A good share of held-out last items is the next part of a series in the history,
    # mostly within the prompt's window of 5 titles.
    assert report["last_item_series_continuation_share"] >= 0.25
    assert report["last_item_series_continuation_in_window_share"] >= 0.2
    # Genre affinity well above what the user's favourites would get by chance.
    assert report["favourite_genre_share"] > report["favourite_genre_share_chance"] + 0.3
    # Popularity skew: the top 10% of items hold far more than 10% of interactions.
    assert report["top10pct_item_share"] > 0.25


def test_structure_knobs_move_the_structure() -> None:
    base = dict(n_items=200, n_users=300)
    flat = GenerateConfig(**base, popularity_exponent=0.0, favourite_genre_prob=0.0, continue_prob=0.0)
    rich = GenerateConfig(**base)
    r_flat = generate_tables(flat, 1)
    r_rich = generate_tables(rich, 1)
    s_flat = structure_report(r_flat.interactions, r_flat.items, r_flat.favourite_genres)
    s_rich = structure_report(r_rich.interactions, r_rich.items, r_rich.favourite_genres)
    assert s_rich["top10pct_item_share"] > s_flat["top10pct_item_share"] + 0.1
    assert s_rich["favourite_genre_share"] > s_flat["favourite_genre_share"] + 0.3
    assert s_rich["series_continuation_share"] > s_flat["series_continuation_share"] + 0.15


def test_tiny_catalog_still_works() -> None:
    cfg = GenerateConfig(n_items=20, n_users=10, min_history=18, max_history=20)
    data = generate_tables(cfg, 0)
    assert not data.interactions.duplicated(["user_id", "item_id"]).any()
    assert data.interactions.groupby("user_id").size().max() <= 20


def test_make_large_log_is_canonical_and_dirty() -> None:
    inter, items = make_large_log(30_000, seed=5)
    assert len(inter) == 30_000
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "rating", "source_row"]
    assert inter["timestamp"].dtype == np.int64 and inter["rating"].dtype == np.float64
    assert inter["source_row"].tolist() == list(range(1, 30_001))
    assert set(inter["item_id"]) <= set(items["item_id"])
    assert inter.duplicated(["user_id", "item_id"]).mean() < 0.05  # some, not many
    assert inter.duplicated(["user_id", "item_id"]).any()
    assert (inter.groupby("user_id").size() < 3).any()  # food for the k-core filter
    assert items["description"].str.contains("@example.com").any()
    assert items["title"].str.contains(", The (", regex=False).any()
    again, _ = make_large_log(30_000, seed=5)
    pd.testing.assert_frame_equal(inter, again)
