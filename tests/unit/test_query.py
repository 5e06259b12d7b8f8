from __future__ import annotations

import numpy as np
import pytest

from clipdex.errors import QueryError
from clipdex.search import QueryTerm, combine, parse_query, rank


@pytest.mark.parametrize("query, terms", [
    ("dog in the snow", [QueryTerm("text", "dog in the snow", 1.0)]),
    ("beach -people", [QueryTerm("text", "beach", 1.0), QueryTerm("text", "people", -1.0)]),
    ('beach -"people walking"', [QueryTerm("text", "beach"), QueryTerm("text", "people walking", -1.0)]),
    ('"red car" + night', [QueryTerm("text", "red car"), QueryTerm("text", "night")]),
    ("2*snow + dog", [QueryTerm("text", "snow", 2.0), QueryTerm("text", "dog")]),
    ("@a/dog.jpg - 0.5*grass", [QueryTerm("image", "a/dog.jpg"), QueryTerm("text", "grass", -0.5)]),
    ("listen to music", [QueryTerm("text", "listen to music")]),
    ("black-and-white portrait", [QueryTerm("text", "black-and-white portrait")]),
])
def test_parse_query(query: str, terms: list[QueryTerm]) -> None:
    assert parse_query(query) == terms


@pytest.mark.parametrize("query, problem", [
    ("", "empty"),
    ("-people", "positive term"),
    ('"unclosed', "quote"),
    ("dog +", "not followed"),
    ("@", "image path"),
])
def test_bad_queries_say_what_is_wrong(query: str, problem: str) -> None:
    with pytest.raises(QueryError, match=problem) as info:
        parse_query(query)
    assert "clipdex search --help" in str(info.value)


def test_combine_is_a_normalised_weighted_sum() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert np.allclose(combine([a, b], [1.0, 1.0]), np.array([1, 1]) / np.sqrt(2))
    assert np.allclose(combine([a, b], [1.0, -1.0]), np.array([1, -1]) / np.sqrt(2))


def test_rank_is_deterministic_with_ties_and_pages() -> None:
    vectors = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    rows, scores = rank(np.array([1.0, 0.0]), vectors, k=3)
    assert rows.tolist() == [0, 2, 3]
    assert np.allclose(scores, [1, 1, 0.6])
    rows, _ = rank(np.array([1.0, 0.0]), vectors, k=2, offset=2)
    assert rows.tolist() == [3, 1]
