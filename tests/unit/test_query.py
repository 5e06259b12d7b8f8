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
    ("-people beach", [QueryTerm("text", "people", -1.0), QueryTerm("text", "beach")]),
    ("-people + beach", [QueryTerm("text", "people", -1.0), QueryTerm("text", "beach")]),
    ("beach -people walking", [QueryTerm("text", "beach"), QueryTerm("text", "people", -1.0),
                               QueryTerm("text", "walking")]),
    ("beach - people walking", [QueryTerm("text", "beach"), QueryTerm("text", "people walking", -1.0)]),
    ("-2*snow dog", [QueryTerm("text", "snow", -2.0), QueryTerm("text", "dog")]),
    # A backslash is kept as typed: the display form of a name that is not UTF-8, a Windows path.
    (r"@caf\xe9.jpg", [QueryTerm("image", r"caf\xe9.jpg")]),
    (r"@trip/caf\xe9 + snow", [QueryTerm("image", r"trip/caf\xe9"), QueryTerm("text", "snow")]),
    (r'"@Vacances \xe0 Nice/plage.jpg" - sea', [QueryTerm("image", r"Vacances \xe0 Nice/plage.jpg"),
                                               QueryTerm("text", "sea", -1.0)]),
    (r"@C:\photos\dog.jpg", [QueryTerm("image", r"C:\photos\dog.jpg")]),
    ("#1 dog", [QueryTerm("text", "#1 dog")]),  # "#" is not a comment
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


@pytest.mark.parametrize("query, weight", [("1e2*snow", 100.0), ("2.*snow", 2.0), ("2.5e-1*snow", 0.25)])
def test_weights_in_exponent_form(query: str, weight: float) -> None:
    assert parse_query(query) == [QueryTerm("text", "snow", weight)]


@pytest.mark.parametrize("query", ["1e20*dog", "100000000000000000000*dog", "dog - 101*cat",
                                   "1e400*dog", "dog + 1e39*@a.jpg"])
def test_huge_weights_are_refused_with_the_limit(query: str) -> None:
    with pytest.raises(QueryError, match="weights go up to 100"):
        parse_query(query)


@pytest.mark.parametrize("weights", [[1.0, 1e20], [1.0, float("nan")], [float("inf"), 1.0], [1.0, -101.0]])
def test_combine_refuses_weights_out_of_range(weights: list[float]) -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    with pytest.raises(QueryError, match="weights go up to 100"):
        combine([a, b], weights)


def test_combine_refuses_a_vector_that_is_not_finite() -> None:
    with pytest.raises(QueryError, match="not finite"):
        combine([np.array([1.0, 0.0]), np.array([np.nan, 0.0])], [1.0, 1.0])
    with pytest.raises(QueryError, match="not finite"):
        combine([np.array([3e38, 3e38])], [100.0])  # overflows float32


def test_combine_result_is_a_finite_unit_vector_at_the_limits() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.6, 0.8])
    v = combine([a, b], [100.0, -100.0])
    assert np.isfinite(v).all() and np.isclose(np.linalg.norm(v), 1.0)
    with pytest.raises(QueryError, match="cancel"):
        combine([a, a], [2.0, -2.0])


@pytest.mark.parametrize("word", ["it's", "a b", r"caf\xe9", '"q"', "-x", "#tag", r"back\ slash"])
def test_a_quoted_word_splits_back_to_itself(word: str) -> None:
    import shlex

    from clipdex.search import split_query

    assert split_query(shlex.quote(word)) == [word]
