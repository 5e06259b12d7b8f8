from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipdex.decode import supported_extensions
from clipdex.discover import display_path, walk
from clipdex.store.catalog import CATALOG_NAME


def _touch(path: bytes | Path, data: bytes = b"x") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_walk_finds_images_recursively_and_reports_problems(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "one.JPG").write_bytes(b"x")
    (tmp_path / "two.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "three.jpg").write_bytes(b"x")
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "a" / "up").symlink_to(tmp_path)  # a folder loop

    result = walk(str(tmp_path), supported_extensions())

    assert [Path(f.path).name for f in result.files] == ["one.JPG", "two.png"]
    reasons = {Path(p.path).name: p.reason for p in result.problems}
    assert "broken symlink" in reasons["broken.jpg"]
    assert "symlink loop" in reasons["loop.jpg"]


def test_a_name_that_is_not_utf8_is_found_with_its_exact_bytes(tmp_path: Path) -> None:
    real = os.fsencode(str(tmp_path)) + b"/\xe9t\xe9.jpg"  # Latin-1 "été.jpg"
    _touch(real)

    [entry] = walk(str(tmp_path), supported_extensions()).files

    assert entry.path == f"{tmp_path}/\\xe9t\\xe9.jpg"
    assert os.fsencode(entry.fs_path) == real
    assert entry.raw_path == real
    entry.path.encode("utf-8")  # the display form is text
    with open(entry.fs_path, "rb") as f:
        assert f.read() == b"x"


def test_files_below_a_folder_whose_name_is_not_utf8(tmp_path: Path) -> None:
    folder = os.fsencode(str(tmp_path)) + b"/Vacances \xe0 Nice"
    os.mkdir(folder)
    _touch(folder + b"/plage.jpg")
    _touch(folder + b"/ch\xe2teau.jpg")

    files = walk(str(tmp_path), supported_extensions()).files

    assert [f.path for f in files] == [f"{tmp_path}/Vacances \\xe0 Nice/ch\\xe2teau.jpg",
                                       f"{tmp_path}/Vacances \\xe0 Nice/plage.jpg"]
    assert all(os.path.isfile(f.fs_path) for f in files)
    assert all(f.raw_path is not None for f in files)


def test_a_valid_utf8_name_is_its_own_display_form(tmp_path: Path) -> None:
    (tmp_path / "été 🌅.jpg").write_bytes(b"x")
    [entry] = walk(str(tmp_path), supported_extensions()).files
    assert entry.path == entry.fs_path == str(tmp_path / "été 🌅.jpg")
    assert entry.raw_path is None


@pytest.mark.parametrize("name, shown", [
    (b"-rf.jpg", "-rf.jpg"),
    (b"100% [summer] \\ back.jpg", "100% [summer] \\ back.jpg"),
    (b"two\nlines.jpg", "two\\x0alines.jpg"),
    (b"\x1b[31mred.jpg", "\\x1b[31mred.jpg"),
    (b"tab\there.jpg", "tab\\x09here.jpg"),
    (b"L" * 251 + b".jpg", "L" * 251 + ".jpg"),  # 255 bytes, the longest name Linux allows
])
def test_odd_names_are_found_and_shown_safely(tmp_path: Path, name: bytes, shown: str) -> None:
    _touch(os.fsencode(str(tmp_path)) + b"/" + name)

    [entry] = walk(str(tmp_path), supported_extensions()).files

    assert entry.path == f"{tmp_path}/{shown}"
    assert os.fsencode(entry.fs_path) == os.fsencode(str(tmp_path)) + b"/" + name
    assert not any(ord(c) < 32 for c in entry.path)  # nothing a terminal would act on


def test_display_path() -> None:
    assert display_path("/a/b.jpg") == "/a/b.jpg"
    assert display_path(os.fsdecode(b"/a/\xff.jpg")) == "/a/\\xff.jpg"
    assert display_path("/a/\x7f\x85.jpg") == "/a/\\x7f\\x85.jpg"
    assert display_path("/a/tab\t.jpg") == "/a/tab\\x09.jpg"


def test_display_path_shortcut_changes_nothing() -> None:
    """Printable paths skip the escaping: for characters printable or not, and the surrogate
    escapes of bytes that are not UTF-8, the result is what the escaping alone gives."""
    import re

    control = re.compile("[\x00-\x1f\x7f-\x9f]")

    def escaped(path: str) -> str:  # display_path without its shortcut
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            path = os.fsencode(path).decode("utf-8", "backslashreplace")
        return control.sub(lambda m: f"\\x{ord(m.group()):02x}", path)

    chars = [*range(0x3000), *range(0xDC80, 0xDD00), 0xFEFF, 0xFFFD, 0x1F600, 0xE0001, 0x10FFFF]
    for c in chars:
        path = f"/photos/{chr(c)}.jpg"
        assert display_path(path) == escaped(path), hex(c)
    assert display_path("") == "" and display_path("/Urlaub Köln/café 1.jpg") == "/Urlaub Köln/café 1.jpg"


def test_two_files_that_would_share_a_display_name(tmp_path: Path) -> None:
    (tmp_path / "caf\\xe9.jpg").write_bytes(b"x")  # a real backslash in the name
    _touch(os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg")

    result = walk(str(tmp_path), supported_extensions())

    assert [f.fs_path for f in result.files] == [str(tmp_path / "caf\\xe9.jpg")]
    [problem] = result.problems
    assert problem.path == str(tmp_path / "caf\\xe9.jpg")
    assert "rename one of them" in problem.reason
    assert os.fsencode(problem.fs_path).endswith(b"caf\xe9.jpg")


def test_clipdex_index_folders_are_never_walked(tmp_path: Path) -> None:
    (tmp_path / "keep.jpg").write_bytes(b"x")
    index = tmp_path / "clipdex-index"  # not hidden: only its contents say what it is
    (index / "vectors").mkdir(parents=True)
    (index / CATALOG_NAME).write_bytes(b"")
    (index / "uploads").mkdir()
    (index / "uploads" / "query.jpg").write_bytes(b"x")
    (index / "thumbs.jpg").write_bytes(b"x")
    lookalike = tmp_path / "notes"  # a catalog.sqlite alone is somebody else's file
    lookalike.mkdir()
    (lookalike / CATALOG_NAME).write_bytes(b"")
    (lookalike / "scan.jpg").write_bytes(b"x")

    result = walk(str(tmp_path), supported_extensions())

    assert [Path(f.path).name for f in result.files] == ["keep.jpg", "scan.jpg"]
    assert result.skipped_dirs == [str(index)]


def test_skip_leaves_out_a_folder_however_it_is_reached(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "new-index").mkdir(parents=True)  # an index that has no vectors/ yet
    (photos / "new-index" / "upload.jpg").write_bytes(b"x")
    (photos / "a.jpg").write_bytes(b"x")
    (photos / "link").symlink_to(photos / "new-index")

    result = walk(str(photos), supported_extensions(), skip=[photos / "new-index"])

    assert [Path(f.path).name for f in result.files] == ["a.jpg"]


def test_unreadable_folder_is_reported(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "ok.jpg").write_bytes(b"x")
    locked.chmod(0)
    try:
        result = walk(str(tmp_path), supported_extensions())
    finally:
        locked.chmod(0o755)
    if os.geteuid() == 0:  # root reads everything; nothing to report
        return
    assert result.unreadable_dirs == [str(locked)]
