"""The batch k-nearest-neighbours method of the vector-index contract (``VectorIndex.neighbours``),
held by both backends on the contract suite's clustered vectors: the same rows and order as one
``search`` per query (exact: identical; IVF: nearly), exact scores, padding, ``allowed``, removed
and added rows, and the default per-query implementation agreeing with the fast ones."""

from __future__ import annotations

import numpy as np
import pytest

from clipdex.search import ann
from clipdex.search.base import VectorIndex, best_per_query
from clipdex.search.exact import ExactIndex
from tests.unit.test_vector_index import BACKENDS, DIM, ROWS, Collection, _brute, _clustered, _make, _queries, _recall


@pytest.fixture()
def data() -> Collection:
    return _clustered(ROWS)


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def index(kind: str, data: Collection) -> VectorIndex:
    return _make(kind)(data)


def _check(rows: np.ndarray, scores: np.ndarray, data: Collection, queries: np.ndarray) -> None:
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    for i, q in enumerate(queries):
        real = rows[i] >= 0
        assert np.allclose(scores[i][real], data.vectors[rows[i][real]] @ q, atol=1e-5)
        keys = list(zip((-scores[i][real]).tolist(), rows[i][real].tolist()))
        assert keys == sorted(keys)


def test_neighbours_match_search(kind: str, index: VectorIndex, data: Collection) -> None:
    queries = data.vectors[:200]
    rows, scores = index.neighbours(queries, 8)
    assert rows.shape == scores.shape == (200, 8)
    _check(rows, scores, data, queries)
    recalls = []
    for i, q in enumerate(queries):
        expected = _brute(data, q, 8)
        if kind == "exact":
            assert rows[i].tolist() == expected
        recalls.append(_recall(rows[i], expected))
    assert np.mean(recalls) >= 0.95
    assert (rows[:, 0] == np.arange(200)).mean() >= 0.98  # a row's own vector comes first


def test_neighbours_pad_when_fewer_rows_are_allowed(index: VectorIndex, data: Collection) -> None:
    allowed = np.array([3, 700, 1500], dtype=np.int64)
    queries = _queries(data, 5)
    rows, scores = index.neighbours(queries, 6, allowed)
    _check(rows, scores, data, queries)
    assert (rows[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    for i, q in enumerate(queries):
        assert rows[i, :3].tolist() == _brute(data, q, 3, allowed)


@pytest.mark.parametrize("share", [0.3, 0.02])
def test_neighbours_keep_to_allowed_rows(index: VectorIndex, data: Collection, share: float,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ann, "EXACT_ALLOWED_ROWS", 20)  # faiss's bitmap, not only exact scoring
    rng = np.random.default_rng(5)
    allowed = np.flatnonzero(rng.random(ROWS) < share)
    queries = _queries(data, 30)
    rows, scores = index.neighbours(queries, 10, allowed)
    _check(rows, scores, data, queries)
    assert set(rows.ravel().tolist()) <= set(allowed.tolist())
    assert np.mean([_recall(rows[i], _brute(data, q, 10, allowed)) for i, q in enumerate(queries)]) >= 0.8


def test_neighbours_forget_removed_and_find_added_rows(index: VectorIndex, data: Collection) -> None:
    removed = np.arange(0, 50, dtype=np.int64)
    index.remove(removed)
    new_rows = np.array([ROWS, ROWS + 3], dtype=np.int64)
    new = data.vectors[[60, 61]].copy()
    data.put(new_rows, new)
    index.add(new_rows, new)
    rows, _ = index.neighbours(data.vectors[:100], 5)
    assert not set(rows.ravel().tolist()) & set(removed.tolist())
    assert ROWS in rows[60].tolist() and ROWS + 3 in rows[61].tolist()


def test_the_default_implementation_agrees(data: Collection) -> None:
    exact = ExactIndex(data.vectors.copy(), DIM)
    queries = _queries(data, 25)
    fast = exact.neighbours(queries, 7)
    slow = VectorIndex.neighbours(exact, queries, 7)  # one search() per query
    assert np.array_equal(fast[0], slow[0]) and np.allclose(fast[1], slow[1])


def test_bad_queries_are_refused(index: VectorIndex) -> None:
    with pytest.raises(ValueError, match="shape"):
        index.neighbours(np.zeros(DIM, np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        index.neighbours(np.zeros((2, DIM), np.float32), 0)


def test_best_per_query_orders_ties_by_row_and_nan_last() -> None:
    rows = np.array([[5, 2, 9, -1, 4]], dtype=np.int64)
    scores = np.array([[0.5, 0.5, np.nan, 0.9, 0.1]], dtype=np.float32)
    best_rows, best_scores = best_per_query(rows, scores, 6)
    assert best_rows.tolist() == [[2, 5, 4, 9, -1, -1]]
    assert best_scores[0, :3].tolist() == pytest.approx([0.5, 0.5, 0.1])
    assert np.isneginf(best_scores[0, 3:]).all()


def test_batches_and_searches_share_the_faiss_index_safely(data: Collection) -> None:
    """faiss keeps its parallel mode on the index: neighbours batches (mode 0) and searches running in
    other threads at once give the answers they give alone, and leave the index in PARALLEL_MODE."""
    import threading

    index = _make("ivf")(data)
    assert isinstance(index, ann.IvfIndex)
    queries = data.vectors[:ann.NEIGHBOUR_QUERIES * 2]
    alone_rows, _ = index.neighbours(queries, 5)
    alone_hits = [index.search(q, 5).rows.tolist() for q in data.vectors[:20]]
    failures: list[str] = []

    def batch() -> None:
        for _ in range(3):
            rows, _ = index.neighbours(queries, 5)
            if not np.array_equal(rows, alone_rows):
                failures.append("neighbours")

    def search() -> None:
        for _ in range(3):
            if [index.search(q, 5).rows.tolist() for q in data.vectors[:20]] != alone_hits:
                failures.append("search")

    threads = [threading.Thread(target=f) for f in (batch, batch, search, search)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures and not any(t.is_alive() for t in threads)
    assert index._ivf.parallel_mode == ann.PARALLEL_MODE
