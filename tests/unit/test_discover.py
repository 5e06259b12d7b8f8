from __future__ import annotations

import os
from pathlib import Path

from clipdex.decode import supported_extensions
from clipdex.discover import walk


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
    bad_name = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"
    with open(bad_name, "wb") as f:
        f.write(b"x")

    result = walk(str(tmp_path), supported_extensions())

    assert [Path(f.path).name for f in result.files] == ["one.JPG", "two.png"]
    reasons = {Path(p.path).name: p.reason for p in result.problems}
    assert "broken symlink" in reasons["broken.jpg"]
    assert "symlink loop" in reasons["loop.jpg"]
    assert "not valid UTF-8" in reasons["caf\\xe9.jpg"]


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
