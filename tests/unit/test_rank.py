"""search.rank: one total order (score descending, row ascending) on every page."""

from __future__ import annotations

import numpy as np
import pytest

from clipdex.errors import QueryError
from clipdex.search import rank


def _full_order(query: np.ndarray, vectors: np.ndarray, allowed: np.ndarray | None = None) -> list[int]:
    """The reference order: a full sort by (score desc, row asc)."""
    scores = vectors @ query.astype(np.float32)
    rows = np.flatnonzero(allowed) if allowed is not None else np.arange(len(vectors))
    return sorted(rows.tolist(), key=lambda r: (-scores[r], r))


def _paged(query: np.ndarray, vectors: np.ndarray, page: int, allowed: np.ndarray | None = None) -> list[int]:
    rows: list[int] = []
    offset = 0
    while True:
        found, _ = rank(query, vectors, k=page, offset=offset, allowed=allowed)
        if not len(found):
            return rows
        rows += found.tolist()
        offset += page


def test_identical_vectors_come_in_row_order() -> None:
    vectors = np.tile(np.array([[0.6, 0.8]], dtype=np.float32), (50_000, 1))
    rows, scores = rank(np.array([1.0, 0.0]), vectors, k=2)
    assert rows.tolist() == [0, 1]
    assert np.allclose(scores, 0.6)
    rows, _ = rank(np.array([1.0, 0.0]), vectors, k=3, offset=49_998)
    assert rows.tolist() == [49_998, 49_999]


def test_copies_paged_in_any_page_size_give_every_row_once() -> None:
    rng = np.random.default_rng(7)
    distinct = rng.normal(size=(30, 16)).astype(np.float32)
    distinct /= np.linalg.norm(distinct, axis=1, keepdims=True)
    vectors = np.concatenate([distinct] * 4)[rng.permutation(120)]  # four copies of each, shuffled
    query = rng.normal(size=16).astype(np.float32)
    query /= np.linalg.norm(query)
    expected = _full_order(query, vectors)
    for page in (1, 3, 7, 10, 119, 120, 500):
        assert _paged(query, vectors, page) == expected, f"page size {page}"


def test_random_pages_with_many_ties_and_a_mask() -> None:
    rng = np.random.default_rng(3)
    levels = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    vectors = levels[rng.integers(0, 4, size=2_000)]
    allowed = rng.random(2_000) < 0.7
    query = np.array([1.0, 0.0])
    for mask in (None, allowed):
        expected = _full_order(query, vectors, mask)
        for _ in range(50):
            offset = int(rng.integers(0, len(expected) + 5))
            k = int(rng.integers(1, 300))
            rows, scores = rank(query, vectors, k=k, offset=offset, allowed=mask)
            assert rows.tolist() == expected[offset:offset + k]
            assert np.all(np.diff(scores) <= 0)


def test_a_nan_score_ranks_last() -> None:
    vectors = np.array([[np.nan, 0.0], [0.5, 0.5], [1.0, 0.0]], dtype=np.float32)
    rows, _ = rank(np.array([1.0, 0.0]), vectors, k=3)
    assert rows.tolist() == [2, 1, 0]
    rows, _ = rank(np.array([1.0, 0.0]), vectors, k=1, offset=1)
    assert rows.tolist() == [1]


@pytest.mark.parametrize("k, offset, problem", [(0, 0, "at least 1"), (-3, 0, "at least 1"),
                                                (5, -1, "0 or more")])
def test_rank_refuses_bad_k_and_offset(k: int, offset: int, problem: str) -> None:
    vectors = np.eye(3, dtype=np.float32)
    with pytest.raises(QueryError, match=problem):
        rank(np.array([1.0, 0.0, 0.0]), vectors, k=k, offset=offset)


def test_an_empty_page_past_the_end() -> None:
    rows, scores = rank(np.array([1.0, 0.0]), np.eye(2, dtype=np.float32), k=5, offset=10)
    assert rows.tolist() == [] and scores.tolist() == []
