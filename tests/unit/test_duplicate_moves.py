"""clipdex.duplicate_moves on a small index (tiny model, a fixed rule): a crash in the middle of a
move loses no photo (undo puts every one back in the index), partial copies are cleaned, targets of
one run never collide, a changed keeper keeps its group in place, burst frames stay unless asked,
files moved back by hand count as put back, records restored after a compaction are counted, and
keeper marks hold the content they were made on."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from clipdex import Index, duplicate_moves
from clipdex.duplicate_moves import (
    PARTIAL_SUFFIX,
    _move_file,
    _target,
    check_destination,
    move_extras,
    plan_moves,
    read_journal,
    undo_moves,
)
from clipdex.duplicates import DuplicateGroup, DuplicateRule, find_duplicates
from clipdex.errors import DuplicatesError
from tests.images import photo, write_photos_with_copies

RULE = DuplicateRule(0.9999, 0.9, 8)  # the tiny model: copies > 0.9999, different photos <= 0.998


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Six photos and three copies: an exact copy of photo 0, a small PNG of 1, a recompressed JPEG of 2."""
    photos = write_photos_with_copies(tmp_path / "photos", 6)
    return photos


@pytest.fixture()
def index(tmp_path: Path, folder: Path, model_kwargs: dict[str, str]) -> Iterator[Index]:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(folder)
        yield index


def _names(index: Index) -> set[str]:
    return {p.rsplit("/", 1)[-1] for p in index.indexed_paths()}


