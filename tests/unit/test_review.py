"""Review grids and contact sheets: sized by what they draw, capped, opened by the real path."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdex.classify import Classification
from clipdex.errors import ClipdexError, LabelSetError, OutputError
from clipdex.grid import (
    MAX_GRID_PIXELS,
    GridError,
    Row,
    Tile,
    check_grid_path,
    draw_grid,
    draw_rows,
    sheet_size,
)
from clipdex.labels import make_label_set
from clipdex.review import MAX_PER_LABEL, ReviewOptionError, draw_review, review_rows
from tests.images import photo


def classification(folder: Path, count: int = 6) -> Classification:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"p{i}.jpg"
        photo(i, 96, 72).save(path)
        paths.append(str(path))
    probs = np.array([[0.9 - 0.1 * i, 0.1 + 0.1 * i] for i in range(count)], dtype=np.float32)
    predicted = ["indoor" if p[0] >= 0.5 else "outdoor" for p in probs]
    return Classification(label_set=make_label_set("taken_space", ["indoor", "outdoor"]),
                          file_ids=list(range(1, count + 1)), paths=paths, probs=probs, predicted=predicted,
                          confidence=probs.max(axis=1))


def test_a_huge_per_label_on_a_small_index_draws_a_small_image(tmp_path: Path) -> None:
    result = classification(tmp_path / "photos")
    tracemalloc.start()
    draw_review(result, tmp_path / "big.png", per_label=MAX_PER_LABEL, thumb=32)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    draw_review(result, tmp_path / "small.png", per_label=5, thumb=32)
    big, small = Image.open(tmp_path / "big.png"), Image.open(tmp_path / "small.png")
    assert big.size == small.size
    assert big.width == 8 + 5 * (32 + 8)  # the fullest row (indoor) has 5 photos; 500 were allowed
    assert peak < 20_000_000


def test_per_label_and_seed_are_checked(tmp_path: Path) -> None:
    result = classification(tmp_path / "photos", 3)
    for per_label in (0, -1, MAX_PER_LABEL + 1, 100_000):
        with pytest.raises(ReviewOptionError, match=f"per_label {per_label} is not between 1 and {MAX_PER_LABEL}"):
            review_rows(result, per_label=per_label)
    with pytest.raises(ReviewOptionError, match="seed -1"):
        review_rows(result, seed=-1)
    with pytest.raises(ReviewOptionError, match="mode 'best'") as info:
        review_rows(result, mode="best")
    # The options are wrong, not the label set; still a ClipdexError (and a ValueError) for callers.
    assert not isinstance(info.value, LabelSetError)
    assert isinstance(info.value, ClipdexError) and isinstance(info.value, ValueError)
    assert not (tmp_path / "x.png").exists()


def test_rows_follow_the_mode_and_the_seed(tmp_path: Path) -> None:
    result = classification(tmp_path / "photos")
    least = review_rows(result, per_label=2, mode="least-confident")
    assert [os.path.basename(t.path) for t in least[0].tiles] == ["p4.jpg", "p3.jpg"]
    most = review_rows(result, per_label=2, mode="most-confident")
    assert [os.path.basename(t.path) for t in most[0].tiles] == ["p0.jpg", "p1.jpg"]
    assert review_rows(result, seed=5) == review_rows(result, seed=5)
    assert least[0].title == "taken_space = indoor   (5 photos, least-confident)"


def test_an_oversized_sheet_is_refused_before_it_is_allocated(tmp_path: Path) -> None:
    tiles = [Tile("/nowhere.jpg", "x")] * 10_000
    width, height = sheet_size([Row("", tiles[i:i + 100]) for i in range(0, 10_000, 100)], thumb=224)
    assert width * height > MAX_GRID_PIXELS
    with pytest.raises(GridError) as info:
        draw_grid(tiles, tmp_path / "search.jpg")  # a search grid of 10,000 results
    message = str(info.value)
    assert "23,208 x 27,208 pixels" in message and "fewer photos" in message
    assert isinstance(info.value, OutputError) and isinstance(info.value, ClipdexError)
    with pytest.raises(GridError, match="65,500 pixels a side"):
        draw_rows([Row("", [Tile("/nowhere.jpg", "x")] * 400)], tmp_path / "wide.jpg", thumb=224)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, words", [
    ({"thumb": 0}, ["thumbnail size 0"]),
    ({"thumb": 5000}, ["thumbnail size 5000"]),
    ({"columns": 0}, ["columns 0"]),
])
def test_grid_options_are_checked(tmp_path: Path, kwargs: dict, words: list[str]) -> None:
    with pytest.raises(GridError) as info:
        draw_grid([Tile("/nowhere.jpg", "x")], tmp_path / "g.png", **kwargs)
    for word in words:
        assert word in str(info.value)


def test_an_unknown_image_type_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"\.txt is not an image type.*\.jpg, \.png or \.webp"):
        draw_grid([Tile("/nowhere.jpg", "x")], tmp_path / "g.txt")


@pytest.mark.parametrize("name, image_format", [("a.jpg", "JPEG"), ("a.JPEG", "JPEG"), ("a.png", "PNG"),
                                                ("a.webp", "WEBP")])
def test_the_grid_path_check_names_the_format(name: str, image_format: str) -> None:
    assert check_grid_path(name) == image_format


@pytest.mark.parametrize("name", ["a.txt", "a", "a.csv", "dir/a."])
def test_the_grid_path_check_is_a_grid_error_that_names_the_option(name: str) -> None:
    with pytest.raises(GridError) as info:
        check_grid_path(name, "--heatmap")
    message = str(info.value)
    assert message.startswith(f"--heatmap {name}: ") and "End the name in .jpg, .png or .webp." in message
    assert "folder you can write to" not in message  # the type is wrong, not the folder


def test_tiles_open_the_real_path_and_show_the_display_name(tmp_path: Path) -> None:
    real = os.fsdecode(b"caf\xe9.jpg")  # a name that is not valid UTF-8
    try:
        photo(1, 96, 72).save(tmp_path / real, format="JPEG")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    shown = str(tmp_path / "caf\\xe9.jpg")
    result = classification(tmp_path / "photos", 2)
    result.paths[0] = shown
    result.fs_paths = [str(tmp_path / real), result.paths[1]]
    rows = review_rows(result, per_label=4)
    tile = rows[0].tiles[0]
    assert tile.path == shown and tile.fs_path == str(tmp_path / real) and "caf\\xe9.jpg" in tile.caption
    out = draw_rows([Row("", [tile])], tmp_path / "one.png", thumb=32)
    pixel = Image.open(out).convert("RGB").getpixel((8 + 16, 8 + 16))
    assert pixel != (210, 210, 210)  # the photo was drawn, not the grey "missing" tile
    missing = draw_rows([Row("", [Tile(shown, "x")])], tmp_path / "two.png", thumb=32)
    assert Image.open(missing).convert("RGB").getpixel((8 + 16, 8 + 16)) == (210, 210, 210)


def test_a_grid_that_cannot_be_written_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "taken.png"
    folder.mkdir()  # the output name is a folder: the rename onto it fails
    with pytest.raises(OutputError, match="cannot be written"):
        draw_grid([Tile("/nowhere.jpg", "x")], folder, thumb=32)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"] and not list(folder.iterdir())
