"""The indexing pipeline under bad input: passing failures, limits, huge files, Ctrl-C,
index folders inside the photo folder, emptied folders."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from clipdex import Index, IndexSettings, PhotoFolderError
from clipdex import indexer as indexer_module
from clipdex.cli import main
from clipdex.indexer import Indexer
from tests.images import photo


def _open(tmp_path: Path, model_kwargs: dict[str, str]) -> Index:
    return Index.open(tmp_path / "idx", create=True, **model_kwargs)


def _failing_open(monkeypatch: pytest.MonkeyPatch, names: set[str], error: OSError) -> list[str]:
    """Make the indexer's ``open`` fail for files named in ``names`` (as a sync tool's
    atomic replace or a NAS hiccup would); returns the list of files it refused."""
    refused: list[str] = []

    def flaky_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if os.path.basename(os.fspath(path)) in names:
            refused.append(os.fspath(path))
            raise error
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(indexer_module, "open", flaky_open, raising=False)
    return refused


# -- failures that pass retry by themselves ------------------------------------------

@pytest.mark.parametrize("error", [
    FileNotFoundError(errno.ENOENT, "No such file or directory"),
    PermissionError(errno.EACCES, "Permission denied"),
    OSError(errno.EIO, "Input/output error"),
])
def test_a_file_that_could_not_be_read_is_retried_on_the_next_run(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        error: OSError) -> None:
    with _open(tmp_path, model_kwargs) as index:
        with monkeypatch.context() as m:
            refused = _failing_open(m, {"photo-005.jpg"}, error)
            first = index.add(photos)
        assert refused
        [failure] = first.failed
        assert failure.path == str(photos / "photo-005.jpg") and failure.kind == "transient"
        assert error.strerror and error.strerror in failure.reason
        [stored] = index.failures()
        assert stored.failure_kind == "transient"

        second = index.add(photos)  # the file is back, unchanged: no --retry-failed needed
        assert second.failed == [] and second.retried == 1 and second.encoded == 1
        assert index.failures() == [] and second.indexed_total == 12


def test_an_image_over_the_limit_is_retried_once_the_limit_is_raised(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    big = photos / "big.jpg"
    photo(99, 1600, 1200).save(big)  # 1.92 megapixels; the others are 0.3
    with _open(tmp_path, model_kwargs) as index:
        first = index.add(photos, settings=IndexSettings(max_megapixels=1.5))
        [failure] = first.failed
        assert failure.kind == "limit" and "--max-megapixels 2" in failure.reason
        [stored] = index.failures()
        assert (stored.failure_kind, stored.failure_limit) == ("limit", 1.5)

        same = index.add(photos, settings=IndexSettings(max_megapixels=1.5))
        lower = index.add(photos, settings=IndexSettings(max_megapixels=1.0))
        assert same.retried == lower.retried == 0 and same.encoded == lower.encoded == 0
        assert [f.kind for f in same.failed] == [f.kind for f in lower.failed] == ["limit"]

        raised = index.add(photos, settings=IndexSettings(max_megapixels=2))  # what it said
        assert raised.retried == 1 and raised.encoded == 1 and raised.failed == []
        assert raised.indexed_total == 13


def test_a_bad_file_is_retried_only_when_asked_and_the_summary_says_how(
        tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    (photos / "notes.jpg").write_text("not a photo")
    runner = CliRunner()
    args = ["index", str(photos), "--index", str(tmp_path / "idx"), *model_args]

    first = runner.invoke(main, args)
    again = runner.invoke(main, [*args, "--json"])
    retried = runner.invoke(main, [*args, "--json", "--retry-failed"])
    status = runner.invoke(main, ["status", "--failures", "--index", str(tmp_path / "idx")])

    assert first.exit_code == again.exit_code == retried.exit_code == 0, first.output
    assert "not an image" in first.output and "--retry-failed" not in first.output
    [failure] = json.loads(again.output)["failed"]
    assert "not an image" in failure["reason"]
    assert "use --retry-failed to try again" in failure["reason"]
    assert json.loads(retried.output).get("retried", 1) == 1
    assert "use --retry-failed" not in json.loads(retried.output)["failed"][0]["reason"]
    assert "not an image" in status.output and "--retry-failed" not in status.output


def test_a_file_replaced_between_the_walk_and_the_read(tmp_path: Path, photos: Path,
                                                      model_kwargs: dict[str, str]) -> None:
    with _open(tmp_path, model_kwargs) as index:
        walk = Indexer.scan(photos)
        target = photos / "photo-003.jpg"
        photo(77).save(target)  # rewritten after the walk saw it
        os.utime(target, ns=(1, 1))
        index.add(photos)  # indexes what is there now
        again = index.add(photos)
    assert walk.files and again.unchanged == 12 and again.encoded == 0


# -- huge and misnamed files ------------------------------------------------------

def _sparse(path: Path, head: bytes, size: int) -> None:
    path.write_bytes(head)
    os.truncate(path, size)


def test_multi_gigabyte_files_are_skipped_or_indexed_in_bounded_memory(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    with _open(tmp_path, model_kwargs) as index:
        index.add(photos)  # the model's start-up is not the pipeline's memory
        noise = np.random.default_rng(0).bytes(64 << 10)
        _sparse(photos / "noise.jpg", noise, 3 << 30)
        _sparse(photos / "noise.tif", b"II*\x00" + noise, 3 << 30)  # a TIFF signature, then junk
        jpeg = io.BytesIO()
        photo(50).save(jpeg, "JPEG")
        _sparse(photos / "photo-then-zeros.jpg", jpeg.getvalue(), 512 << 20)  # hashed in chunks
        tracemalloc.start()
        try:
            report = index.add(photos, settings=IndexSettings(workers=2))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        failures = {Path(f.path).name: f for f in index.failures()}
    assert set(failures) == {"noise.jpg", "noise.tif"}
    assert all(f.failure_kind == "permanent" for f in failures.values())
    assert "not an image" in failures["noise.jpg"].reason
    assert report.indexed_total == 13  # the JPEG with 512 MB of trailing zeros is a photo
    assert peak < 64 << 20, peak  # the files hold 6.5 GB


# -- Ctrl-C ------------------------------------------------------------------

class _InterruptAfterFirstBatch:
    def start(self, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_drops_queued_files_and_keeps_committed_batches(
        tmp_path: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(20):
        photo(seed, 96, 64).save(photos / f"small-{seed:02d}.jpg")
    prepared: list[str] = []
    release = threading.Event()
    original = Indexer._prepare

    def counting(self: Indexer, entry: Any, *args: Any) -> Any:
        prepared.append(entry.path)
        if len(prepared) > 2:
            release.wait(5)  # the third file and later: a slow disk
        return original(self, entry, *args)

    monkeypatch.setattr(Indexer, "_prepare", counting)
    with _open(tmp_path, model_kwargs) as index:
        with pytest.raises(KeyboardInterrupt):
            index.add(photos, settings=IndexSettings(batch_size=2, workers=2),
                      progress=_InterruptAfterFirstBatch())
        release.set()
        time.sleep(0.3)  # give a runaway pool the chance to show itself
        started = len(prepared)
        assert started <= 4  # the two committed, and at most one per worker after them
        assert index.status().indexed == 2
        monkeypatch.setattr(Indexer, "_prepare", original)
        resumed = index.add(photos)
    assert (resumed.unchanged, resumed.encoded, resumed.indexed_total) == (2, 18, 20)


def test_a_worker_lets_go_of_a_big_file_when_the_run_stops(tmp_path: Path) -> None:
    _sparse(tmp_path / "big.jpg", b"", 256 << 20)
    indexer = Indexer.__new__(Indexer)
    indexer._stop = threading.Event()
    indexer._stop.set()
    with open(tmp_path / "big.jpg", "rb") as f, pytest.raises(indexer_module._Stopped):
        indexer._hash_file(f)
        assert f.tell() <= indexer_module.HASH_CHUNK


# -- index folders inside the photo folder ----------------------------------------

def test_an_index_inside_the_photo_folder_never_indexes_itself(
        tmp_path: Path, photos: Path, model_args: list[str], model_kwargs: dict[str, str]) -> None:
    own = photos / "clipdex-index"  # not hidden, so only clipdex can know what it is
    runner = CliRunner()
    args = ["index", str(photos), "--index", str(own), *model_args, "--json"]
    first = runner.invoke(main, args)
    (own / "uploads").mkdir(exist_ok=True)
    photo(60).save(own / "uploads" / "query.jpg")
    (own / "thumbs" / "256").mkdir(parents=True)
    photo(61).save(own / "thumbs" / "256" / "ab.jpg")
    other = photos / "old-index"  # somebody else's index, copied in
    with Index.open(other, create=True, **model_kwargs) as old:
        old.add(photos / "trip")
    photo(62).save(other / "upload.jpg")
    second = runner.invoke(main, args)

    assert first.exit_code == second.exit_code == 0, first.output + second.output
    assert json.loads(first.output)["indexed_total"] == 12
    report = json.loads(second.output)
    assert (report["indexed_total"], report["new"], report["failed"]) == (12, 0, [])
    with Index.open(own) as index:
        paths = {h.path for h in index.search("a photo", k=50)}
    assert not any(p.startswith((str(own), str(other))) for p in paths)


def test_an_index_folder_is_not_a_photo_folder(tmp_path: Path, photos: Path,
                                               model_kwargs: dict[str, str]) -> None:
    with _open(tmp_path, model_kwargs) as index:
        index.add(photos)
    with pytest.raises(PhotoFolderError, match="is a clipdex index"):
        Indexer.scan(tmp_path / "idx")


# -- a folder emptied since it was indexed --------------------------------------------

def test_an_emptied_folder_leaves_the_index(tmp_path: Path, photos: Path,
                                            model_kwargs: dict[str, str]) -> None:
    with _open(tmp_path, model_kwargs) as index:
        index.add(photos)
        for path in photos.rglob("*.jpg"):
            path.unlink()
        with pytest.raises(PhotoFolderError, match="contains no images"):
            Indexer.scan(photos)
        assert Indexer.scan(photos, allow_empty=True).files == []
        report = index.add(photos)
        assert (report.removed, report.indexed_total) == (12, 0)
        assert index.status().indexed == 0