def test_a_crash_in_the_middle_loses_no_photo(index: Index, folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    groups = find_duplicates(index, RULE).groups
    assert sum(len(g.extras) for g in groups) == 3
    calls = []

    def crash_on_second(source: str, target: str) -> None:
        calls.append(source)
        if len(calls) == 2:
            raise RuntimeError("the power went out")
        _move_file(source, target)

    monkeypatch.setattr(duplicate_moves, "_move_file", crash_on_second)
    with pytest.raises(RuntimeError):
        move_extras(index, groups, tmp_path / "aside")
    monkeypatch.undo()
    # the moved one left the index, the two not moved are still there (nothing forgotten before its move)
    assert len(_names(index)) == 8
    entries = read_journal(index)
    assert entries[0]["op"] == "plan" and len(entries[0]["moves"]) == 3  # every record, before any move
    back = undo_moves(index)
    assert len(back.moved) == 1 and back.already_back == 2
    assert len(_names(index)) == 9 and {"small-1.png", "same-0.jpg", "recompressed-2.jpg"} <= _names(index)
    assert not any(p.is_file() for p in (tmp_path / "aside").rglob("*"))


def test_a_crash_before_the_index_forgets_is_undone_too(index: Index, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """As after kill -9: files moved, the index never told (its records stay), and undo copes."""
    groups = find_duplicates(index, RULE).groups
    monkeypatch.setattr(duplicate_moves, "_forget", lambda index, paths: paths.clear())
    move_extras(index, groups, tmp_path / "aside")
    monkeypatch.undo()
    assert len(_names(index)) == 9
    back = undo_moves(index)
    assert len(back.moved) == 3 and len(_names(index)) == 9


def test_a_copy_across_file_systems_leaves_no_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "a.jpg"
    source.write_bytes(b"x" * 1000)
    target = tmp_path / "out" / "a.jpg"
    real_rename = os.rename

    def rename(a: str, b: str) -> None:
        if not str(a).endswith(PARTIAL_SUFFIX):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(a, b)

    def copy_fails(a: str, b: str) -> None:
        Path(b).write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(duplicate_moves.os, "rename", rename)
    monkeypatch.setattr(duplicate_moves.shutil, "copy2", copy_fails)
    with pytest.raises(OSError):
        _move_file(str(source), str(target))
    assert source.exists() and not target.exists() and not Path(str(target) + PARTIAL_SUFFIX).exists()
    monkeypatch.undo()
    monkeypatch.setattr(duplicate_moves.os, "rename", rename)
    _move_file(str(source), str(target))  # a whole copy: renamed into place, the source removed
    assert target.read_bytes() == b"x" * 1000 and not source.exists()


def test_targets_of_one_run_never_collide() -> None:
    reserved: set[str] = set()
    roots = ["/a/photos", "/b/photos"]
    first = _target("/dest", "/a/photos/x.jpg", roots, reserved)
    second = _target("/dest", "/b/photos/x.jpg", roots, reserved)
    assert first == "/dest/photos/x.jpg" and second == "/dest/photos/x.dup1.jpg"


def test_a_changed_keeper_keeps_its_group_in_place(index: Index, folder: Path, tmp_path: Path) -> None:
    groups = find_duplicates(index, RULE).groups
    changed = next(g for g in groups if g.keeper.path.endswith("photo-001.jpg"))
    keeper = Path(changed.keeper.fs_path)
    keeper.write_bytes(keeper.read_bytes() + b"edited")
    report = move_extras(index, groups, tmp_path / "aside")
    assert len(report.moved) == 2
    assert any(p.endswith("small-1.png") and "its keeper" in why for p, why in report.skipped)
    assert (folder / "copies" / "small-1.png").exists()


def test_burst_frames_move_only_when_asked(index: Index, tmp_path: Path) -> None:
    groups = find_duplicates(index, RULE).groups
    bursts = [DuplicateGroup(g.id, [g.members[0]] + [replace(m, why=("time",)) for m in g.members[1:]])
              for g in groups]
    plan = plan_moves(index, bursts, tmp_path / "aside")
    assert not plan.moves and all("burst frame" in why for _, why in plan.skipped)
    assert len(plan_moves(index, bursts, tmp_path / "aside", include_bursts=True).moves) == 3


def test_a_destination_through_a_link_into_the_photos_is_refused(index: Index, folder: Path,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(folder)
    with pytest.raises(DuplicatesError, match="is inside the indexed folder"):
        check_destination(index, tmp_path / "link" / "dupes")
    with pytest.raises(DuplicatesError, match="inside the index folder"):
        check_destination(index, index.path / "x")


def test_files_moved_back_by_hand_count_as_put_back(index: Index, folder: Path, tmp_path: Path) -> None:
    move_extras(index, find_duplicates(index, RULE).groups, tmp_path / "aside")
    moved = tmp_path / "aside" / "photos" / "copies" / "small-1.png"
    shutil.move(str(moved), str(folder / "copies" / "small-1.png"))  # by hand (mv keeps the time)
    back = undo_moves(index)
    assert len(back.moved) == 2 and back.already_back == 1
    assert len(_names(index)) == 9  # its record is back too


def test_undo_after_a_compaction_says_which_records_lack_a_vector(index: Index, tmp_path: Path) -> None:
    report = move_extras(index, find_duplicates(index, RULE).groups, tmp_path / "aside")
    hashes = [m["file"]["content_hash"] for m in read_journal(index)[0]["moves"]]
    with index.lock, index.store.transaction() as c:  # what compaction does to vectors no photo uses
        c.executemany("DELETE FROM embeddings WHERE content_hash = ?", [(h,) for h in hashes])
    back = undo_moves(index)
    assert len(back.moved) == len(report.moved) == 3
    assert sorted(p.rsplit("/", 1)[-1] for p in back.without_vector) == ["recompressed-2.jpg", "same-0.jpg",
                                                                         "small-1.png"]


def test_a_keeper_mark_holds_the_content_it_was_made_on(index: Index, folder: Path) -> None:
    from clipdex.duplicate_moves import mark_keeper

    small = next(f for f in index.store.files_by_ids(range(1, 20)).values() if f.path.endswith("small-1.png"))
    mark_keeper(index, small.id)
    assert index.store.keepers() == {small.path}
    photo(4).save(folder / "copies" / "small-1.png")  # another photo under its name
    index.add(folder)
    assert index.store.keepers() == set()  # the mark was on the old content


def test_the_journal_is_json_lines(index: Index, tmp_path: Path) -> None:
    move_extras(index, find_duplicates(index, RULE).groups, tmp_path / "aside")
    lines = (index.path / "duplicates-journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["op"] for line in lines] == ["plan", "move", "move", "move", "end"]
