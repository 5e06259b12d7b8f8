"""Indexing and search through the library API, with the tiny real open_clip model."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clipdex import Index, IndexLocked, ModelMismatch, PhotoFolderError
from clipdex.errors import IndexNotFound
from clipdex.store import Store
from tests.images import write_edge_cases


def _open(path: Path, model_kwargs: dict[str, str], **kw: object) -> Index:
    return Index.open(path, create=True, **model_kwargs, **kw)


def test_index_then_unchanged_rerun_encodes_nothing(tmp_path: Path, photos: Path,
                                                    model_kwargs: dict[str, str]) -> None:
    with _open(tmp_path / "idx", model_kwargs) as index:
        first = index.add(photos)
        second = index.add(photos)
    assert (first.new, first.encoded, first.indexed_total) == (12, 12, 12)
    assert (second.new, second.encoded, second.unchanged) == (0, 0, 12)


def test_changes_renames_and_deletions(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
        files = sorted(p for p in photos.glob("*.jpg"))
        files[0].rename(photos / "renamed.jpg")  # same bytes: vector reused
        files[1].unlink()
        shutil.copy(files[3], files[2])  # new content under an old name: re-encoded... or reused
        (photos / "trip" / "copy.jpg").write_bytes(files[4].read_bytes())  # duplicate
        report = index.add(photos)
        hits = index.search("@renamed.jpg", k=1)
    assert report.removed == 2  # files[0] (renamed away) and files[1]
    assert report.new == 2 and report.changed == 1
    assert report.reused == 3 and report.encoded == 0
    assert report.indexed_total == 12
    assert hits[0].path == str(photos / "renamed.jpg") and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_bad_files_are_recorded_and_skipped(tmp_path: Path, photos: Path,
                                            model_kwargs: dict[str, str]) -> None:
    write_edge_cases(photos / "edge")
    (photos / "edge" / "broken.jpg").symlink_to(photos / "nowhere.jpg")
    with _open(tmp_path / "idx", model_kwargs) as index:
        report = index.add(photos)
        failures = {Path(f.path).name: f.reason for f in index.failures()}
        status = index.status()
    assert set(failures) == {"truncated.jpg", "empty.jpg", "text.jpg", "bomb.png", "broken.jpg"}
    assert {Path(f.path).name for f in report.failed} == set(failures)
    assert "broken symlink" in failures["broken.jpg"]
    assert status.indexed == 12 + 10 and status.failed == 5


def test_failed_files_are_not_retried_unless_asked(tmp_path: Path, photos: Path,
                                                   model_kwargs: dict[str, str]) -> None:
    from clipdex import IndexSettings

    bad = photos / "bad.jpg"
    bad.write_text("not yet a photo")
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
        again = index.add(photos)
        shutil.copy(next(photos.glob("[!b]*.jpg")), bad)
        os.utime(bad, ns=(1, 1))  # same size would be a coincidence; force a stat change anyway
        fixed = index.add(photos, settings=IndexSettings(retry_failed=True))
    assert again.encoded == 0 and len(again.failed) == 1
    assert not fixed.failed


def test_missing_and_empty_folders_change_nothing(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    (tmp_path / "empty").mkdir()
    with _open(tmp_path / "idx", model_kwargs) as index:
        with pytest.raises(PhotoFolderError, match="does not exist"):
            index.add(tmp_path / "missing")
        with pytest.raises(PhotoFolderError, match="no images"):
            index.add(tmp_path / "empty")
        assert index.status().roots == [] and index.store.models() == []


def test_another_model_is_refused_then_added_beside(tmp_path: Path, photos: Path,
                                                   model_kwargs: dict[str, str], tiny_model) -> None:
    import open_clip
    import torch

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model("clipdex-tiny", pretrained=None).state_dict(), other)
    other_kwargs = dict(model_kwargs, weights=str(other))
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
    with _open(tmp_path / "idx", other_kwargs) as index:
        with pytest.raises(ModelMismatch, match="--add-model"):
            index.add(photos)
        assert len(index.store.models()) == 1
        index.add(photos, allow_new_model=True)
        assert [m.photos for m in index.status().models] == [12, 12]


def test_search_text_and_image_queries(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
        first = index.search("dog in the snow", k=5)
        again = index.search("dog in the snow", k=5)
        page2 = index.search("dog in the snow", k=5, offset=5)
        target = first[2].path
        by_image = index.search(f"@{target}", k=1)
        mixed = index.search(f"@{target} + 0.3*snow -people", k=12)
    assert [r.path for r in first] == [r.path for r in again]
    assert [r.rank for r in page2] == [6, 7, 8, 9, 10]
    assert not {r.path for r in first} & {r.path for r in page2}
    assert all(a.score >= b.score for a, b in zip(first, first[1:]))
    assert by_image[0].path == target and by_image[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(mixed) == 12 and all(-1.0 <= r.score <= 1.0 for r in mixed)


def test_stored_vectors_equal_plain_open_clip(tmp_path: Path, photos: Path, tiny_model) -> None:
    """The reference: clipdex's stored embedding == open_clip preprocess + encode_image."""
    import open_clip
    import torch
    from PIL import Image

    config, weights = tiny_model
    with Index.open(tmp_path / "idx", create=True, model_config=config, weights=weights) as index:
        index.add(photos)
        found = index.searchable()
        paths, vectors = found.paths, found.vectors
    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms("clipdex-tiny", pretrained=str(weights))
    model.eval()
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(p)) for p in paths])
        reference = model.encode_image(batch)
        reference = (reference / reference.norm(dim=-1, keepdim=True)).numpy()
    cosines = np.sum(reference * vectors, axis=1)
    assert cosines.min() >= 0.999, cosines


