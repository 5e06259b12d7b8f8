"""When a photo was taken: its EXIF date at index time, for decoded and reused photos alike,
filled in once for photos indexed before dates were read; garbage dates fall back to mtime."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from clipdex import Index
from clipdex import indexer as indexer_module
from clipdex.decode import normalise_exif_date, read_taken_at
from clipdex.store.catalog import mtime_taken_at
from tests.images import photo

EXIF_IFD, ORIGINAL, DIGITIZED, DATETIME = 0x8769, 0x9003, 0x9004, 0x0132
MTIME = 1_500_000_000  # 2017-07-14, the files' mtime


def _save(path: Path, seed: int, fmt: str = "JPEG", **dates: str) -> Path:
    """A photo with EXIF dates (``original``, ``digitized``, ``datetime``), mtime MTIME."""
    exif = Image.Exif()
    for name, value in dates.items():
        tag = {"original": ORIGINAL, "digitized": DIGITIZED, "datetime": DATETIME}[name]
        if tag == DATETIME:
            exif[tag] = value
        else:
            exif.get_ifd(EXIF_IFD)[tag] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(seed, 160, 120).save(path, fmt, exif=exif.tobytes())  # bytes: PNG drops an Exif of only an IFD
    os.utime(path, (MTIME, MTIME))
    return path


@pytest.fixture()
def dated(tmp_path: Path) -> Path:
    folder = tmp_path / "dated"
    _save(folder / "original.jpg", 1, original="2019:07:14 18:30:05", datetime="2020:01:01 00:00:00")
    _save(folder / "digitized.jpg", 2, original="0000:00:00 00:00:00", digitized="2018:02:03 04:05:06")
    _save(folder / "datetime.jpg", 3, datetime="2016:12:24 20:00:00")
    _save(folder / "garbage.jpg", 4, original="2019:13:45 99:00:00", digitized="    :  :     :  :  ")
    _save(folder / "none.jpg", 5)
    _save(folder / "dated.png", 6, fmt="PNG", original="2015:05:05 05:05:05")
    return folder


EXPECTED = {
    "original.jpg": ("2019-07-14T18:30:05", "exif"),
    "digitized.jpg": ("2018-02-03T04:05:06", "exif"),
    "datetime.jpg": ("2016-12-24T20:00:00", "exif"),
    "garbage.jpg": (mtime_taken_at(MTIME * 10**9), "mtime-no-exif"),
    "none.jpg": (mtime_taken_at(MTIME * 10**9), "mtime-no-exif"),
    "dated.png": ("2015-05-05T05:05:05", "exif"),
}


def _dates(idx: Index, folder: Path) -> dict[str, tuple[str | None, str | None]]:
    return {Path(p).name: (f.taken_at, f.taken_source) for p, f in idx.store.files_under(str(folder)).items()}


@pytest.mark.parametrize(("value", "expected"), [
    ("2019:07:14 18:30:05", "2019-07-14T18:30:05"),
    ("2019:07:14 18:30:05\x00", "2019-07-14T18:30:05"),
    (b"2019:07:14 18:30:05", "2019-07-14T18:30:05"),
    ("2019-07-14T18:30:05", "2019-07-14T18:30:05"),
    ("0000:00:00 00:00:00", None),
    ("    :  :     :  :  ", None),
    ("2019:13:01 00:00:00", None),
    ("2019:02:30 00:00:00", None),
    ("2019:01:01 24:00:00", None),
    ("9999:01:01 00:00:00", None),
    ("", None),
    (None, None),
    ((2019, 7, 14), None),
])
def test_exif_dates_are_normalised_and_garbage_refused(value: object, expected: str | None) -> None:
    assert normalise_exif_date(value) == expected


def test_a_header_read_finds_the_date_without_decoding(dated: Path) -> None:
    for name, (taken, source) in EXPECTED.items():
        with open(dated / name, "rb") as f:
            assert read_taken_at(f, name) == (taken if source == "exif" else None), name
    assert read_taken_at(io.BytesIO(b"\xff\xd8\xff\xe1\x00"), "cut.jpg") is None  # truncated: no date
    assert read_taken_at(io.BytesIO(b"not an image at all"), "text.jpg") is None


def test_indexing_records_exif_dates_else_the_mtime(tmp_path: Path, dated: Path,
                                                    model_kwargs: dict[str, str]) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        idx.add(dated)
        assert _dates(idx, dated) == EXPECTED


def test_a_photo_reused_by_hash_gets_its_date_without_a_decode(
        tmp_path: Path, dated: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        idx.add(dated)
        shutil.copy(dated / "original.jpg", dated / "copy.jpg")
        shutil.copy(dated / "none.jpg", dated / "copy-none.jpg")

        def no_decoding(*args: object, **kwargs: object) -> None:
            raise AssertionError("a reused photo was decoded")

        monkeypatch.setattr(indexer_module, "load_image", no_decoding)
        report = idx.add(dated)
        assert (report.reused, report.encoded, report.failed) == (2, 0, [])
        dates = _dates(idx, dated)
        assert dates["copy.jpg"] == EXPECTED["original.jpg"]
        assert dates["copy-none.jpg"][1] == "mtime-no-exif"


def test_photos_indexed_before_dates_get_their_exif_date_once(
        tmp_path: Path, dated: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        idx.add(dated)
        with idx.store.transaction() as c:  # as migration 006 left an index made before
            c.execute("UPDATE files SET taken_source = 'mtime', taken_at = ?", (mtime_taken_at(MTIME * 10**9),))
        reads: list[str] = []
        real = indexer_module.read_taken_at

        def counted(source: object, name: str) -> str | None:
            reads.append(Path(name).name)
            return real(source, name)  # type: ignore[arg-type]

        monkeypatch.setattr(indexer_module, "read_taken_at", counted)
        report = idx.add(dated)
        assert (report.unchanged, report.encoded, report.dated) == (6, 0, 4)
        assert sorted(reads) == sorted(EXPECTED)  # each header read once
        assert _dates(idx, dated) == EXPECTED
        reads.clear()
        again = idx.add(dated)
        assert (again.dated, reads) == (0, [])  # never read again


class _StopAfterOneDateBatch:
    """The indexer's Progress: Ctrl-C once the first batch of dates is counted."""

    def __init__(self) -> None:
        self.total = 0
        self.advanced: list[int] = []

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, count: int) -> None:
        self.advanced.append(count)
        raise KeyboardInterrupt


