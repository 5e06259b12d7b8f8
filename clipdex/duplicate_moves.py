"""Duplicates' extras moved aside and back, and the keepers people mark.

clipdex never deletes a photo. :func:`move_extras` moves the photos of each group found by
:func:`clipdex.duplicates.find_duplicates` that are not kept into a folder (their layout kept,
nothing overwritten). Before anything moves, one "plan" entry in the index folder's journal
(fsync'ed) holds every photo's record and target; each photo leaves the index only after its move
is on the disk, so a crash at any point leaves every photo either in the index or findable by
:func:`undo_moves`, which replays the last run backwards (and takes back what a crash left half
done). :func:`mark_keeper` records the photo a person chose to keep (the web page's mark), which a
move never touches.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.duplicates import DuplicateGroup, Progress
from clipdex.errors import DuplicatesError

if TYPE_CHECKING:
    from clipdex.index import Index
    from clipdex.store.catalog import FileRecord

log = logging.getLogger(__name__)

JOURNAL_NAME = "duplicates-journal.jsonl"  # in the index folder: every move, fsync'ed before it happens
PARTIAL_SUFFIX = ".clipdex-partial"  # a copy across file systems before it is renamed into place
FORGET_BATCH = 64  # moved photos the index forgets in one transaction (each only after its move)
MTIME_SLACK_NS = 2_000_000_000  # a file copied back by hand may keep its time only to 2 s (FAT, some tools)

# -- keepers -----------------------------------------------------------------------------------
def mark_keeper(index: "Index", file_id: int, keep: bool = True) -> "FileRecord":
    """Mark photo ``file_id`` to keep (or take the mark away): ``--move-extras`` never moves it, and
    its group's other photos are the extras. The mark holds the photo's content hash: once the file
    at its path holds other content (and is indexed again), the mark no longer counts. Returns the
    photo (:class:`PhotoNotFound` for an id the index lacks)."""
    record = index.photo(file_id)
    index.store.require_writable()
    with index.lock:
        index.store.set_keeper(record.path, keep, record.content_hash or "")
    return record


# -- moving extras aside, and back -------------------------------------------------------------
@dataclass(frozen=True)
class MoveReport:
    """What :func:`move_extras` or :func:`undo_moves` did (or, for a dry run, would do)."""

    moved: list[tuple[str, str]]  # (from, to)
    journal: str
    run: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    without_vector: list[str] = field(default_factory=list)  # undo: records given back with no vector
    already_back: int = 0  # undo: files found at their origin already (moved back by hand)


@dataclass(frozen=True)
class MovePlan:
    """Where each extra would go, and what stays (with why): what a dry run shows and a move does."""

    dest: str
    moves: list[tuple["FileRecord", str]]  # (record, target)
    skipped: list[tuple[str, str]]  # (path, why)


def journal_path(index: "Index") -> Path:
    """The index's move journal (JSON lines): each run's plan, its moves, its end, and its undo."""
    return index.path / JOURNAL_NAME


def _inside(path: str, folder: str) -> bool:
    folder = folder.rstrip(os.sep) + os.sep
    return path == folder.rstrip(os.sep) or path.startswith(folder)


def check_destination(index: "Index", dest: str | os.PathLike[str]) -> str:
    """``dest`` as an absolute path, if photos may be moved there: not inside an indexed folder nor
    the index (real paths compared, so a symbolic link into a photo folder is refused too).
    Raises :class:`DuplicatesError` otherwise."""
    target_dir = os.path.abspath(os.path.expanduser(os.fspath(dest)))
    real = os.path.realpath(target_dir)
    for root in index.store.roots():
        if "://" in root:
            continue
        if _inside(target_dir, root) or _inside(real, os.path.realpath(root)):
            raise DuplicatesError(f"--move-extras {target_dir}", f"is inside the indexed folder {root}"
                                  + (f" (it leads to {real})" if real != target_dir else "")
                                  + ", so the next `clipdex index` would index the moved photos again",
                                  "Choose a folder outside every indexed folder (`clipdex status` lists them).")
    if _inside(target_dir, str(index.path)) or _inside(real, os.path.realpath(index.path)):
        raise DuplicatesError(f"--move-extras {target_dir}", f"is inside the index folder {index.path}",
                              "Choose a folder outside the index.")
    return target_dir


def _target(dest: str, path: str, roots: Sequence[str], reserved: set[str]) -> str:
    """Where ``path`` goes under ``dest``: its path from its indexed folder's parent (the folder's own
    name kept, so two folders' photos do not mix), given a new name when something is there or
    another photo of this run is planned there (``reserved``, which gets the answer)."""
    root = max((r for r in roots if _inside(path, r)), key=len, default=os.path.dirname(path))
    relative = os.path.relpath(path, os.path.dirname(root.rstrip(os.sep)) or os.sep)
    target = os.path.join(dest, relative)
    stem, ext = os.path.splitext(target)
    n = 1
    while os.path.lexists(target) or target in reserved:
        target = f"{stem}.dup{n}{ext}"
        n += 1
    reserved.add(target)
    return target


def _append(journal: Any, entry: dict[str, Any]) -> None:
    """One journal line, on the disk before the caller goes on (a crash never loses a move)."""
    journal.write(json.dumps(entry) + "\n")
    journal.flush()
    os.fsync(journal.fileno())


def _move_file(source: str, target: str) -> None:
    """Move ``source`` to ``target`` (which does not exist): a rename, or across file systems a copy
    (times kept, flushed) renamed into place before the source is removed. A copy that fails (or is
    interrupted) leaves no partial file behind."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        raise FileExistsError(target)
    try:
        os.rename(source, target)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    partial = target + PARTIAL_SUFFIX
    try:
        shutil.copy2(source, partial)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.rename(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    os.unlink(source)


def _matches(path: str, f: "FileRecord", slack_ns: int = 0) -> bool:
    """Whether the file at ``path`` has the size and time ``f`` recorded (time within ``slack_ns``)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == f.size and abs(st.st_mtime_ns - f.mtime_ns) <= slack_ns


def _is_burst_only(member: Any) -> bool:
    """Whether a member joined its group by capture time alone (a burst frame, not a copy)."""
    why = tuple(getattr(member, "why", ()) or ())
    return bool(why) and set(why) == {"time"}


def plan_moves(index: "Index", groups: Sequence[DuplicateGroup], dest: str | os.PathLike[str], *,
               include_bursts: bool = False) -> MovePlan:
    """Where each group's extras would go under ``dest`` (checked with :func:`check_destination`).

    A group whose keeper (or a photo marked to keep) is gone or changed since it was indexed is left
    whole: its extras might be the only good copy. An extra changed since it was indexed stays, and
    so does a burst frame (joined by capture time alone) unless ``include_bursts``."""
    target_dir = check_destination(index, dest)
    roots = index.store.roots()
    with index.lock:
        files = index.store.files_by_ids([m.file_id for g in groups for m in g.members])
    moves: list[tuple[FileRecord, str]] = []
    skipped: list[tuple[str, str]] = []
    reserved: set[str] = set()
    for g in groups:
        kept = [m for m in g.members if m.keeper or m.marked]
        bad = next((m for m in kept if (f := files.get(m.file_id)) is None or f.status != "ok"
                    or not _matches(f.fs_path, f)), None)
        if bad is not None:
            why = (f"its keeper {bad.path} is gone or changed since it was indexed; run `clipdex index` and "
                   "look again")
            skipped += [(m.path, why) for m in g.extras]
            continue
        for m in g.extras:
            f = files.get(m.file_id)
            if f is None or f.status != "ok":
                skipped.append((m.path, "no longer in the index"))
            elif _is_burst_only(m) and not include_bursts:
                skipped.append((m.path, "a burst frame (taken seconds from the keeper, not a copy of it); "
                                        "--include-bursts moves these too"))
            elif not os.path.lexists(f.fs_path):
                skipped.append((m.path, "is gone from the disk"))
            elif not _matches(f.fs_path, f):
                skipped.append((m.path, "changed since it was indexed (run `clipdex index` first)"))
            else:
                moves.append((f, _target(target_dir, f.fs_path, roots, reserved)))
    return MovePlan(dest=target_dir, moves=moves, skipped=skipped)


def move_extras(index: "Index", groups: Sequence[DuplicateGroup], dest: str | os.PathLike[str],
                progress: Progress | None = None, *, include_bursts: bool = False) -> MoveReport:
    """Move every group's extras (not the keeper, not a photo marked to keep) into ``dest`` as
    :func:`plan_moves` plans them, keeping their layout under their indexed folder's name and never
    overwriting a file; the index forgets each one once it is moved (search no longer shows them).
    The plan (every record and target) is journalled before anything moves, in :data:`JOURNAL_NAME`
    in the index folder: :func:`undo_moves` puts them back, after a crash too. Takes the writer's
    lock. Raises :class:`DuplicatesError` for a ``dest`` inside an indexed folder or the index."""
    from clipdex.discover import display_path

    index.store.require_writable()
    check_destination(index, dest)
    run = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    moved: list[tuple[str, str]] = []
    index.store.acquire_lock()
    try:
        plan = plan_moves(index, groups, dest, include_bursts=include_bursts)
        skipped = list(plan.skipped)
        with open(journal_path(index), "a", encoding="utf-8") as journal:
            _append(journal, {"run": run, "op": "plan", "dest": plan.dest, "at": time.time(),
                              "count": len(plan.moves),
                              "moves": [{"from": f.fs_path, "to": t, "file": _file_json(f)} for f, t in plan.moves]})
            done: list[str] = []  # moved, not yet forgotten by the index
            try:
                for i, (f, target) in enumerate(plan.moves):
                    _append(journal, {"run": run, "op": "move", "from": f.fs_path, "to": target})
                    try:
                        _move_file(f.fs_path, target)
                    except OSError as e:
                        skipped.append((f.path, f"could not be moved ({e.strerror or e}); it stays"))
                        _append(journal, {"run": run, "op": "failed", "from": f.fs_path, "to": target})
                        continue
                    moved.append((display_path(f.fs_path), target))
                    done.append(f.path)
                    if len(done) >= FORGET_BATCH:
                        _forget(index, done)
                    if progress:
                        progress(i + 1, len(plan.moves))
            finally:  # what moved leaves the index, even when the run stops half way
                _forget(index, done)
            _append(journal, {"run": run, "op": "end", "moved": len(moved), "at": time.time()})
    finally:
        index.store.release_lock()
    return MoveReport(moved=moved, journal=str(journal_path(index)), run=run, skipped=skipped)


def _forget(index: "Index", paths: list[str]) -> None:
    """Drop the records of photos moved away (and empty ``paths``)."""
    if paths:
        with index.lock:
            index.store.remove_files(list(paths))
        paths.clear()


def _file_json(f: "FileRecord") -> dict[str, Any]:
    data = {k: v for k, v in asdict(f).items() if k != "raw_path"}
    data["raw_path"] = f.raw_path.hex() if f.raw_path is not None else None
    return data


def _restore(index: "Index", files: Iterable["FileRecord"]) -> None:
    """Give the index its records of ``files`` back (their vectors are still there, by content hash,
    unless the index was compacted since)."""
    from clipdex.store.catalog import NewFile

    new = [NewFile(path=f.path, size=f.size, mtime_ns=f.mtime_ns, content_hash=f.content_hash, width=f.width,
                   height=f.height, raw_path=f.raw_path, taken_at=f.taken_at, taken_source=f.taken_source)
           for f in files]
    if not new:
        return
    record = index.model_record()
    index.store.commit_batch(record, np.zeros((0, record.dim), np.float32), [], new)


def _record(data: dict[str, Any]) -> "FileRecord":
    from clipdex.store.catalog import FileRecord

    raw = data.get("raw_path")
    values = {**data, "raw_path": bytes.fromhex(raw) if raw else None}
    return FileRecord(**values)


def read_journal(index: "Index") -> list[dict[str, Any]]:
    """Every entry of the index's move journal, oldest first (a torn last line, from a crash, is ignored)."""
    path = journal_path(index)
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("ignoring a torn line of %s (a run was interrupted)", path)
    return entries


def _planned(entries: list[dict[str, Any]], run: str) -> list[dict[str, Any]]:
    """The moves a run planned ({"from", "to", "file"}), in order: its plan entry, or (journals written
    before plans) its move entries, each of which held the record."""
    for e in entries:
        if e.get("run") == run and e.get("op") == "plan":
            return list(e["moves"])
    return [e for e in entries if e.get("run") == run and e.get("op") == "move" and "file" in e]


def undo_moves(index: "Index", progress: Progress | None = None) -> MoveReport:
    """Put back the photos of the last ``--move-extras`` run not undone yet, last moved first, and give
    the index every record the run planned back. Every file is checked before any is moved: one
    changed or gone since (not where the journal put it, another size or time), or another file now
    where it came from, refuses the whole undo with what to do. A photo already at its origin (never
    moved: a crash came first; or moved back by hand, same size and time) counts as put back. A run
    interrupted by a crash is undone as far as it got, its partial copies removed."""
    entries = read_journal(index)
    undone = {e["run"] for e in entries if e.get("op") == "undone"}
    runs = list(dict.fromkeys(e["run"] for e in entries if e.get("op") in ("start", "plan")
                              and e["run"] not in undone))
    if not runs:
        raise DuplicatesError(str(journal_path(index)), "holds no move to undo",
                              "Nothing was moved with `clipdex duplicates --move-extras DIR` (or every run is "
                              "undone already).")
    run = runs[-1]
    back: list[tuple[dict[str, Any], bool]] = []  # (entry, needs moving)
    problems = []
    left: list[tuple[str, str]] = []
    for e in reversed(_planned(entries, run)):
        f = _record(e["file"])
        source, target = e["from"], e["to"]
        if _matches(source, f, MTIME_SLACK_NS):
            back.append((e, False))  # never moved (a crash came first), or moved back by hand
            if os.path.lexists(target):
                left.append((target, f"{source} is back already; this copy was left where it is"))
        elif os.path.lexists(target):
            if not _matches(target, f):
                problems.append(f"{target} changed since it was moved (size or time)")
            elif os.path.lexists(source):
                problems.append(f"{source} exists again (a new file where the moved one was)")
            else:
                back.append((e, True))
        elif os.path.lexists(source):
            problems.append(f"{target} is gone and {source} holds another file")
        else:
            problems.append(f"{target} is gone (moved or deleted since)")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DuplicatesError(f"undoing run {run} of {journal_path(index)}", f"nothing was moved back: {shown}",
                              "Put those files back where the journal says (or move them yourself), then run "
                              "`clipdex duplicates --undo` again; the journal lists every move.")
    index.store.require_writable()
    moved: list[tuple[str, str]] = []
    without_vector: list[str] = []
    index.store.acquire_lock()
    try:
        with open(journal_path(index), "a", encoding="utf-8") as journal:
            for i, (e, needs_move) in enumerate(back):
                if os.path.lexists(e["to"] + PARTIAL_SUFFIX) and os.path.lexists(e["from"]):
                    os.unlink(e["to"] + PARTIAL_SUFFIX)  # a copy a crash interrupted: the source is whole
                if needs_move:
                    _append(journal, {"run": run, "op": "back", "from": e["to"], "to": e["from"]})
                    _move_file(e["to"], e["from"])
                    moved.append((e["to"], e["from"]))
                if progress:
                    progress(i + 1, len(back))
            records = [_record(e["file"]) for e, _ in back]
            with index.lock:  # a photo `clipdex index` took back meanwhile keeps the record it has
                missing = [f for f in records if index.store.file_by_path(f.path) is None]
                _restore(index, missing)
                embedded = index.store.embedded_hashes(index.model_record()) if missing else {}
            without_vector = [f.path for f in missing if f.content_hash not in embedded]
            _append(journal, {"run": run, "op": "undone", "at": time.time(), "moved_back": len(moved)})
    finally:
        index.store.release_lock()
    return MoveReport(moved=moved, journal=str(journal_path(index)), run=run, skipped=left,
                      without_vector=without_vector, already_back=sum(1 for _, m in back if not m))