def test_a_second_writer_is_refused(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    with _open(tmp_path / "idx", model_kwargs) as index:
        index.add(photos)
        other = Store.open(tmp_path / "idx")
        other.acquire_lock()
        try:
            with pytest.raises(IndexLocked, match="another clipdex process"):
                index.add(photos)
        finally:
            other.close()
        index.add(photos)  # free again


def test_opening_a_missing_index_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFound, match="clipdex index PHOTO_DIR"):
        Index.open(tmp_path / "nothing-here")


def test_index_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    import sqlite3

    from clipdex.errors import IndexVersionError

    Store.open(tmp_path / "idx", create=True).close()
    conn = sqlite3.connect(tmp_path / "idx" / "catalog.sqlite")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(IndexVersionError, match="Upgrade clipdex"):
        Store.open(tmp_path / "idx")


KILLER = textwrap.dedent("""
    import os, signal, sys
    from clipdex import Index, IndexSettings

    class KillAfterTwoBatches:
        def start(self, total): self.batches = 0
        def advance(self, count):
            self.batches += 1
            if self.batches == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    index = Index.open(sys.argv[1], create=True, model_config=sys.argv[3], weights=sys.argv[4])
    index.add(sys.argv[2], settings=IndexSettings(batch_size=3), progress=KillAfterTwoBatches())
""")


def test_sigkill_keeps_committed_batches_and_the_next_run_resumes(
        tmp_path: Path, photos: Path, tiny_model) -> None:
    config, weights = tiny_model
    proc = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "idx"), str(photos),
                           str(config), str(weights)], env=os.environ.copy())
    assert proc.returncode == -signal.SIGKILL
    with Index.open(tmp_path / "idx", model_config=config, weights=weights) as index:
        assert index.status().indexed == 6  # two batches of three
        assert len(index.search("a photo", k=12)) == 6
        resumed = index.add(photos)
    assert (resumed.unchanged, resumed.encoded, resumed.indexed_total) == (6, 6, 12)


def test_photos_reused_by_hash_keep_their_recorded_size(tmp_path: Path, photos: Path,
                                                        model_kwargs: dict[str, str]) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        copy = tmp_path / "copy"
        shutil.copytree(photos, copy)
        report = index.add(copy)
        assert report.reused == 12 and report.encoded == 0
        originals = index.store.files_under(str(photos))
        for path, record in index.store.files_under(str(copy)).items():
            original = originals[str(photos / Path(path).relative_to(copy))]
            assert (record.width, record.height) == (original.width, original.height) == (640, 480)
