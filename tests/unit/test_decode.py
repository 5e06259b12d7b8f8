from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipdex.decode import load_image
from clipdex.errors import ImageDecodeError
from tests.images import write_edge_cases


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
