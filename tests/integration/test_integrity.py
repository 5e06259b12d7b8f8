"""An index is never silently wrong: damage is detected, reported, and repaired by indexing."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clipdex import Index
from clipdex.errors import IndexDamaged, PhotoFolderError
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


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_vectors_are_reported_refused_and_repaired(
        damage: str, tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    harm, lost = DAMAGE[damage]
    idx = tmp_path / "idx"
    with _open(idx, model_kwargs) as index:
        index.add(photos)
        harm(_vector_file(idx))
    with _open(idx, model_kwargs) as index:
        status = index.status()
        assert status.problems and f"{lost} photos lost" in status.problems[0]
        assert f"clipdex index {photos}" in status.problems[0]
        for call in (lambda: index.search("a photo", k=3), lambda: index.classify([_labels()], save=False)):
            with pytest.raises(IndexDamaged, match=f"re-encode the {lost} lost photos") as caught:
                call()
            assert "vectors/model-1.f32" in str(caught.value) and str(idx) in str(caught.value)
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
