"""`import_embeddings` adopting the shards a Ray run writes (clipdex.cluster.shards): failure rows,
taken_source and raw_path, the manifest's precision, partial shards, and the driver's options
(roots, refresh, lock). The key property: a later local `clipdex index` of the same photos
finds them unchanged and encodes nothing, and treats the run's failures as its own."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from clipdex import Index
from clipdex.cluster import shards
from clipdex.discover import display_path
from clipdex.errors import IndexLocked, InterchangeError
from clipdex.indexer import RETRY_HINT, IndexSettings
from clipdex.interchange import embedding_dim, import_embeddings
from clipdex.search import engine
from clipdex.search.ann import IvfParams
from clipdex.store import Store
from clipdex.store.catalog import TAKEN_EXIF, TAKEN_NO_EXIF
from tests.images import photo

TAKEN = "2019-05-01T12:00:00"


@pytest.fixture()
def index(tmp_path: Path, model_kwargs: dict[str, str]) -> Iterator[Index]:
    """A new, empty index of the tiny model."""
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        yield idx


def _row(path: Path, **overrides: Any) -> dict[str, Any]:
    """A metadata row (shards.schema()) of a real file, as a Ray run writes it: its display path
    (and exact bytes where they are not UTF-8), content hash, size and mtime."""
    fs_path = os.fsencode(str(path))
    st = os.stat(fs_path)
    with open(fs_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    shown = display_path(str(path))
    row: dict[str, Any] = {
        "image_path": shown, "raw_path": fs_path if shown != str(path) else None, "sha256": digest,
        "size": st.st_size, "mtime": st.st_mtime_ns, "width": 64, "height": 48, "taken_at": None,
        "taken_source": TAKEN_NO_EXIF, "status": shards.STATUS_OK, "error_message": None,
        "failure_kind": None, "failure_limit": None,
    }
    row.update(overrides)
    return row


def _failed(path: Path, message: str | None, kind: str | None, limit: float | None = None) -> dict[str, Any]:
    """The row of a file the run could not prepare (its vector row is zeros)."""
    return _row(path, status=shards.STATUS_FAILED, error_message=message, failure_kind=kind,
                failure_limit=limit, width=None, height=None, taken_source=None)


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _write(out: Path, rows: list[dict[str, Any]], dim: int, seed: int = 0) -> tuple[str, str]:
    """One shard of ``rows``: random unit vectors, zeros for the failed rows."""
    vectors = _unit(len(rows), dim, seed)
    vectors[[r["status"] == shards.STATUS_FAILED for r in rows]] = 0.0
    return shards.write_shard(str(out), vectors, pa.Table.from_pylist(rows, schema=shards.schema()))


def _manifest(out: Path, index: Index, precision: str = "fp32") -> int:
    """clipdex.json of a run of ``index``'s model; the model's dimension."""
    spec = index.spec()
    dim = embedding_dim(spec)
    shards.write_manifest(str(out), shards.manifest(spec.key, spec.name, dim, precision, str(out)))
    return dim


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_failure_rows_are_failed_files_that_local_indexing_treats_as_its_own(
        index: Index, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    dim = _manifest(out, index)
    files = _photos(photos)  # 12
    bad, quiet, flaky, large = files[:4]
    rows = [_failed(bad, "cannot identify image file", "permanent"), _failed(quiet, None, None),
            _failed(flaky, "Input/output error", "transient"),
            _failed(large, "over --max-megapixels 0.01", "limit", 0.01)]
    rows += [_row(p) for p in files[4:]]
    _write(out, rows[:6], dim, seed=1)
    _write(out, rows[6:], dim, seed=2)

    report = import_embeddings(index, out)
    assert (report.failed, report.imported, report.vectors_added, report.skipped) == (4, 8, 8, 0)
    assert report.rows == 12 and report.shards_imported == 2
    assert sorted(report.failures) == sorted([(str(bad), "cannot identify image file"), (str(quiet), "failed"),
                                              (str(flaky), "Input/output error"),
                                              (str(large), "over --max-megapixels 0.01")])
    failures = {f.path: f for f in index.failures()}
    assert set(failures) == {str(bad), str(quiet), str(flaky), str(large)}
    assert (failures[str(bad)].reason, failures[str(bad)].failure_kind) == ("cannot identify image file", "permanent")
    assert (failures[str(quiet)].reason, failures[str(quiet)].failure_kind) == ("failed", "permanent")
    assert failures[str(flaky)].failure_kind == "transient"
    assert (failures[str(large)].failure_kind, failures[str(large)].failure_limit) == ("limit", 0.01)
    st = os.stat(bad)
    assert (failures[str(bad)].size, failures[str(bad)].mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert failures[str(bad)].content_hash == rows[0]["sha256"]
    assert failures[str(bad)].status == "failed"

    # The transient failure is tried again; the limit one too (178 MP > 0.01); the permanent ones
    # are kept, with the hint local indexing gives its own.
    again = index.add(photos)
    assert (again.encoded, again.retried, again.new, again.changed, again.unchanged) == (2, 2, 0, 0, 10)
    assert sorted((f.path, f.kind) for f in again.failed) == [(str(bad), "permanent"), (str(quiet), "permanent")]
    assert all(RETRY_HINT in f.reason for f in again.failed)
    assert {f.path for f in index.failures()} == {str(bad), str(quiet)}

    retried = index.add(photos, settings=IndexSettings(retry_failed=True))
    assert (retried.encoded, retried.retried, retried.failed) == (2, 2, [])
    assert index.failures() == []


def test_a_later_local_index_of_the_same_photos_encodes_nothing(index: Index, photos: Path, tmp_path: Path) -> None:
    """The Ray engine's key property: the run's shards adopted, `clipdex index` of the folder finds
    every photo unchanged (hash, size, mtime) and reads no EXIF again (taken_source)."""
    odd = Path(os.fsdecode(os.fsencode(str(photos)) + b"/caf\xe9.jpg"))  # a name that is not UTF-8
    jpeg = io.BytesIO()
    photo(99).save(jpeg, "JPEG")
    odd.write_bytes(jpeg.getvalue())
    files = _photos(photos)
    assert len(files) == 13
    out = tmp_path / "shards"
    dim = _manifest(out, index)
    rows = [_row(p, taken_at=TAKEN, taken_source=TAKEN_EXIF) if i % 2 else _row(p) for i, p in enumerate(files)]
    _write(out, rows, dim)

    report = import_embeddings(index, out)
    assert (report.imported, report.vectors_added, report.failed, report.skipped) == (13, 13, 0, 0)
    held = {r[0]: r[1:] for r in index.store.conn.execute(
        "SELECT path, raw_path, taken_at, taken_source FROM files")}
    shown = display_path(str(odd))
    assert shown != str(odd) and held[shown][0] == os.fsencode(str(odd))
    for i, path in enumerate(files):
        _, taken_at, source = held[display_path(str(path))]
        assert source == (TAKEN_EXIF if i % 2 else TAKEN_NO_EXIF)
        assert (taken_at == TAKEN) if i % 2 else taken_at is not None  # (no EXIF date: the mtime's)

    again = index.add(photos)
    assert (again.encoded, again.new, again.changed, again.retried, again.unchanged) == (0, 0, 0, 0, 13)
    assert (again.dated, again.failed) == (0, [])
    after = {r[0]: r[1:] for r in index.store.conn.execute("SELECT path, raw_path, taken_at, taken_source FROM files")}
    assert after == held


def test_the_manifest_precision_is_recorded(index: Index, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    dim = _manifest(out, index, precision="bf16")
    _write(out, [_row(p) for p in _photos(photos)], dim)
    import_embeddings(index, out)
    record = index.store.get_model(index.spec().key)
    assert record is not None and record.precision == "bf16"
    assert index.store.precision_counts(record) == {"bf16": 12}
    assert {p for (p,) in index.store.conn.execute("SELECT precision FROM embeddings")} == {"bf16"}

    strange = tmp_path / "strange"
    _manifest(strange, index, precision="fp8")
    _write(strange, [_row(p) for p in _photos(photos)], dim)
    with pytest.raises(InterchangeError, match="precision 'fp8'"):
        import_embeddings(index, strange)


def test_a_partial_shard_waits_and_new_shards_alone_are_imported(index: Index, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    dim = _manifest(out, index)
    files = _photos(photos)
    written = [_write(out, [_row(p) for p in files[a:b]], dim, seed=a) for a, b in ((0, 4), (4, 8))]
    for vector_name, metadata_name in written:  # 19-digit numbers, paired by number
        assert vector_name.removeprefix("img_emb/img_emb_").removesuffix(".npy") == \
            metadata_name.removeprefix("metadata/metadata_").removesuffix(".parquet")
        number = vector_name.removeprefix("img_emb/img_emb_").removesuffix(".npy")
        assert len(number) == shards.RUN_DIGITS + shards.HASH_DIGITS
    # A writer killed between its two renames: the vectors are in place, the metadata is not.
    last = pa.Table.from_pylist([_row(p) for p in files[8:]], schema=shards.schema())
    vector_name, metadata_name = shards.shard_names(shards.shard_number(last.column("image_path").to_pylist()))
    np.save(out / vector_name, _unit(4, dim, 8).astype(np.float16))

    with pytest.raises(InterchangeError, match="lack their other half"):
        import_embeddings(index, out)
    assert index.store.get_model(index.spec().key) is None  # untouched

    report = import_embeddings(index, out, partial=True)
    assert (report.shards, report.shards_imported, report.partial_shards, report.imported) == (2, 2, 1, 8)

    # Rerun by the writer: the whole shard is in place now; only it is read.
    shards.write_shard(str(out), _unit(4, dim, 8), last)
    report = import_embeddings(index, out, partial=True)
    assert (report.shards, report.shards_done_before, report.shards_imported, report.partial_shards) == (3, 2, 1, 0)
    assert (report.rows, report.imported) == (4, 4)
    assert index.add(photos).encoded == 0


def test_only_lone_vector_files_import_nothing(index: Index, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    dim = _manifest(out, index)
    (out / shards.EMBEDDINGS_DIR).mkdir()
    np.save(out / shards.shard_names("7")[0], _unit(3, dim, 0).astype(np.float16))
    report = import_embeddings(index, out, partial=True, refresh=False)
    assert (report.shards, report.partial_shards, report.imported) == (0, 1, 0)
    assert index.store.models() == []


def test_lock_false_runs_under_the_callers_lock(index: Index, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    dim = _manifest(out, index)
    _write(out, [_row(p) for p in _photos(photos)], dim)
    store = index.store
    store.acquire_lock()
    try:
        with pytest.raises(IndexLocked):  # the lock is not re-entrant: taking it again fails
            import_embeddings(index, out)
        report = import_embeddings(index, out, lock=False)  # (refreshing the search index too)
        assert report.imported == 12
        other = Store.open(store.path)
        try:
            with pytest.raises(IndexLocked):  # still the caller's
                other.acquire_lock()
        finally:
            other.close()
    finally:
        store.release_lock()


def test_roots_given_are_recorded_instead_of_computed(index: Index, photos: Path, tmp_path: Path,
                                                     model_kwargs: dict[str, str]) -> None:
    out = tmp_path / "shards"
    dim = _manifest(out, index)
    _write(out, [_row(p) for p in _photos(photos)], dim)
    report = import_embeddings(index, out, roots=[str(tmp_path)])
    assert report.roots == [str(tmp_path)]
    assert index.store.root_kinds() == {str(tmp_path): "import"}

    computed = tmp_path / "computed"
    with Index.open(computed, create=True, **model_kwargs) as other:
        assert import_embeddings(other, out).roots == [str(photos)]  # their deepest common folder


def test_refresh_false_leaves_the_search_index_to_the_caller(index: Index, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "ANN_MIN_ROWS", 64)
    monkeypatch.setattr(engine, "ANN_PARAMS", IvfParams(nlist=2, nprobe=2, nprobe_text=2))
    out = tmp_path / "shards"
    dim = _manifest(out, index)
    names = [f"s3://bucket/photos/{i:03d}.jpg" for i in range(80)]
    rows = [{"image_path": n, "sha256": hashlib.sha256(n.encode()).hexdigest(), "size": 1000 + i,
             "status": shards.STATUS_OK} for i, n in enumerate(names)]
    shards.write_shard(str(out), _unit(80, dim, 3), pa.Table.from_pylist(rows, schema=shards.schema()))

    import_embeddings(index, out, refresh=False)
    record = index.store.get_model(index.spec().key)
    assert record is not None and record.rows == 80
    assert not engine.ann_path(index.store, record).exists()
    (refreshed,) = index.refresh_search()
    assert refreshed.action == "built" and engine.ann_path(index.store, record).exists()


def test_reused_rows_take_the_vector_held_and_a_lost_one_is_sent_again(index: Index, photos: Path,
                                                                        tmp_path: Path) -> None:
    """A Ray run's 'reused' row (a moved or renamed photo whose content the index holds) gets the
    vector the index holds, with the upright size recorded for it; one whose vector is gone (its
    hash not held) becomes a transient failure, so the next run encodes it."""
    files = _photos(photos)
    out, moved = tmp_path / "first", tmp_path / "moved"
    dim = _manifest(out, index)
    _write(out, [_row(files[0], width=64, height=48)], dim)
    assert import_embeddings(index, out).vectors_added == 1
    moved.mkdir()
    copy = moved / "renamed.jpg"
    copy.write_bytes(files[0].read_bytes())
    lost = moved / "lost.jpg"
    lost.write_bytes(files[1].read_bytes())  # its content never got a vector
    second = tmp_path / "second"
    _manifest(second, index)
    _write(second, [_row(copy, status=shards.STATUS_REUSED, width=None, height=None),
                    _row(lost, status=shards.STATUS_REUSED, width=None, height=None)], dim)
    report = import_embeddings(index, second)
    assert (report.reused, report.vectors_added, report.imported, report.failed) == (1, 0, 1, 1)
    held = index.store.files_under(str(moved))
    assert held[str(copy)].status == "ok" and (held[str(copy)].width, held[str(copy)].height) == (64, 48)
    assert held[str(lost)].status == "failed" and held[str(lost)].failure_kind == "transient"
    assert index.add(moved).encoded == 1  # the lost one, tried again
