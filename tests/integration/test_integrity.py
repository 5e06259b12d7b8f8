"""An index is never silently wrong: damage is detected, reported, and repaired by indexing."""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipdex import Index
from clipdex.cli import main
from clipdex.errors import IndexDamaged, IndexStorageError, PhotoFolderError
from clipdex.store import Store
from tests.images import write_photos


def _open(path: Path, model_kwargs: dict[str, str], **kw: object) -> Index:
    return Index.open(path, create=True, **model_kwargs, **kw)


def _vector_file(index_dir: Path) -> Path:
    (found,) = (index_dir / "vectors").glob("*.f32")
    return found


def _truncate(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2 + 7)  # half the rows, and a torn row


def _delete(f: Path) -> None:
    f.unlink()


def _zero_rows(f: Path) -> None:
    data = np.fromfile(f, dtype="<f4")
    dim = data.size // 12
    data[2 * dim:5 * dim] = 0.0  # three whole rows zeroed
    data.tofile(f)


def _garbage_row(f: Path) -> None:
    data = np.fromfile(f, dtype="<f4")
    data[:8] = np.nan
    data.tofile(f)


DAMAGE: dict[str, tuple[Callable[[Path], None], int]] = {
    "truncated": (_truncate, 6),
    "deleted": (_delete, 12),
    "zero rows": (_zero_rows, 3),
    "nan row": (_garbage_row, 1),
}
LENGTH_DAMAGE = ("truncated", "deleted")  # status sees these from the file's length alone


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_vectors_are_reported_refused_and_repaired(
        damage: str, tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    harm, lost = DAMAGE[damage]
    idx = tmp_path / "idx"
    with _open(idx, model_kwargs) as index:
        index.add(photos)
        harm(_vector_file(idx))
    with _open(idx, model_kwargs) as index:
        if damage not in LENGTH_DAMAGE:  # status never reads the vectors; searching checks each one
            assert index.status().problems == []
        for call in (lambda: index.search("a photo", k=3), lambda: index.classify([_labels()], save=False)):
            with pytest.raises(IndexDamaged, match=f"re-encode the {lost} lost photos") as caught:
                call()
            assert "vectors/model-1.f32" in str(caught.value) and str(idx) in str(caught.value)
        status = index.status()  # and what a search found, status reports
        assert status.problems and f"{lost} photos lost" in status.problems[0]
        assert f"clipdex index {photos} --index {idx}" in status.problems[0]
        assert status.indexed == 12 and [m.photos for m in status.models] == [12 - lost]
        report = index.add(photos)  # repairs: the lost photos are encoded again, not "unchanged"
        assert (report.encoded, report.unchanged, report.indexed_total) == (lost, 12 - lost, 12)
        assert index.status().problems == []
        hits = index.search(f"@{photos / 'trip' / 'photo-000.jpg'}", k=12)
        assert len(hits) == 12 and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert all(abs(h.score) > 0 for h in hits)
        found = index.searchable()
        assert np.allclose(np.linalg.norm(found.vectors, axis=1), 1.0, atol=1e-4)


def test_a_new_photo_never_grows_a_short_vector_file_with_zeros(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    idx = tmp_path / "idx"
    with _open(idx, model_kwargs) as index:
        index.add(photos)
    _truncate(_vector_file(idx))
    store = Store.open(idx)
    try:
        model = store.models()[0]
        with pytest.raises(IndexDamaged, match="holds 6 complete rows, the catalog committed 12"):
            store.commit_batch(model, np.ones((1, model.dim), np.float32) / np.sqrt(model.dim),
                               ["new-hash"], [])
        assert _vector_file(idx).stat().st_size < 12 * model.dim * 4  # not grown
    finally:
        store.close()


def test_damage_in_another_folder_is_reported_after_a_repair(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    other = tmp_path / "other"
    write_photos(other, 3, start=40)
    idx = tmp_path / "idx"
    with _open(idx, model_kwargs) as index:
        index.add(photos)
        index.add(other)
        _delete(_vector_file(idx))
        index.add(photos)  # forgets every lost vector, re-encodes only this folder's
        (problem,) = index.status().problems
        assert "3 photos have no" in problem and f"clipdex index {other}" in problem
        index.add(other)
        assert index.status().problems == []
        assert len(index.search("a photo", k=20)) == 15


def _labels():  # type: ignore[no-untyped-def]
    from clipdex.labels import make_label_set

    return make_label_set("taken_space", ["indoor", "outdoor"], ["a photo taken {}"])


# -- folders that moved, emptied or nest -----------------------------------------
def test_a_moved_folder_is_hidden_then_removed(tmp_path: Path, photos: Path,
                                               model_kwargs: dict[str, str]) -> None:
    moved = tmp_path / "photos-moved"
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
        index.classify([_labels()])
        photos.rename(moved)
        index.add(moved)  # same bytes: every vector reused
        status = index.status()
        assert status.missing_roots == [str(photos)] and status.missing_photos == 12
        assert status.indexed == 12 and [m.photos for m in status.models] == [12]
        hits = index.search("a photo", k=30)
        assert len(hits) == 12 and all(h.path.startswith(str(moved)) for h in hits)
        labelled = index.classification("taken_space").paths  # by content hash: the moved copies
        assert len(labelled) == 12 and all(p.startswith(str(moved)) for p in labelled)
        with pytest.raises(PhotoFolderError, match="clipdex remove"):
            index.add(photos)
        with pytest.raises(PhotoFolderError, match=re.escape(
                f"Its folders are: {photos} (no longer exists), {moved}.")):
            index.remove_folder(tmp_path / "never-indexed")
        assert index.remove_folder(photos) == 12
        status = index.status()
        assert status.roots == [str(moved)] and status.missing_roots == [] and status.indexed == 12
        report = index.add(moved)
        assert report.encoded == 0 and report.unchanged == 12


def test_prune_missing_forgets_every_folder_that_is_gone(tmp_path: Path, photos: Path,
                                                         model_kwargs: dict[str, str]) -> None:
    other = tmp_path / "other"
    write_photos(other, 2, start=30)
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
        index.add(other)
        for f in other.iterdir():
            f.unlink()
        other.rmdir()
        assert index.prune_missing() == [str(other)]
        assert index.prune_missing() == []
        assert index.status().roots == [str(photos)] and index.status().indexed == 12


def test_an_emptied_folder_leaves_the_index(tmp_path: Path, photos: Path,
                                            model_kwargs: dict[str, str]) -> None:
    from clipdex.errors import EmptyIndex

    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
        shutil.rmtree(photos)
        photos.mkdir()
        report = index.add(photos)
        assert report.removed == 12 and index.status().indexed == 0
        with pytest.raises(EmptyIndex):
            index.search("a photo")


def test_nested_folders_count_each_photo_once(tmp_path: Path, photos: Path,
                                              model_kwargs: dict[str, str]) -> None:
    trip = photos / "trip"
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
        index.add(trip)
        status = index.status()
        assert status.roots == [str(photos), str(trip)] and status.indexed == 12
        assert index.remove_folder(trip) == 0  # its photos still belong to photos/
        assert index.status().indexed == 12
        index.add(trip)
        assert index.remove_folder(photos) == 10  # trip/ keeps its own two
        assert index.status().indexed == 2 and len(index.search("a photo", k=20)) == 2


# -- read-only indexes ------------------------------------------------------------
def _assert_reads_but_refuses_writes(index: Index, photos: Path) -> None:
    assert index.store.readonly and index.status().readonly
    assert index.status().indexed == 12
    assert len(index.search("a photo", k=5)) == 5
    assert index.classification("taken_space").paths
    with pytest.raises(IndexStorageError, match="read-only"):
        index.add(photos)
    with pytest.raises(IndexStorageError, match="read-only"):
        index.correct("taken_space", index.search("a photo", k=1)[0].file_id, "indoor")


def _indexed(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> Path:
    idx = tmp_path / "idx"
    with _open(idx, model_kwargs) as index:
        index.add(photos)
        index.classify([_labels()])
    return idx


def test_a_read_only_open_reads_and_refuses_writes(tmp_path: Path, photos: Path,
                                                   model_kwargs: dict[str, str]) -> None:
    idx = _indexed(tmp_path, photos, model_kwargs)
    with Index.open(idx, readonly=True, **model_kwargs) as index:
        _assert_reads_but_refuses_writes(index, photos)


def test_an_index_that_cannot_be_written_opens_read_only(tmp_path: Path, photos: Path,
                                                         model_kwargs: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    idx = _indexed(tmp_path, photos, model_kwargs)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(idx))
                        and mode & os.W_OK else real_access(p, mode, **kw))
    with Index.open(idx, **model_kwargs) as index:  # as a read-only mount or chmod look to a user
        _assert_reads_but_refuses_writes(index, photos)


def _mount_read_only(source: Path, target: Path) -> None:
    target.mkdir()
    for cmd in (["mount", "--bind", str(source), str(target)],
                ["mount", "-o", "remount,bind,ro", str(target)]):
        if subprocess.run(cmd, capture_output=True).returncode:
            subprocess.run(["umount", str(target)], capture_output=True)
            pytest.skip("needs permission to mount (root with CAP_SYS_ADMIN)")


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                    reason="a read-only bind mount needs root on Linux")
def test_an_index_on_a_read_only_mount(tmp_path: Path, photos: Path,
                                       model_kwargs: dict[str, str]) -> None:
    idx = _indexed(tmp_path, photos, model_kwargs)
    assert not (idx / "catalog.sqlite-shm").exists()  # closed cleanly: none to read through
    ro = tmp_path / "ro"
    _mount_read_only(idx, ro)
    try:
        with Index.open(ro, **model_kwargs) as index:
            _assert_reads_but_refuses_writes(index, photos)
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_read_only_index_too_old_to_read_says_so(tmp_path: Path) -> None:
    Store.open(tmp_path / "idx", create=True).close()
    conn = sqlite3.connect(tmp_path / "idx" / "catalog.sqlite")
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with pytest.raises(IndexStorageError, match=r"schema version 3.*read-only.*write access"):
        Store.open(tmp_path / "idx", readonly=True)


# -- damaged catalogs ---------------------------------------------------------------
def test_a_damaged_catalog_is_reported_with_the_fix(tmp_path: Path, photos: Path,
                                                    model_kwargs: dict[str, str]) -> None:
    idx = _indexed(tmp_path, photos, model_kwargs)
    catalog = idx / "catalog.sqlite"
    data = bytearray(catalog.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # every page after the first: garbage
    catalog.write_bytes(bytes(data))
    with pytest.raises(IndexDamaged, match=r"catalog.sqlite cannot be read.*move it aside") as caught, \
            Index.open(idx, **model_kwargs) as index:
        index.status()
        index.search("a photo")
    assert f"mv {idx} {idx}.damaged" in str(caught.value)


def test_a_catalog_that_is_not_sqlite_is_reported(tmp_path: Path, photos: Path,
                                                  model_kwargs: dict[str, str]) -> None:
    idx = _indexed(tmp_path, photos, model_kwargs)
    (idx / "catalog.sqlite").write_bytes(b"\0" * 8192)
    with pytest.raises(IndexDamaged, match="is not a SQLite database"):
        Index.open(idx, **model_kwargs)


def test_an_empty_catalog_beside_vectors_is_damage_not_a_new_index(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    idx = _indexed(tmp_path, photos, model_kwargs)
    (idx / "catalog.sqlite").write_bytes(b"")
    for create in (False, True):
        with pytest.raises(IndexDamaged, match=r"empty \(0 bytes\) but vectors/ still holds model-1.f32"):
            Index.open(idx, create=create, **model_kwargs)
    assert (idx / "catalog.sqlite").stat().st_size == 0  # never reset


def test_a_deleted_catalog_beside_vectors_is_damage_not_a_new_index(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str], model_args: list[str]) -> None:
    idx = _indexed(tmp_path, photos, model_kwargs)
    vectors = _vector_file(idx).read_bytes()
    for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
        (idx / name).unlink(missing_ok=True)
    for kw in ({"create": False}, {"create": True}, {"readonly": True}):
        with pytest.raises(IndexDamaged, match=r"catalog\.sqlite is missing but vectors/ still holds "
                           r"model-1\.f32") as caught:
            Index.open(idx, **kw, **model_kwargs)  # type: ignore[arg-type]
        assert f"mv {idx} {idx}.damaged" in str(caught.value)
    result = CliRunner().invoke(main, ["index", str(photos), "--index", str(idx), *model_args])
    assert result.exit_code == 1 and "catalog.sqlite is missing" in result.output
    assert not (idx / "catalog.sqlite").exists()  # nothing created
    assert _vector_file(idx).read_bytes() == vectors  # never truncated


def test_an_empty_catalog_of_a_killed_first_run_is_a_new_index(tmp_path: Path) -> None:
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "catalog.sqlite").write_bytes(b"")
    store = Store.open(tmp_path / "idx", create=True)
    try:
        assert store.models() == [] and store.roots() == []
    finally:
        store.close()


# -- two first runs at once -----------------------------------------------------
FIRST_RUN = textwrap.dedent("""
    import os, sys, time
    from clipdex import Index
    index_dir, photos, config, weights, go = sys.argv[1:6]
    while not os.path.exists(go):
        time.sleep(0.005)
    with Index.open(index_dir, create=True, model_config=config, weights=weights) as index:
        report = index.add(photos, wait=True)
        print(report.encoded, report.unchanged)
""")


def test_two_first_runs_at_once_both_succeed(tmp_path: Path, photos: Path, tiny_model) -> None:
    config, weights = tiny_model
    go = tmp_path / "go"
    runs = [subprocess.Popen([sys.executable, "-c", FIRST_RUN, str(tmp_path / "idx"), str(photos),
                              str(config), str(weights), str(go)], env=os.environ.copy(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    go.touch()
    results = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err for _, err in results]
    done = sorted(tuple(map(int, out.split())) for out, _ in results)
    assert done == [(0, 12), (0, 12), (12, 0)]  # one encoded; the others found it done
    with Index.open(tmp_path / "idx", model_config=config, weights=weights) as index:
        assert len(index.store.models()) == 1 and index.status().indexed == 12


# -- a full disk -------------------------------------------------------------------
def test_a_full_disk_while_indexing_is_a_clear_error_and_keeps_finished_batches(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdex import IndexSettings
    from clipdex.store import vectors

    real_write = os.write
    calls = {"n": 0}

    def write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] > 2:  # two batches fit, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(vectors.os, "write", write)
    with _open(tmp_path / "idx", model_kwargs) as index:
        with pytest.raises(IndexStorageError, match=r"disk full while writing .*model-1\.f32.*"
                           r"Free space and run again: finished batches are kept"):
            index.add(photos, settings=IndexSettings(batch_size=4))
        assert index.status().indexed == 8 and index.status().problems == []
        monkeypatch.setattr(vectors.os, "write", real_write)
        report = index.add(photos)
    assert (report.unchanged, report.encoded) == (8, 4)


def test_a_full_disk_in_the_catalog_is_a_clear_error(tmp_path: Path, photos: Path,
                                                     model_kwargs: dict[str, str]) -> None:
    from clipdex.labels import make_label_set

    idx = _indexed(tmp_path, photos, model_kwargs)
    with Index.open(idx, **model_kwargs) as index:
        index.store.conn.execute("PRAGMA max_page_count = 1")  # cannot grow (clamped to its size)
        many = make_label_set("many", [f"label {i}" for i in range(400)], ["a photo of {}"])
        with pytest.raises(IndexStorageError, match="disk full while writing the catalog"):
            index.classify([many])  # 12 x 400 probabilities need new pages: SQLITE_FULL


# -- names that are not UTF-8 -----------------------------------------------------
@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses names that are not UTF-8")
def test_names_that_are_not_utf8_are_opened_by_their_real_path(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    raw = os.fsencode(photos) + b"/caf\xe9.jpg"
    shutil.copy(photos / "photo-003.jpg", raw)
    real = os.fsdecode(raw)
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
        found = index.searchable()
        i = found.fs_paths.index(real)
        assert found.paths[i] == str(photos / "caf\\xe9.jpg") and os.path.isfile(found.fs_paths[i])
        for ref in ("caf\\xe9.jpg", real, str(photos / "caf\\xe9.jpg")):
            hit = index.search(f"@'{ref}'", k=1)[0]  # quoted: the query keeps the backslash
            assert hit.path == found.paths[i] and hit.score == pytest.approx(1.0, abs=1e-5)
        (result,) = index.classify([_labels()])
        stored = index.classification("taken_space")
        for labelled in (result, stored):
            assert labelled.fs_paths is not None
            assert labelled.fs_paths[labelled.paths.index(found.paths[i])] == real


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses names that are not UTF-8")
def test_a_folder_whose_name_is_not_utf8_is_not_taken_for_missing(
        tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    folder = os.fsdecode(os.fsencode(tmp_path) + b"/f\xe9tes")
    write_photos(Path(folder), 2)
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(folder)
        status = index.status()
        assert status.roots == [str(tmp_path / "f\\xe9tes")] and status.missing_roots == []
        assert len(index.search("a photo", k=5)) == 2
        assert index.remove_folder(folder) == 2


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses names that are not UTF-8")
def test_a_gone_folder_whose_name_is_not_utf8_still_counts_its_photos(
        tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    folder = os.fsdecode(os.fsencode(tmp_path) + b"/f\xe9tes")
    write_photos(Path(folder), 2)
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(folder)
        os.rename(folder, tmp_path / "moved")
        assert index.store.count_under([folder]) == 2  # the real name
        assert index.store.count_under([str(tmp_path / "f\\xe9tes")]) == 2  # its display form
        assert index.store.counts([folder]) == {}  # hidden by its real name too
        with pytest.raises(PhotoFolderError, match="still holds its 2 photos"):
            index.add(folder)
        status = index.status()
        assert status.missing_photos == 2 and status.indexed == 0
