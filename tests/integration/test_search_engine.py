"""Search through the engine: rows -> photos, filters, and an approximate index that is never stale.

The index here is filled through the store with clustered vectors (no model: queries are
``@photo`` terms, which search by a photo's stored vector), so a few thousand photos cost
a second and the approximate index is really built, updated, invalidated and rebuilt.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clipdex import Index
from clipdex.errors import FilterError, LabelSetError
from clipdex.models.registry import ModelSpec
from clipdex.search import engine
from clipdex.search.ann import IvfParams
from clipdex.search.filters import SearchFilter
from clipdex.store import NewFile, Store

DIM = 32
ROOT = "/photos"


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(4, n // 50), DIM))
    v = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fill(idx: Path, vectors: np.ndarray, start: int = 0) -> None:
    """Photos photo-<i>.jpg in /photos/a (even i) and /photos/b (odd i), taken on day i % 28 + 1."""
    store = Store.open(idx, create=True)
    try:
        store.add_root(ROOT, kind="import")
        model = store.get_model("synthetic") or store.add_model(
            "synthetic", "synthetic", ModelSpec(name="synthetic", arch="synthetic").to_json(), DIM, 100.0, "fp32")
        ids = range(start, start + len(vectors))
        files = [NewFile(path=f"{ROOT}/{'ab'[i % 2]}/photo-{i:05d}.jpg", size=1, mtime_ns=1, content_hash=f"h{i}",
                         taken_at=f"2021-02-{i % 28 + 1:02d}T12:00:00", taken_source="import") for i in ids]
        store.commit_batch(model, vectors, [f"h{i}" for i in ids], files)
    finally:
        store.close()


def brute_force(vectors: np.ndarray, i: int, k: int, keep: np.ndarray | None = None) -> list[str]:
    scores = vectors @ vectors[i]
    rows = np.arange(len(vectors)) if keep is None else np.flatnonzero(keep)
    order = rows[np.lexsort((rows, -scores[rows]))][:k]
    return [f"{ROOT}/{'ab'[r % 2]}/photo-{r:05d}.jpg" for r in order]


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, np.ndarray]:
    vectors = clustered(400)
    fill(tmp_path / "idx", vectors)
    return tmp_path / "idx", vectors


def test_exact_search_equals_brute_force(small: tuple[Path, np.ndarray]) -> None:
    idx, vectors = small
    with Index.open(idx) as index:
        hits = index.search("@photo-00007", k=10)
        assert [h.path for h in hits] == brute_force(vectors, 7, 10)
        page2 = index.search("@photo-00007", k=10, offset=10)
        assert [h.path for h in page2] == brute_force(vectors, 7, 20)[10:]
        assert index.search_backend().kind == "exact"


def test_filters_by_folder_date_and_both(small: tuple[Path, np.ndarray]) -> None:
    idx, vectors = small
    n = len(vectors)
    day = np.arange(n) % 28 + 1
    with Index.open(idx) as index:
        only_b = index.search("@photo-00007", k=10, filters=SearchFilter.make(folders=[f"{ROOT}/b"]))
        assert [h.path for h in only_b] == brute_force(vectors, 7, 10, np.arange(n) % 2 == 1)
        early = index.search("@photo-00007", k=10, filters=SearchFilter.make(after="2021-02-03",
                                                                              before="2021-02-10"))
        assert [h.path for h in early] == brute_force(vectors, 7, 10, (day >= 3) & (day < 10))
        both = SearchFilter.make(folders=[f"{ROOT}/a"], before="2021-02-05")
        hits = index.search("@photo-00007", k=50, filters=both)
        assert [h.path for h in hits] == brute_force(vectors, 7, 50, (np.arange(n) % 2 == 0) & (day < 5))
        similar = index.similar(hits[0].file_id, k=5, filters=both)[1]
        assert all("/a/" in h.path for h in similar)


def test_a_filter_that_matches_nothing_is_empty_and_a_wrong_one_is_an_error(
        small: tuple[Path, np.ndarray]) -> None:
    idx, _ = small
    with Index.open(idx) as index:
        assert index.search("@photo-00007", filters=SearchFilter.make(after="2030")) == []
        with pytest.raises(FilterError, match="not a folder of this index"):
            index.search("@photo-00007", filters=SearchFilter.make(folders=["/elsewhere"]))
        with pytest.raises(LabelSetError, match="has not been run"):
            index.search("@photo-00007", label=("taken_time", "night"))
    with pytest.raises(FilterError, match="not a date"):
        SearchFilter.make(after="yesterday")
    with pytest.raises(FilterError, match="no date is in that period"):
        SearchFilter.make(after="2021-06", before="2021-06")


def test_deleted_photos_are_never_returned(small: tuple[Path, np.ndarray]) -> None:
    idx, vectors = small
    nearest = brute_force(vectors, 7, 30)
    store = Store.open(idx)
    store.remove_files(nearest[1:20])  # the photo itself stays, its 19 nearest go
    store.close()
    with Index.open(idx) as index:
        hits = index.search("@photo-00007", k=10)
    assert [h.path for h in hits] == [nearest[0], *nearest[20:29]]


@pytest.fixture()
def large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray]:
    """3,000 photos with an approximate index (the threshold lowered to 2,000 rows)."""
    monkeypatch.setattr(engine, "ANN_MIN_ROWS", 2000)
    monkeypatch.setattr(engine, "ANN_PARAMS", IvfParams(nlist=16, nprobe=6, nprobe_text=8))
    vectors = clustered(3000)
    fill(tmp_path / "idx", vectors)
    with Index.open(tmp_path / "idx") as index:
        (report,) = index.refresh_search()
        assert report.action == "built"
    return tmp_path / "idx", vectors


def recall(found: list[str], truth: list[str]) -> float:
    return len(set(found) & set(truth)) / len(truth)


def test_an_approximate_index_is_built_used_and_close_to_exact(large: tuple[Path, np.ndarray]) -> None:
    idx, vectors = large
    assert engine.ann_path(Store.open(idx), Store.open(idx).models()[0]).is_file()
    with Index.open(idx) as index:
        backend = index.search_backend()
        assert backend.kind == "ann" and "up to date" in backend.note
        status = index.status()
        assert "approximate" in status.models[0].search and not status.problems
        found = [recall([h.path for h in index.search(f"@photo-{i:05d}", k=10)], brute_force(vectors, i, 10))
                 for i in range(0, 3000, 150)]
        assert np.mean(found) >= 0.9
        exact = index.search("@photo-00042", k=10, exact=True)
        assert [h.path for h in exact] == brute_force(vectors, 42, 10)


def test_rows_committed_after_the_index_are_searched_beside_it(large: tuple[Path, np.ndarray]) -> None:
    idx, vectors = large
    extra = clustered(50, seed=9)
    fill(idx, extra, start=3000)
    everything = np.concatenate([vectors, extra])
    with Index.open(idx) as index:
        backend = index.search_backend()
        assert backend.kind == "ann" and "50 newest photos" in backend.note
        hits = index.search("@photo-03010", k=5)
        assert hits[0].path.endswith("photo-03010.jpg")
        assert recall([h.path for h in hits], brute_force(everything, 3010, 5)) >= 0.8
        (report,) = index.refresh_search()
        assert report.action == "updated" and report.rows == 3050
        assert "up to date" in index.search_backend().note


def test_a_stale_or_damaged_index_means_exact_search_then_a_rebuild(large: tuple[Path, np.ndarray]) -> None:
    idx, vectors = large
    conn = sqlite3.connect(idx / "catalog.sqlite", isolation_level=None)
    conn.execute("UPDATE models SET generation = generation + 1")  # as compaction does
    conn.close()
    with Index.open(idx) as index:
        backend = index.search_backend()
        assert backend.kind == "exact" and backend.stale and "compacted" in backend.note
        assert [h.path for h in index.search("@photo-00042", k=10)] == brute_force(vectors, 42, 10)
        assert any("up to date" in p and "clipdex compact" in p for p in index.status().problems)
        (report,) = index.refresh_search()
        assert report.action == "built"
        assert index.search_backend().kind == "ann"
    path = idx / "vectors" / "model-1.f32.ivf"
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with Index.open(idx) as index:
        backend = index.search_backend()
        assert backend.kind == "exact" and backend.stale
        assert [h.path for h in index.search("@photo-00042", k=10)] == brute_force(vectors, 42, 10)
        assert index.refresh_search()[0].action == "built"


def test_an_approximate_filtered_search_still_returns_k(large: tuple[Path, np.ndarray]) -> None:
    idx, vectors = large
    n = len(vectors)
    day = np.arange(n) % 28 + 1
    with Index.open(idx) as index:
        rare = SearchFilter.make(after="2021-02-28")  # 1 photo in 28, spread over every list
        hits = index.search("@photo-00007", k=40, filters=rare)
        assert len(hits) == 40
        assert recall([h.path for h in hits], brute_force(vectors, 7, 40, day >= 28)) >= 0.9
        in_a = index.search("@photo-00007", k=25, filters=SearchFilter.make(folders=[f"{ROOT}/a"]))
        assert len(in_a) == 25 and all("/a/" in h.path for h in in_a)


def test_below_the_threshold_the_approximate_index_goes(large: tuple[Path, np.ndarray],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    idx, _ = large
    monkeypatch.setattr(engine, "ANN_MIN_ROWS", 10_000)
    with Index.open(idx) as index:
        assert index.refresh_search()[0].action == "removed"
        assert index.search_backend().kind == "exact"


def test_an_open_index_searches_right_after_another_process_compacts(large: tuple[Path, np.ndarray]) -> None:
    from clipdex.store.compact import compact

    idx, vectors = large
    with Index.open(idx) as index:
        assert index.search_backend().kind == "ann"
        gone = [f"{ROOT}/a/photo-{i:05d}.jpg" for i in range(0, 3000, 4)]  # half the photos in a/
        other = Store.open(idx)  # "another process"
        try:
            other.remove_files(gone)
            report = compact(other)
            assert report is not None
        finally:
            other.close()
        keep = np.arange(len(vectors)) % 4 != 0
        hits = index.search("@photo-00007", k=10, exact=True)
        assert [h.path for h in hits] == brute_force(vectors, 7, 10, keep)
        backend = index.search_backend()
        assert backend.kind == "exact" and backend.stale  # its approximate index went with the old file
        assert index.refresh_search()[0].action == "built"
        hits = index.search("@photo-00007", k=10)
        assert recall([h.path for h in hits], brute_force(vectors, 7, 10, keep)) >= 0.8


def test_an_update_removes_deleted_photos_and_takes_back_returning_ones(large: tuple[Path, np.ndarray]) -> None:
    idx, vectors = large
    nearest = brute_force(vectors, 7, 20)
    store = Store.open(idx)
    try:
        store.remove_files(nearest[1:11])
    finally:
        store.close()
    with Index.open(idx) as index:
        (report,) = index.refresh_search()
        assert report.action == "updated" and "10 removed" in report.why
        assert [h.path for h in index.search("@photo-00007", k=10, exact=True)] == [nearest[0], *nearest[11:20]]
    store = Store.open(idx)  # the photos come back unchanged: their vectors are reused by hash
    try:
        back = [int(p[-9:-4]) for p in nearest[1:11]]
        store.commit_batch(store.models()[0], np.zeros((0, DIM), np.float32), [],
                           [NewFile(path=nearest[1 + i], size=1, mtime_ns=1, content_hash=f"h{r}")
                            for i, r in enumerate(back)])
    finally:
        store.close()
    with Index.open(idx) as index:
        (report,) = index.refresh_search()
        assert report.action == "updated" and "10 rows added" in report.why
        assert "up to date" in index.search_backend().note
        assert recall([h.path for h in index.search("@photo-00007", k=10)], nearest[:10]) >= 0.9


def test_compaction_rebuilds_the_approximate_index_on_its_trained_lists(
        large: tuple[Path, np.ndarray]) -> None:
    idx, vectors = large
    store = Store.open(idx)
    try:
        store.remove_files([f"{ROOT}/a/photo-{i:05d}.jpg" for i in range(0, 3000, 4)])
    finally:
        store.close()
    with Index.open(idx) as index:
        index.compact()
        backend = index.search_backend()
        assert backend.kind == "ann" and "up to date" in backend.note
        assert backend.stats is not None and backend.stats.rows == 2250
        keep = np.arange(len(vectors)) % 4 != 0
        assert recall([h.path for h in index.search("@photo-00007", k=10)], brute_force(vectors, 7, 10, keep)) >= 0.8
    assert sorted(p.name for p in (idx / "vectors").iterdir()) == ["model-1.g1.f32", "model-1.g1.f32.ivf"]


def test_approximate_pages_never_repeat_or_skip_a_photo(large: tuple[Path, np.ndarray]) -> None:
    idx, _ = large
    with Index.open(idx) as index:
        for filters in (None, SearchFilter.make(folders=[f"{ROOT}/a"])):
            whole = [h.path for h in index.search("@photo-00007", k=700, filters=filters)]
            pages = [h.path for offset in range(0, 700, 50)
                     for h in index.search("@photo-00007", k=50, offset=offset, filters=filters)]
            assert pages == whole and len(set(whole)) == len(whole) == 700
            ranks = [h.rank for h in index.search("@photo-00007", k=50, offset=600, filters=filters)]
            assert ranks == list(range(601, 651))


def test_an_index_damaged_inside_means_exact_search_and_a_rebuild(large: tuple[Path, np.ndarray]) -> None:
    idx, vectors = large
    path = idx / "vectors" / "model-1.f32.ivf"
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    middle = len(data) // 3
    data[middle:middle + len(data) // 3] = rng.integers(0, 256, len(data) // 3, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with Index.open(idx) as index:
        for i in (7, 42, 1234, 2999):  # never a traceback, never a wrong answer
            hits = index.search(f"@photo-{i:05d}", k=10)
            assert len(hits) == 10 and hits[0].path.endswith(f"photo-{i:05d}.jpg")
        assert index.refresh_search()[0].action in ("built", "none")
        index.refresh_search()
        assert index.search_backend().kind == "ann"
        assert [h.path for h in index.search("@photo-00042", k=10, exact=True)] == brute_force(vectors, 42, 10)
