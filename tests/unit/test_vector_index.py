"""The vector-index contract (clipdex.search.base.VectorIndex), held by every backend.

One suite, run against exact search (ExactIndex) and faiss IVF (IvfIndex) on a
few thousand clustered unit vectors generated here. Exact search must equal
numpy brute force; IVF must find nearly the same rows (recall@10) with exact
scores. Both keep the same order (score descending, row ascending), respect
``allowed`` (returning ``k`` rows whenever ``k`` allowed rows are held), forget
removed rows, find added ones, and survive a save/load round-trip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clipdex.search import ann
from clipdex.search.ann import IvfIndex, IvfParams
from clipdex.search.base import Hits, VectorIndex, VectorIndexUnusable
from clipdex.search.exact import ExactIndex

DIM = 48
ROWS = 3_000
CLUSTERS = 40
PARAMS = IvfParams(nlist=16, nprobe=4, nprobe_text=8, pool=60, train_per_list=64)
BACKENDS = ["exact", "ivf"]


@dataclass
class Collection:
    """Vectors by row (as the vector file holds them), growing as rows are added."""

    vectors: np.ndarray
    cluster: np.ndarray  # the cluster of each generated row

    def reader(self, rows: np.ndarray) -> np.ndarray:
        return self.vectors[rows]

    def put(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        end = int(rows.max()) + 1
        if end > len(self.vectors):
            grown = np.zeros((end, DIM), np.float32)
            grown[:len(self.vectors)] = self.vectors
            self.vectors = grown
        self.vectors[rows] = vectors


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(rows: int, seed: int = 0) -> Collection:
    """Unit vectors around CLUSTERS centres in a shared cone (CLIP-like: neighbours close, all alike)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=DIM)
    centres = _unit(mean + 0.9 * rng.normal(size=(CLUSTERS, DIM)) * np.linalg.norm(mean) / np.sqrt(DIM))
    cluster = rng.integers(0, CLUSTERS, size=rows)
    vectors = _unit(centres[cluster] + 0.35 * rng.normal(size=(rows, DIM)) / np.sqrt(DIM))
    return Collection(vectors, cluster)


@pytest.fixture()
def data() -> Collection:
    return _clustered(ROWS)


Make = Callable[[Collection], VectorIndex]


def _make(kind: str) -> Make:
    def make(collection: Collection) -> VectorIndex:
        if kind == "exact":
            return ExactIndex(collection.vectors.copy(), DIM)
        return IvfIndex.build(collection.reader, len(collection.vectors), DIM, params=PARAMS)
    return make


def _load(kind: str, path: Path, collection: Collection) -> VectorIndex:
    if kind == "exact":
        return ExactIndex.load(path, collection.vectors[:ROWS].copy(), DIM)
    return IvfIndex.load(path, collection.reader)


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def index(kind: str, data: Collection) -> VectorIndex:
    return _make(kind)(data)