def test_reading_the_dates_shows_progress_and_stops_on_ctrl_c_keeping_what_it_read(
        tmp_path: Path, dated: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """At a million imported photos this pass takes minutes: it must not look hung."""
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        idx.add(dated)
        with idx.store.transaction() as c:
            c.execute("UPDATE files SET taken_source = 'mtime', taken_at = ?", (mtime_taken_at(MTIME * 10**9),))
        monkeypatch.setattr(indexer_module, "DATE_BATCH", 4)
        stop = _StopAfterOneDateBatch()
        with caplog.at_level("INFO", logger="clipdex"), pytest.raises(KeyboardInterrupt):
            idx.add(dated, progress=stop)
        assert "reading the EXIF dates of 6 photos indexed before (once)" in caplog.text
        assert (stop.total, stop.advanced) == (6, [4])  # nothing to encode: the dates are the work
        left = [Path(p).name for (p,) in idx.store.conn.execute("SELECT path FROM files WHERE taken_source = 'mtime'")]
        assert len(left) == 2  # the first batch was kept
        report = idx.add(dated)
        assert report.dated == sum(1 for name in left if EXPECTED[name][1] == "exif")  # only the rest read
        assert _dates(idx, dated) == EXPECTED


def test_a_changed_photo_gets_its_new_date(tmp_path: Path, dated: Path, model_kwargs: dict[str, str]) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        idx.add(dated)
        _save(dated / "none.jpg", 5, original="2001:01:01 01:01:01")
        os.utime(dated / "none.jpg", (time.time(), time.time()))
        report = idx.add(dated)
        assert report.changed == 1
        assert _dates(idx, dated)["none.jpg"] == ("2001-01-01T01:01:01", "exif")
