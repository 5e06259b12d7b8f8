from __future__ import annotations

import errno
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from clipdex.decode import ImageTooLarge, ImageUnreadable, check_image, load_image, open_image_file
from clipdex.errors import ImageDecodeError
from tests.images import gradient, png_claiming, write_edge_cases


@pytest.fixture()
def edge(tmp_path: Path) -> dict[str, Path]:
    return write_edge_cases(tmp_path / "edge")


def _load(path: Path, **kw: object):
    return load_image(path.read_bytes(), str(path), **kw)


@pytest.mark.parametrize("name", ["ok.jpg", "cmyk.jpg", "sixteen.png", "palette.png", "transparent.png",
                                  "gray.png", "animated.gif", "mislabelled.jpg", "pic.webp"])
def test_every_mode_becomes_rgb(edge: dict[str, Path], name: str) -> None:
    image = _load(edge[name])
    assert image.mode == "RGB"
    assert image.size == (96, 64)


def test_sixteen_bit_is_scaled_not_clipped(edge: dict[str, Path]) -> None:
    pixels = np.asarray(_load(edge["sixteen.png"]))[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels.mean() < 155  # a full ramp, not a wall of 255


def test_transparency_is_white_not_black(edge: dict[str, Path]) -> None:
    pixels = np.asarray(_load(edge["transparent.png"]))
    assert pixels.min() == 255


def test_exif_orientation_is_applied(edge: dict[str, Path]) -> None:
    assert _load(edge["rotated.jpg"]).size == (64, 96)


def test_reduced_decode_keeps_both_sides_above_the_draft_size(tmp_path: Path) -> None:
    from tests.images import gradient

    path = tmp_path / "big.jpg"
    gradient(4000, 3000).save(path)
    image = _load(path, draft_size=448)
    assert image.size == (1000, 750)
    assert _load(path).size == (4000, 3000)


@pytest.mark.parametrize("name, words", [
    ("truncated.jpg", "truncated"),
    ("empty.jpg", "empty file"),
    ("text.jpg", "not an image"),
    ("bomb.png", "--max-megapixels"),
])
def test_bad_files_raise_a_reason(edge: dict[str, Path], name: str, words: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        _load(edge[name])
    assert words in info.value.reason
    assert info.value.path.endswith(name)


def test_megapixel_limit_is_configurable(edge: dict[str, Path]) -> None:
    with pytest.raises(ImageDecodeError, match="megapixel"):
        _load(edge["ok.jpg"], max_megapixels=0.001)


# -- every failure is an ImageDecodeError ------------------------------------------------

def _jpeg_claiming_width(width: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` pixels across."""
    from tests.images import gradient

    buffer = io.BytesIO()
    gradient(96, 64).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def test_every_edge_case_decodes_or_raises_a_decode_error(edge: dict[str, Path]) -> None:
    for name, path in edge.items():
        for load in (_load, lambda p: open_image_file(str(p))):
            try:
                image = load(path)
            except ImageDecodeError as e:
                assert e.reason and e.path == str(path), name
            else:
                assert image.mode == "RGB", name


def test_a_png_claiming_60000_squared_names_a_limit_that_admits_it() -> None:
    with pytest.raises(ImageTooLarge) as info:
        load_image(png_claiming(60_000, 60_000), "huge.png")
    assert info.value.needed == 3600
    assert "--max-megapixels 3600" in info.value.reason
    assert "60000x60000" in info.value.reason or "3,600" in info.value.reason


def test_the_limit_named_in_the_message_admits_the_image(edge: dict[str, Path]) -> None:
    with pytest.raises(ImageTooLarge) as info:
        _load(edge["ok.jpg"], max_megapixels=0.001)
    assert info.value.needed == 1 and "--max-megapixels 1" in info.value.reason
    assert _load(edge["ok.jpg"], max_megapixels=info.value.needed).size == (96, 64)


def test_a_raised_limit_gets_past_pillows_own_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    data = png_claiming(20_000, 10_000)  # 200 megapixels: Pillow alone refuses it
    with pytest.raises(ImageTooLarge):
        check_image(io.BytesIO(data), "big.png")
    assert check_image(io.BytesIO(data), "big.png", max_megapixels=250) == ("PNG", 20_000, 10_000)
    with pytest.raises(ImageDecodeError) as info:  # admitted, then found to hold no pixels
        load_image(data, "big.png", max_megapixels=250)
    assert not isinstance(info.value, ImageTooLarge)


def test_a_jpeg_wider_than_jpeg_allows_is_a_decode_error() -> None:
    with pytest.raises(ImageDecodeError) as info:
        load_image(_jpeg_claiming_width(65_535), "wide.jpg")
    assert not isinstance(info.value, ImageTooLarge)


def test_a_side_longer_than_65500_within_the_pixel_limit_decodes(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    Image.new("RGB", (70_000, 2), (10, 20, 30)).save(path)
    image = open_image_file(str(path))
    assert image.size == (70_000, 2) and image.mode == "RGB"


@pytest.mark.parametrize("error", [
    struct.error("unpack requires a buffer"), ValueError("bad"), SyntaxError("not a TIFF"),
    EOFError(), MemoryError(), OSError("broken data stream"), KeyError(3), ZeroDivisionError(),
    Image.DecompressionBombError("Image size (999000000 pixels) exceeds limit"),
    Image.DecompressionBombWarning("Image size (999000000 pixels) exceeds limit"),
])
@pytest.mark.parametrize("stage", ["open", "load"])
def test_every_pillow_failure_becomes_a_decode_error(edge: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                     error: BaseException, stage: str) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    if stage == "open":
        monkeypatch.setattr(Image, "open", fail)
    else:  # the lazy decode, after the header was accepted
        monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(ImageDecodeError) as info:
        _load(edge["ok.jpg"])
    assert info.value.reason
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        assert isinstance(info.value, ImageTooLarge) and info.value.needed == 999


def test_an_os_read_error_is_unreadable_not_corrupt(edge: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(ImageUnreadable, match="Input/output error"):
        open_image_file(str(edge["ok.jpg"]))


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ImageUnreadable, match="No such file"):
        open_image_file(str(tmp_path / "gone.jpg"))


# -- a huge file is never read whole --------------------------------------------------

def _sparse(path: Path, head: bytes, size: int = 3 << 30) -> Path:
    path.write_bytes(head)
    os.truncate(path, size)
    return path


def test_check_image_reads_only_the_header(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "huge.jpg", _jpeg_claiming_width(96))
    with open(path, "rb") as f:
        assert check_image(f, str(path)) == ("JPEG", 96, 64)
        assert f.tell() < 1 << 20


def test_a_multi_gigabyte_file_is_opened_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    from tests.images import gradient

    buffer = io.BytesIO()
    gradient(400, 300).save(buffer, "JPEG")
    photo = _sparse(tmp_path / "photo-then-zeros.jpg", buffer.getvalue())
    noise = _sparse(tmp_path / "noise.tif", np.random.default_rng(0).bytes(4096))
    tracemalloc.start()
    try:
        assert open_image_file(str(photo)).size == (400, 300)  # trailing data is ignored
        with pytest.raises(ImageDecodeError, match="not an image"):
            open_image_file(str(noise))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # the files are 3 GB each


def test_a_start_marker_followed_by_junk_is_refused_after_a_bounded_read(tmp_path: Path) -> None:
    """Pillow scans a JPEG for its next marker one byte per read: a JPEG start marker
    followed by gigabytes of zeros took minutes. The header search is bounded."""
    from clipdex.decode import HEADER_READS

    path = tmp_path / "junk.jpg"
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + b"\x00" * 16)
        f.truncate(3 * 2**30)  # sparse: 3 GB on paper, nothing on disk
    with open(path, "rb") as f, pytest.raises(ImageDecodeError, match="no image header") as info:
        check_image(f, str(path))
    assert f"{HEADER_READS:,} reads" in str(info.value)
    with pytest.raises(ImageDecodeError, match="no image header"):
        open_image_file(str(path))


def test_an_image_with_large_metadata_segments_still_opens(tmp_path: Path) -> None:
    """The header budget leaves room for real headers: EXIF plus a 1 MB ICC profile."""
    path = tmp_path / "big-icc.jpg"
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: a 60 KB APP1 segment
    gradient(320, 200).save(path, "JPEG", exif=exif.tobytes(), icc_profile=b"\x00" * 2**20)
    image = open_image_file(str(path))
    assert image.size == (320, 200) and image.mode == "RGB"
