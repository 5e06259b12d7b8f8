"""`clipdex compact`: vector rows no photo uses are given back, search answers the same, and a
compaction killed at any step leaves a correct, searchable index that the next one finishes."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from clipdex import Index
from clipdex.errors import IndexDamaged, IndexStorageError
from clipdex.store import NewFile, Store
from clipdex.store import compact as compact_module
from clipdex.store.compact import compact
from tests.conftest import run_cli
from tests.images import photo

QUERIES = ("a photo", "a bright sky")


class Killed(BaseException):
    """A SIGKILL at this point: nothing after it runs, no cleanup either."""


@pytest.fixture()
def churned(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> Iterator[Path]:
    """An index of the 12 photos after 3 were deleted and 1 changed: 4 rows no photo uses."""
    idx = tmp_path / "idx"
    with Index.open(idx, create=True, **model_kwargs) as index:
        index.add(photos)
        for name in ("photo-002.jpg", "photo-003.jpg", "photo-004.jpg"):
            (photos / name).unlink()
        photo(99).save(photos / "photo-005.jpg", "JPEG", quality=90)
        report = index.add(photos)
        assert (report.removed, report.changed, report.indexed_total) == (3, 1, 9)
    yield idx


def _answers(index: Index, photos: Path) -> list[list[tuple[str, float]]]:
    """What a few searches (texts, a photo) answer: paths and scores, best first."""
    queries = [*QUERIES, f"@{photos / 'trip' / 'photo-000.jpg'}"]
    return [[(r.path, round(r.score, 5)) for r in index.search(q, k=20, exact=True)] for q in queries]


def _vector_files(idx: Path) -> list[str]:
    return sorted(p.name for p in (idx / "vectors").iterdir())


def test_compaction_frees_unused_rows_and_search_answers_the_same(
        churned: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    with Index.open(churned, **model_kwargs) as index:
        before = _answers(index, photos)
        model = index.model_record()
        assert index.store.reclaimable(model) == (4, 4 * model.dim * 4)
        report = compact(index.store)
        (done,) = report.models
        assert (done.rows_before, done.rows_after, done.generation) == (13, 9, 1)
        assert done.bytes_reclaimed == 4 * model.dim * 4 == report.bytes_reclaimed
        assert _vector_files(churned) == ["model-1.g1.f32"]  # the old file is gone
        after = index.model_record()
        assert (after.rows, after.generation, after.vectors_file) == (9, 1, "vectors/model-1.g1.f32")
        assert index.store.reclaimable(after) == (0, 0)
        assert _answers(index, photos) == before
        assert index.status(verify=True).problems == []
        again = compact(index.store)  # nothing left to free: no new file, no new generation
        assert not again.models[0].compacted and index.model_record().generation == 1
    with Index.open(churned, **model_kwargs) as index:  # as another process sees it
        assert _answers(index, photos) == before


def _kill_while_copying(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    real = compact_module._write_all

    def partly(fd: int, rows: np.ndarray) -> None:
        real(fd, rows[:2])
        raise Killed

    monkeypatch.setattr(compact_module, "_write_all", partly)


def _kill_before_the_commit(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    def killed(*args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(Store, "renumber_vectors", killed)


def _kill_inside_the_commit(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    # The last statement of the transaction fails, after the embeddings were renumbered:
    # SQLite rolls it all back, as it does for a transaction a kill interrupted.
    store.conn.execute("CREATE TEMP TRIGGER killed BEFORE UPDATE OF vectors_file ON models "
                       "BEGIN SELECT RAISE(ABORT, 'killed'); END")


def _kill_after_the_commit(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    def killed(path: Path) -> None:
        raise Killed

    monkeypatch.setattr(compact_module, "_discard", killed)


KILLS: dict[str, Callable[[pytest.MonkeyPatch, Store], None]] = {
    "while copying": _kill_while_copying,
    "before the commit": _kill_before_the_commit,
    "inside the commit": _kill_inside_the_commit,
    "after the commit": _kill_after_the_commit,
}


@pytest.mark.parametrize("kill", KILLS)
def test_a_killed_compaction_leaves_a_correct_index_and_the_next_one_finishes(
        kill: str, churned: Path, photos: Path, model_kwargs: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with Index.open(churned, **model_kwargs) as index:
        before = _answers(index, photos)
    with monkeypatch.context() as patch, Index.open(churned, **model_kwargs) as index:
        patch.setattr(compact_module, "_discard", lambda path: None)  # a SIGKILL cleans nothing up
        KILLS[kill](patch, index.store)
        with pytest.raises((Killed, sqlite3.Error, IndexDamaged, IndexStorageError)):
            compact(index.store)
    committed = kill == "after the commit"
    with Index.open(churned, **model_kwargs) as index:  # the next process
        record = index.model_record()
        assert (record.rows, record.generation) == ((9, 1) if committed else (13, 0))
        assert _answers(index, photos) == before
        assert index.status(verify=True).problems == []
        assert len(_vector_files(churned)) == 2  # the leftover: the new file, or the old one
        report = compact(index.store)
        assert report.leftovers and report.bytes_reclaimed > 0
        assert _vector_files(churned) == ["model-1.g1.f32"]
        assert _answers(index, photos) == before
        assert index.status(verify=True).problems == []


def test_a_photo_deleted_then_added_back_after_compaction(
        churned: Path, photos: Path, model_kwargs: dict[str, str], tmp_path: Path) -> None:
    kept = tmp_path / "kept.jpg"
    shutil.copy(photos / "photo-006.jpg", kept)
    with Index.open(churned, **model_kwargs) as index:
        before = _answers(index, photos)
        (photos / "photo-006.jpg").unlink()
        index.add(photos)
        compact(index.store)
        assert index.model_record().rows == 8
        shutil.copy(kept, photos / "photo-006.jpg")
        report = index.add(photos)
        assert (report.new, report.encoded) == (1, 1)  # its vector went with the compaction
        assert index.model_record().rows == 9
        assert _answers(index, photos) == before
        top = index.search(f"@{photos / 'photo-006.jpg'}", k=1)[0]
        assert top.path.endswith("photo-006.jpg") and top.score == pytest.approx(1.0, abs=1e-5)


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_every_model_is_compacted_and_keeps_its_vectors(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "idx", create=True)
    models = [store.add_model("a", "a", "{}", 8, 1.0, "fp32"),
              store.add_model("b", "b", "{}", 16, 1.0, "fp32", storage="f16")]
    hashes = [f"h{i}" for i in range(10)]
    files = [NewFile(f"/p/{i}.jpg", 1, 1, h) for i, h in enumerate(hashes)]
    vectors = {}
    for seed, model in enumerate(models):
        vectors[model.key] = _unit(10, model.dim, seed)
        # model b's rows in another order, after two rows of photos long gone
        order = list(reversed(range(10))) if model.key == "b" else list(range(10))
        store.commit_batch(model, _unit(2, model.dim, 9), ["gone1", "gone2"], [])
        store.commit_batch(model, vectors[model.key][order], [hashes[i] for i in order], files)
    store.remove_files([f"/p/{i}.jpg" for i in (1, 4, 7)])
    store.close()
    store = Store.open(tmp_path / "idx")
    report = compact(store)
    assert [(m.key, m.rows_before, m.rows_after) for m in report.models] == [("a", 12, 7), ("b", 12, 7)]
    assert sorted(p.name for p in (tmp_path / "idx" / "vectors").iterdir()) == ["model-1.g1.f32", "model-2.g1.f16"]
    for model in store.models():
        assert set(store.embedded_hashes(model)) == {hashes[i] for i in (0, 2, 3, 5, 6, 8, 9)}
        assert sorted(store.embedded_hashes(model).values()) == list(range(7))
        for i in (0, 2, 3, 5, 6, 8, 9):
            stored = store.vector_for_hash(model, hashes[i])
            assert stored is not None
            np.testing.assert_allclose(stored, vectors[model.key][i], atol=1e-3 if model.storage == "f16" else 0)
    store.close()


def test_a_read_only_index_is_refused_clearly(churned: Path) -> None:
    store = Store.open(churned, readonly=True)
    try:
        with pytest.raises(IndexStorageError, match="read-only"):
            compact(store)
    finally:
        store.close()
    assert _vector_files(churned) == ["model-1.f32"]


def test_a_lost_vector_refuses_compaction_and_changes_nothing(churned: Path) -> None:
    vectors = churned / "vectors" / "model-1.f32"
    data = np.fromfile(vectors, dtype="<f4")
    data[-(data.size // 13):] = 0.0  # the last row: the changed photo's new vector
    data.tofile(vectors)
    store = Store.open(churned)
    try:
        with pytest.raises(IndexDamaged, match=r"clipdex index .* to re-encode the 1 lost photos, then compact again"):
            compact(store)
        assert store.models()[0].vectors_file == "vectors/model-1.f32"
    finally:
        store.close()
    assert _vector_files(churned) == ["model-1.f32"]


def test_leftovers_go_but_never_a_referenced_file_or_what_is_named_after_it(churned: Path) -> None:
    store = Store.open(churned)
    try:
        compact(store)
        folder = churned / "vectors"
        for name in ("model-1.f32", "model-1.g5.f32", "model-1.g1.f32.ivf.tmp", "model-9.f16", "notes.txt"):
            (folder / name).write_bytes(b"x" * 10)
        report = compact(store)  # nothing to free but the leftovers
    finally:
        store.close()
    assert sorted(report.leftovers) == ["vectors/model-1.f32", "vectors/model-1.g5.f32", "vectors/model-9.f16"]
    assert report.bytes_reclaimed == 30 and not report.models[0].compacted
    assert _vector_files(churned) == ["model-1.g1.f32", "model-1.g1.f32.ivf.tmp", "notes.txt"]


def test_temporary_files_of_a_killed_save_go_referenced_or_not(churned: Path) -> None:
    """A SIGKILL while the approximate index (or any vector file) is written through
    clipdex.fileio.replacing leaves its hidden temporary file: ~0.5 GB at 1M rows."""
    store = Store.open(churned)
    try:
        compact(store)
        folder = churned / "vectors"
        killed = [".model-1.g1.f32.ivf.k2j3h_x.tmp", ".model-1.f32.ivf.abc.tmp", ".model-7.f16.9q.tmp"]
        kept = [".model-1.g1.f32.ivf.k2j3h_x", ".notes.tmp", "model-1.g1.f32.ivf.tmp"]
        for name in killed + kept:
            (folder / name).write_bytes(b"x" * 10)
        report = compact(store)
    finally:
        store.close()
    assert sorted(report.leftovers) == sorted(f"vectors/{name}" for name in killed)
    assert report.bytes_reclaimed == 30
    assert _vector_files(churned) == sorted(["model-1.g1.f32", *kept])


def test_the_compact_command(churned: Path) -> None:
    result = run_cli("compact", "--index", str(churned), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["rows_before"], report["rows_after"], report["leftovers"]) == (13, 9, [])
    assert report["models"][0]["vectors_file"] == "vectors/model-1.g1.f32"
    text = run_cli("compact", "--index", str(churned))
    assert text.exit_code == 0 and "all in use (nothing to free)" in text.output
    os.chmod(churned, 0o555)
    try:
        if os.access(churned, os.W_OK):
            return  # root writes anyway: the read-only case is covered on the store above
        refused = run_cli("compact", "--index", str(churned), catch_exceptions=True)
        assert refused.exit_code != 0 and "read-only" in refused.output
    finally:
        os.chmod(churned, 0o755)
