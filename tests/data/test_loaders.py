"""Loaders on tiny hand-made files in each real format, with that format's quirks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tether.config import IngestConfig
from tether.data.errors import DataError
from tether.data.loaders import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    ML100K_GENRES,
    RAW_RATING,
    RAW_TIMESTAMP,
    detect_format,
    load_raw,
)


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


def generic(**columns: str | None) -> IngestConfig:
    return IngestConfig(format="auto", generic={"columns": columns})


# --------------------------------------------------------------------------- MovieLens 100k


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    # No header, tab separators; ids with leading zeros must survive as strings.
    write(tmp_path / "u.data", "196\t007\t3\t881250949\n186\t302\t3.5\t891717742\n22\t007\t1\t878887116\n")
    # Pipe-separated latin-1: 0xE9 is 'é'; titles hold quotes; 5 fields then 19 genre flags.
    item = (
        f"007|Caf\xe9 Society (1995)|01-Jan-1995||http://us.imdb.com/x|{flags(3, 5)}\n"
        f'302|L.A. "Confidential" (1997)|01-Jan-1997||http://us.imdb.com/y|{flags(6, 16)}\n'
        f"267|unknown||||{flags(0)}\n"
    ).encode("latin-1")
    write(tmp_path / "u.item", item)
    return tmp_path


def test_ml100k_reads_tab_data_latin1_titles_and_genre_flags(ml100k: Path) -> None:
    raw = load_raw(ml100k, IngestConfig())
    assert raw.format == "movielens-100k"
    assert raw.interactions_path == ml100k / "u.data" and raw.items_path == ml100k / "u.item"
    inter = raw.interactions
    assert list(inter.columns[:5]) == INTERACTION_COLUMNS
    assert inter["item_id"].tolist() == ["007", "302", "007"]
    assert inter["user_id"].tolist() == ["196", "186", "22"]
    assert inter["timestamp"].tolist() == [881250949, 891717742, 878887116]
    assert inter["rating"].tolist() == [3.0, 3.5, 1.0]
    assert inter["source_row"].tolist() == [1, 2, 3]
    items = raw.items
    assert list(items.columns) == ITEM_COLUMNS
    assert items["item_id"].tolist() == ["007", "302", "267"]
    assert items["title"].tolist()[:2] == ["Café Society (1995)", 'L.A. "Confidential" (1997)']
    # Standard u.genre order: 3=Animation, 5=Comedy, 6=Crime, 16=Thriller; "unknown" = none.
    assert items["genres"].tolist() == ["Animation|Comedy", "Crime|Thriller", ""]
    assert items["description"].tolist() == ["", "", ""]
    assert raw.warnings == []


def test_ml100k_takes_genre_names_from_u_genre(ml100k: Path) -> None:
    names = ["none"] + [f"G{i}" for i in range(1, 19)]
    write(ml100k / "u.genre", "".join(f"{n}|{i}\n" for i, n in enumerate(names)))
    raw = load_raw(ml100k, IngestConfig(format="movielens-100k"))
    assert raw.items["genres"].tolist()[:2] == ["G3|G5", "G6|G16"]
    assert len(ML100K_GENRES) == 19


def test_ml100k_wrong_separator_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1,2,3,881250949\n")
    write(tmp_path / "u.item", f"2|A (1995)|||x|{flags(1)}\n")
    with pytest.raises(DataError) as exc:
        load_raw(tmp_path, IngestConfig())
    assert exc.value.rule == "required_columns" and "u.data" in exc.value.file
    assert "tab-separated" in str(exc.value)


# --------------------------------------------------------------------------- MovieLens latest


@pytest.fixture
def ml_latest(tmp_path: Path) -> Path:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,007,4.0,964982703\n1,11,0.5,964981247\n2,3,5,964982224\n")
    write(
        tmp_path / "movies.csv",
        "movieId,title,genres\n"
        '007,"American President, The (1995)",Comedy|Drama|Romance\n'
        '11,"Dr. Strangelove, or: How I Learned to Stop Worrying (1964)",Comedy|War\n'
        "3,Some Documentary Without Genres (2018),(no genres listed)\n",
    )
    return tmp_path


def test_ml_latest_quoted_titles_and_no_genres(ml_latest: Path) -> None:
    raw = load_raw(ml_latest, IngestConfig())
    assert raw.format == "movielens-latest"
    items = raw.items
    assert items["item_id"].tolist() == ["007", "11", "3"]
    assert items["title"].tolist() == [
        "American President, The (1995)",
        "Dr. Strangelove, or: How I Learned to Stop Worrying (1964)",
        "Some Documentary Without Genres (2018)",
    ]
    assert items["genres"].tolist() == ["Comedy|Drama|Romance", "Comedy|War", ""]
    inter = raw.interactions
    assert inter["item_id"].tolist() == ["007", "11", "3"]
    assert inter["rating"].tolist() == [4.0, 0.5, 5.0]
    assert str(inter["timestamp"].dtype) == "Int64" and inter["rating"].dtype == np.float64
    assert inter["source_row"].tolist() == [1, 2, 3]


def test_ml_latest_optional_description_column(ml_latest: Path) -> None:
    write(ml_latest / "movies.csv",
          'movieId,title,genres,description\n007,A (1995),Drama,"A quiet film, about rain."\n11,B (1996),Comedy,\n3,C (1997),War,x\n')
    items = load_raw(ml_latest, IngestConfig()).items
    assert items["description"].tolist() == ["A quiet film, about rain.", "", "x"]


def test_unparseable_values_are_kept_not_dropped(ml_latest: Path) -> None:
    write(ml_latest / "ratings.csv", "userId,movieId,rating,timestamp\n1,007,abc,964982703\n1,11,4,yesterday\n2,3,,\n")
    inter = load_raw(ml_latest, IngestConfig()).interactions
    assert len(inter) == 3
    assert np.isnan(inter["rating"][0]) and inter[RAW_RATING][0] == "abc"
    assert pd.isna(inter["timestamp"][1]) and inter[RAW_TIMESTAMP][1] == "yesterday"
    # A missing rating is allowed (NaN, nothing to report); a missing timestamp is recorded as "".
    assert np.isnan(inter["rating"][2]) and pd.isna(inter[RAW_RATING][2])
    assert inter[RAW_TIMESTAMP][2] == ""
    assert pd.isna(inter[RAW_TIMESTAMP][0]) and pd.isna(inter[RAW_RATING][1])


def test_extra_columns_are_named_in_warnings(ml_latest: Path) -> None:
    write(ml_latest / "ratings.csv", "userId,movieId,rating,timestamp,device\n1,007,4,964982703,tv\n")
    raw = load_raw(ml_latest, IngestConfig())
    assert any("ratings.csv" in w and "device" in w for w in raw.warnings)
    assert "device" not in raw.interactions.columns


# --------------------------------------------------------------------------- generic


def test_generic_csv_with_mapping_and_iso_timestamps(tmp_path: Path) -> None:
    write(tmp_path / "events.csv",
          "who,what,when\nu1,007,2021-03-04T05:06:07Z\nu1,8,2021-03-04 06:06:07+01:00\nu2,8,2021-03-05\n")
    write(tmp_path / "catalog.csv", "what,name,tags\n007,Alpha,A|B\n8,\"Beta, the\",\n")
    cfg = IngestConfig(format="generic", generic={
        "interactions_file": "events.csv", "items_file": "catalog.csv",
        "columns": {"user_id": "who", "item_id": "what", "timestamp": "when", "rating": None,
                    "title": "name", "genres": "tags", "description": None}})
    raw = load_raw(tmp_path, cfg)
    assert raw.format == "generic"
    assert raw.interactions["item_id"].tolist() == ["007", "8", "8"]
    assert raw.interactions["timestamp"].tolist() == [1614834367, 1614834367, 1614902400]
    assert raw.interactions["rating"].isna().all()
    assert raw.items["title"].tolist() == ["Alpha", "Beta, the"]
    assert raw.items["genres"].tolist() == ["A|B", ""]
    assert raw.warnings == []


def test_generic_parquet(tmp_path: Path) -> None:
    pd.DataFrame({
        "uid": [1, 2, 3],
        "iid": ["007", "8", "8"],
        "ts": pd.to_datetime(["2021-03-04T05:06:07Z", "2021-03-05T00:00:00Z", "2021-03-06T00:00:00Z"]),
        "stars": [4.5, 3.0, np.nan],
    }).to_parquet(tmp_path / "interactions.parquet")
    pd.DataFrame({"iid": ["007", "8"], "name": ["Alpha", "Beta"]}).to_parquet(tmp_path / "items.parquet")
    cfg = generic(user_id="uid", item_id="iid", timestamp="ts", rating="stars", title="name")
    assert detect_format(tmp_path, cfg) == "generic"
    raw = load_raw(tmp_path, cfg)
    assert raw.interactions["user_id"].tolist() == ["1", "2", "3"]
    assert raw.interactions["item_id"].tolist() == ["007", "8", "8"]
    assert raw.interactions["timestamp"].tolist() == [1614834367, 1614902400, 1614988800]
    assert raw.interactions["rating"].tolist()[:2] == [4.5, 3.0]
    assert raw.items["genres"].tolist() == ["", ""]


def test_generic_jsonl_with_iso_and_unix_timestamps(tmp_path: Path) -> None:
    write(tmp_path / "interactions.jsonl",
          '{"u": "007", "i": 1, "t": "2021-03-04T05:06:07+01:00", "r": 3}\n\n'
          '{"u": "8", "i": 2, "t": 1600000000}\n')
    write(tmp_path / "items.jsonl", '{"i": 1, "title": "Caf\u00e9"}\n{"i": 2, "title": "B", "genres": "X|Y"}\n')
    cfg = generic(user_id="u", item_id="i", timestamp="t", rating="r")
    raw = load_raw(tmp_path, cfg)
    assert raw.interactions["user_id"].tolist() == ["007", "8"]
    assert raw.interactions["item_id"].tolist() == ["1", "2"]
    assert raw.interactions["timestamp"].tolist() == [1614830767, 1600000000]
    assert raw.interactions["rating"].tolist()[0] == 3.0
    assert raw.items["title"].tolist() == ["Café", "B"]
    assert raw.items["genres"].tolist() == ["", "X|Y"]


def test_generic_invalid_json_line_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "interactions.jsonl", '{"user_id": "1", "item_id": "2", "timestamp": 1}\n{oops\n')
    write(tmp_path / "items.jsonl", '{"item_id": "2", "title": "B"}\n')
    with pytest.raises(DataError) as exc:
        load_raw(tmp_path, IngestConfig())
    assert exc.value.rule == "valid_json" and "line 2" in str(exc.value)


# --------------------------------------------------------------------------- detection


def test_auto_detection(ml100k: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert detect_format(ml100k, IngestConfig()) == "movielens-100k"
    latest = tmp_path_factory.mktemp("latest")
    write(latest / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,964982703\n")
    write(latest / "movies.csv", "movieId,title,genres\n1,A,B\n")
    write(latest / "tags.csv", "userId,movieId,tag,timestamp\n")  # companions of the format are fine
    assert detect_format(latest, IngestConfig()) == "movielens-latest"
    # An explicit format is taken as said.
    assert detect_format(latest, IngestConfig(format="generic")) == "generic"


def test_unknown_layout_lists_files_and_expectations(tmp_path: Path) -> None:
    write(tmp_path / "clicks.txt", "a b c\n")
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,964982703\n")
    with pytest.raises(DataError) as exc:
        load_raw(tmp_path, IngestConfig())
    msg = str(exc.value)
    assert exc.value.rule == "known_layout" and exc.value.file == str(tmp_path)
    assert "clicks.txt" in msg and "ratings.csv" in msg
    assert "u.data + u.item" in msg and "ratings.csv + movies.csv" in msg and "generic" in msg
    assert "missing: ['movies.csv']" in msg


def test_missing_raw_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        detect_format(tmp_path / "nope", IngestConfig())
    assert exc.value.rule == "raw_dir_exists"