def _queries(data: Collection, m: int = 20, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = data.vectors[rng.integers(0, len(data.vectors), size=m)]
    return _unit(picked + 0.3 * rng.normal(size=picked.shape) / np.sqrt(DIM))


def _brute(data: Collection, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> list[int]:
    rows = np.arange(len(data.vectors)) if rows is None else rows
    scores = data.vectors[rows] @ q
    return sorted(rows.tolist(), key=lambda r: (-scores[np.searchsorted(rows, r)], r))[:k]


def _check_order_and_scores(hits: Hits, data: Collection, q: np.ndarray) -> None:
    assert hits.rows.dtype == np.int64 and hits.scores.dtype == np.float32
    assert np.allclose(hits.scores, data.vectors[hits.rows] @ q, atol=1e-5)  # exact cosines
    keys = list(zip((-hits.scores).tolist(), hits.rows.tolist()))
    assert keys == sorted(keys)


def _recall(found: np.ndarray, expected: list[int]) -> float:
    return len(set(found.tolist()) & set(expected)) / len(expected)


def test_results_match_brute_force(kind: str, index: VectorIndex, data: Collection) -> None:
    recalls = []
    for text, q in zip([False, True] * 10, _queries(data)):
        hits = index.search(q, 10, text=text)
        assert len(hits) == 10
        _check_order_and_scores(hits, data, q)
        expected = _brute(data, q, 10)
        if kind == "exact":
            assert hits.rows.tolist() == expected
        recalls.append(_recall(hits.rows, expected))
    assert np.mean(recalls) >= 0.95


@pytest.mark.parametrize("share", [0.3, 0.02])
def test_allowed_rows_only_and_k_of_them(index: VectorIndex, data: Collection, share: float,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ann, "EXACT_ALLOWED_ROWS", 20)  # exercise faiss's filtered search, not only exact
    rng = np.random.default_rng(5)
    allowed = np.flatnonzero(rng.random(ROWS) < share)
    for q in _queries(data, 8):
        hits = index.search(q, 10, allowed=allowed)
        assert len(hits) == 10
        assert set(hits.rows.tolist()) <= set(allowed.tolist())
        _check_order_and_scores(hits, data, q)
        assert _recall(hits.rows, _brute(data, q, 10, allowed)) >= 0.8


def test_a_tiny_allowed_set_and_one_smaller_than_k(index: VectorIndex, data: Collection) -> None:
    q = _queries(data, 1)[0]
    allowed = np.array([3, 700, 1500, 2999], dtype=np.int64)
    hits = index.search(q, 10, allowed=allowed)
    assert sorted(hits.rows.tolist()) == allowed.tolist()
    assert hits.rows.tolist() == _brute(data, q, 10, allowed)
    assert not len(index.search(q, 10, allowed=np.array([ROWS + 5], dtype=np.int64)))  # a row it never held
    assert not len(index.search(q, 10, allowed=np.zeros(0, np.int64)))


def test_allowed_rows_far_from_the_query_still_give_k(index: VectorIndex, data: Collection,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Allowed rows all in a cluster the probed lists miss: the search falls back to scoring them."""
    monkeypatch.setattr(ann, "EXACT_ALLOWED_ROWS", 5)
    monkeypatch.setattr(ann, "FILTER_NPROBE_BOOST", 1.0)  # probe 4 of the 16 lists: the far ones are missed
    fell_back: list[int] = []
    if isinstance(index, IvfIndex):
        exact = index._search_exact
        monkeypatch.setattr(index, "_search_exact", lambda q, k, rows: fell_back.append(len(rows)) or exact(q, k, rows))
    q = data.vectors[np.flatnonzero(data.cluster == 0)[0]]
    centre_scores = [float(np.mean(data.vectors[data.cluster == c] @ q)) for c in range(CLUSTERS)]
    far = int(np.argmin(centre_scores))
    allowed = np.flatnonzero(data.cluster == far)
    assert len(allowed) >= 12
    hits = index.search(q, 12, allowed=allowed)
    assert hits.rows.tolist() == _brute(data, q, 12, allowed)
    assert fell_back == ([len(allowed)] if isinstance(index, IvfIndex) else [])


def test_removed_rows_never_come_back(index: VectorIndex, data: Collection) -> None:
    queries = _queries(data, 6)
    removed = np.unique(np.concatenate([index.search(q, 10).rows[:5] for q in queries]))
    index.remove(removed)
    index.remove(np.array([ROWS + 100], dtype=np.int64))  # a row it never held: ignored
    assert index.stats().rows == ROWS - len(removed)
    assert index.stats().removed == len(removed)
    for q in queries:
        hits = index.search(q, 10)
        assert len(hits) == 10 and not set(hits.rows.tolist()) & set(removed.tolist())
        hits = index.search(q, 10, allowed=removed[:3])
        assert not len(hits)
    assert index.held().tolist() == np.setdiff1d(np.arange(ROWS), removed).tolist()
    index.add(removed[:2], data.vectors[removed[:2]])  # back again
    assert index.held().tolist() == np.setdiff1d(np.arange(ROWS), removed[2:]).tolist()


def test_rows_added_after_the_build_are_found(index: VectorIndex, data: Collection) -> None:
    q = _queries(data, 1)[0]
    new_rows = np.array([ROWS, ROWS + 1, ROWS + 7], dtype=np.int64)
    new = _unit(np.stack([q, q + 0.05 * data.vectors[0], -q]))
    data.put(new_rows, new)
    index.add(new_rows, new)
    hits = index.search(q, 3)
    assert hits.rows[:2].tolist() == [ROWS, ROWS + 1]
    assert np.isclose(hits.scores[0], 1.0, atol=1e-5)
    assert index.stats().covered == ROWS + 8
    assert index.stats().rows == ROWS + 3
    assert index.search(q, 2, allowed=np.array([5, ROWS + 1], dtype=np.int64)).rows.tolist() == [ROWS + 1, 5]


def test_adding_a_row_again_replaces_its_vector(index: VectorIndex, data: Collection) -> None:
    q = _queries(data, 1)[0]
    row = np.array([1234], dtype=np.int64)
    data.put(row, q[None, :])
    index.add(row, q[None, :])
    assert index.search(q, 1).rows.tolist() == [1234]
    data.put(row, -q[None, :])
    index.add(row, -q[None, :])
    assert 1234 not in index.search(q, 50).rows.tolist()
    assert index.stats().rows == ROWS
    index.remove(row)
    index.add(row, q[None, :])  # a removed row added again is back
    data.put(row, q[None, :])
    assert index.search(q, 1).rows.tolist() == [1234]


def test_save_and_load_give_the_same_results_and_meta(kind: str, index: VectorIndex, data: Collection,
                                                       tmp_path: Path) -> None:
    index.remove(np.array([1, 2, 3], dtype=np.int64))
    extra = _unit(np.random.default_rng(9).normal(size=(2, DIM)))
    data.put(np.array([ROWS, ROWS + 1]), extra)
    index.add(np.array([ROWS, ROWS + 1], dtype=np.int64), extra)
    index.meta = {"generation": 3, "model": "ViT-B-32/openai", "fingerprint": [ROWS, 12345]}
    path = tmp_path / "sub" / f"{kind}.index"
    index.save(path)
    loaded = _load(kind, path, data)
    assert loaded.meta == index.meta
    assert loaded.stats().rows == index.stats().rows and loaded.stats().covered == index.stats().covered
    queries = np.concatenate([_queries(data, 5), extra])
    for q in queries:
        for text in (False, True):
            a, b = index.search(q, 10, text=text), loaded.search(q, 10, text=text)
            assert a.rows.tolist() == b.rows.tolist() and np.allclose(a.scores, b.scores)
    loaded.add(np.array([ROWS + 2], dtype=np.int64), queries[:1])  # a loaded index can still change
    data.put(np.array([ROWS + 2]), queries[:1])
    loaded.remove(np.array([ROWS], dtype=np.int64))
    assert loaded.search(queries[0], 1).rows.tolist() == [ROWS + 2]
    assert ROWS not in loaded.search(extra[0], 5).rows.tolist()
    loaded.save(path)  # saving over the file it was loaded from
    assert _load(kind, path, data).search(queries[0], 1).rows.tolist() == [ROWS + 2]


def test_a_truncated_garbage_or_missing_file_is_unusable(kind: str, index: VectorIndex, data: Collection,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "good.index"
    index.save(path)
    whole = path.read_bytes()
    for name, content in [("truncated", whole[:len(whole) // 2]), ("garbage", b"\x00junk" * 999),
                          ("empty", b""), ("cut-tail", whole[:-3])]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(VectorIndexUnusable) as caught:
            _load(kind, bad, data)
        assert str(bad) in str(caught.value)
    with pytest.raises(VectorIndexUnusable, match="missing"):
        _load(kind, tmp_path / "nothing-here", data)
    other = ExactIndex(None, DIM) if kind == "ivf" else None
    if other is not None:  # an exact index's file is not an IVF one
        other.save(tmp_path / "exact.index")
        with pytest.raises(VectorIndexUnusable):
            _load(kind, tmp_path / "exact.index", data)


def test_equal_scores_come_in_row_order(kind: str) -> None:
    collection = _clustered(ROWS, seed=4)
    copies = np.array([2500, 17, 900, 1800], dtype=np.int64)
    collection.vectors[copies] = collection.vectors[copies[0]]
    index = _make(kind)(collection)
    hits = index.search(collection.vectors[copies[0]], 4)
    assert hits.rows.tolist() == sorted(copies.tolist())
    assert index.search(collection.vectors[copies[0]], 2).rows.tolist() == [17, 900]
    allowed = np.sort(copies[1:])
    assert index.search(collection.vectors[copies[0]], 1, allowed=allowed).rows.tolist() == [17]


def test_k_larger_than_the_rows(kind: str) -> None:
    collection = _clustered(ROWS, seed=2)
    index = _make(kind)(collection)
    q = collection.vectors[0]
    hits = index.search(q, ROWS + 50)
    assert len(hits) == ROWS
    assert hits.rows.tolist() == _brute(collection, q, ROWS)


def test_an_empty_index_finds_nothing(index: VectorIndex, data: Collection) -> None:
    index.remove(np.arange(ROWS))
    q = _queries(data, 1)[0]
    assert not len(index.search(q, 10))
    assert not len(index.search(q, 10, allowed=np.arange(10)))
    assert index.stats().rows == 0 and len(index) == 0
    assert not len(ExactIndex(None, DIM).search(q, 10))


def test_wrong_query_shape_or_k(index: VectorIndex) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones(DIM + 1, np.float32), 10)
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.ones(DIM, np.float32) / np.sqrt(DIM), 0)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([1, 2]), np.ones((2, DIM + 1), np.float32))


def test_stats_say_what_it_holds(kind: str, index: VectorIndex) -> None:
    stats = index.stats()
    assert (stats.kind, stats.rows, stats.removed, stats.covered) == (kind, ROWS, 0, ROWS)
    if kind == "ivf":
        assert stats.params["nlist"] == 16 and stats.params["codes"] == "SQ8"
        assert stats.built_at is not None


# -- backend-specific ----------------------------------------------------------


def test_exact_float16_matrix_and_damaged_rows_rank_last() -> None:
    collection = _clustered(ROWS, seed=6)
    matrix = collection.vectors.astype(np.float16)
    matrix[10] = np.nan  # a damaged vector
    index = ExactIndex(matrix, DIM)
    q = collection.vectors[0]
    hits = index.search(q, ROWS)
    assert hits.rows[-1] == 10 and hits.scores[-1] == -np.inf
    assert hits.rows[0] == 0 and np.isclose(hits.scores[0], 1.0, atol=2e-3)
    half = np.arange(0, ROWS, 2)
    assert set(index.search(q, 20, allowed=half).rows.tolist()) <= set(half.tolist())


def test_ivf_build_refuses_too_few_rows_and_reports_progress() -> None:
    collection = _clustered(500)
    with pytest.raises(ValueError, match="too few"):
        IvfIndex.build(collection.reader, 500, DIM, params=PARAMS)
    with pytest.raises(ValueError, match="search exactly"):
        IvfIndex.build(collection.reader, 500, DIM)  # automatic parameters: below MIN_ROWS
    seen: list[tuple[int, int]] = []
    big = _clustered(ROWS)
    index = IvfIndex.build(big.reader, ROWS, DIM, params=PARAMS, progress=lambda d, t: seen.append((d, t)),
                           exclude=np.array([0, 5, 99999]))
    assert seen[0] == (0, ROWS) and seen[-1] == (ROWS, ROWS)
    assert index.stats().rows == ROWS - 2
    assert 0 not in index.search(big.vectors[0], 5).rows.tolist()


def test_ivf_automatic_parameters() -> None:
    assert ann.auto_nlist(200_000) == 2048
    assert ann.auto_nlist(1_000_000) == 4096
    p = IvfParams().resolved(1_000_000)
    assert p.nlist == 4096 and p.nprobe is not None and p.nprobe_text is not None
    assert p.nprobe_text >= p.nprobe


def test_top_hits_on_many_rows_keeps_the_total_order() -> None:
    """Above PREFILTER_ROWS, top_hits narrows to rows above a sampled threshold: ties, masks and NaN still hold."""
    from clipdex.search.base import PREFILTER_ROWS, top_hits

    rng = np.random.default_rng(11)
    n = PREFILTER_ROWS * 2
    for decimals, k in [(2, 10), (3, 500), (5, 1), (1, 50)]:
        scores = np.round(rng.random(n), decimals).astype(np.float32)
        scores[rng.random(n) < 0.3] = -np.inf  # masked rows
        scores[rng.integers(0, n, 4)] = np.nan  # damaged rows
        clean = np.where(np.isnan(scores), -np.inf, scores)
        expected = np.lexsort((np.arange(n), -clean))[:k]
        hits = top_hits(scores, k)
        assert hits.rows.tolist() == expected.tolist()
        rows = np.arange(n, dtype=np.int64)[::-1].copy()  # rows given: ties go to the lowest row
        hits = top_hits(scores, k, rows)
        assert hits.rows.tolist() == rows[np.lexsort((rows, -clean))[:k]].tolist()
