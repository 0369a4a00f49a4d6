"""Request validation of the served model: every bad request is an HTTP 400 with a message (unit tier)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from tether.serving_input import MAX_CANDIDATES, MAX_NEW_TOKENS, MAX_ROWS, MAX_TITLE_CHARS, parse_request

H = ["Silent Harbor Part 1", "Silent Harbor Part 2"]
C = ["Silent Harbor Part 3", "Glass River Part 1"]


def refused(model_input, params=None) -> str:
    """The message of the refusal; fails unless it is MLflow's INVALID_PARAMETER_VALUE (HTTP 400)."""
    with pytest.raises(MlflowException) as err:
        parse_request(model_input, params, 24)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert err.value.get_http_status_code() == 400
    return err.value.message


def test_a_good_request_in_every_accepted_shape() -> None:
    df = pd.DataFrame({"history": [H, np.array(H)], "candidates": [C, None]})
    req = parse_request(df, {"top_k": np.int64(1), "max_new_tokens": 0}, 24)
    assert req.histories == [H, H] and req.candidates == [C, None]
    assert (req.top_k, req.max_new_tokens) == (1, 24)
    # Records (a list of row dicts) and a dict of columns; titles are stripped; a NaN cell = no candidates.
    req = parse_request([{"history": [" A "], "candidates": ["B"]}, {"history": ["A"], "candidates": math.nan}], None, 24)
    assert req.histories == [["A"], ["A"]] and req.candidates == [["B"], None]
    assert parse_request({"history": [H]}, {"max_new_tokens": 7}, 24).max_new_tokens == 7


@pytest.mark.parametrize(
    ("model_input", "params", "words"),
    [
        (pd.DataFrame({"candidates": [C]}), None, ["'history' column", "candidates"]),
        (pd.DataFrame({"history": [None]}), None, ["row 0", "'history' is missing"]),
        (pd.DataFrame({"history": [[]]}), None, ["row 0, 'history'", "empty"]),
        (pd.DataFrame({"history": [H], "candidates": [[]]}), None, ["'candidates'", "empty", "leave 'candidates' out"]),
        (pd.DataFrame({"history": [["x" * 10_000]]}), None, ["10000 characters", f"at most {MAX_TITLE_CHARS}"]),
        (pd.DataFrame({"history": [5]}), None, ["list of titles", "int"]),
        (pd.DataFrame({"history": [[1, 2]]}), None, ["'history'[0]", "int"]),
        (pd.DataFrame({"history": ["Silent Harbor"]}), None, ["got a string"]),
        (pd.DataFrame({"history": [[math.nan]]}), None, ["NaN"]),
        (pd.DataFrame({"history": [H], "candidates": [["A", math.nan]]}), None, ["'candidates'[1]", "NaN"]),
        (pd.DataFrame({"history": [["  "]]}), None, ["empty title"]),
        (pd.DataFrame({"history": [H], "candidates": [[f"T{i}" for i in range(MAX_CANDIDATES + 1)]]}), None, [f"at most {MAX_CANDIDATES}"]),
        (pd.DataFrame({"history": [H] * (MAX_ROWS + 1)}), None, [f"at most {MAX_ROWS}"]),
        (pd.DataFrame({"history": []}), None, ["no rows"]),
        (pd.DataFrame({"history": [H], "user": ["u1"]}), None, ["unknown columns ['user']"]),
        (pd.DataFrame({"history": [H]}), {"top_k": "many"}, ["'top_k'", "integer"]),
        (pd.DataFrame({"history": [H]}), {"top_k": -1}, ["'top_k'", "outside"]),
        (pd.DataFrame({"history": [H]}), {"top_k": True}, ["'top_k'", "integer"]),
        (pd.DataFrame({"history": [H]}), {"max_new_tokens": MAX_NEW_TOKENS + 1}, ["'max_new_tokens'", "outside"]),
        (pd.DataFrame({"history": [H]}), {"temperature": 0.7}, ["unknown params ['temperature']"]),
        (42, None, ["model input"]),
    ],
)
def test_bad_requests_are_refused_with_what_to_fix(model_input, params, words: list[str]) -> None:
    message = refused(model_input, params)
    for word in words:
        assert word in message, (word, message)
