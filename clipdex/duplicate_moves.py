"""Duplicates' extras moved aside and back, and the keepers people mark.

clipdex never deletes a photo. :func:`move_extras` moves the photos of each group found by
:func:`clipdex.duplicates.find_duplicates` that are not kept into a folder (their layout kept,
nothing overwritten), journalling each move (fsync'ed before it happens) in the index folder, and
:func:`undo_moves` replays the last run backwards. :func:`mark_keeper` records the photo a person
chose to keep (the web page's mark), which a move never touches.
"""

from __future__ import annotations

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

# -- keepers -----------------------------------------------------------------------------------
def mark_keeper(index: "Index", file_id: int, keep: bool = True) -> "FileRecord":
    """Mark photo ``file_id`` to keep (or take the mark away): ``--move-extras`` never moves it, and
    its group's other photos are the extras. Returns the photo."""
    record = index.photo(file_id)
    index.store.require_writable()
    with index.lock:
        index.store.set_keeper(record.path, keep)
    return record


# -- moving extras aside, and back -------------------------------------------------------------
@dataclass(frozen=True)
class MoveReport:
    """What :func:`move_extras` or :func:`undo_moves` did."""

    moved: list[tuple[str, str]]  # (from, to)
    journal: str
    run: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def journal_path(index: "Index") -> Path:
    return index.path / JOURNAL_NAME


def _inside(path: str, folder: str) -> bool:
    folder = folder.rstrip(os.sep) + os.sep
    return path == folder.rstrip(os.sep) or path.startswith(folder)


def _target(dest: str, path: str, roots: Sequence[str]) -> str:
    """Where ``path`` goes under ``dest``: its path from its indexed folder's parent (the folder's own
    name kept, so two folders' photos do not mix), given a new name when something is there."""
    root = max((r for r in roots if _inside(path, r)), key=len, default=os.path.dirname(path))
    relative = os.path.relpath(path, os.path.dirname(root.rstrip(os.sep)) or os.sep)
    target = os.path.join(dest, relative)
    stem, ext = os.path.splitext(target)
    n = 1
    while os.path.lexists(target):
        target = f"{stem}.dup{n}{ext}"
        n += 1
    return target


def _append(journal: Any, entry: dict[str, Any]) -> None:
    """One journal line, on the disk before the caller goes on (a crash never loses a move)."""
    journal.write(json.dumps(entry) + "\n")
    journal.flush()
    os.fsync(journal.fileno())


def _move_file(source: str, target: str) -> None:
    """Move ``source`` to ``target`` (which does not exist): a rename, or across file systems a copy
    (times kept, flushed) renamed into place before the source is removed."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        raise FileExistsError(target)
    try:
        os.rename(source, target)
        return
    except OSError as e:
        import errno

        if e.errno != errno.EXDEV:
            raise
    partial = target + ".clipdex-partial"
    shutil.copy2(source, partial)
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.rename(partial, target)
    os.unlink(source)


def move_extras(index: "Index", groups: Sequence[DuplicateGroup], dest: str | os.PathLike[str],
                progress: Progress | None = None) -> MoveReport:
    """Move every group's extras (not the keeper, not a photo marked to keep) into ``dest``, keeping
    their layout under their indexed folder's name and never overwriting a file; the index forgets
    them (search no longer shows them). Each move is journalled (fsync'ed) before it is made, in
    :data:`JOURNAL_NAME` in the index folder: :func:`undo_moves` puts them back. Takes the writer's
    lock. Raises :class:`DuplicatesError` for a ``dest`` inside an indexed folder or the index."""
    from clipdex.discover import display_path

    index.store.require_writable()
    target_dir = os.path.abspath(os.path.expanduser(os.fspath(dest)))
    roots = index.store.roots()
    for root in roots:
        if _inside(target_dir, root):
            raise DuplicatesError(f"--move-extras {target_dir}", f"is inside the indexed folder {root}, so the "
                                  "next `clipdex index` would index the moved photos again",
                                  "Choose a folder outside every indexed folder (`clipdex status` lists them).")
    if _inside(target_dir, str(index.path)):
        raise DuplicatesError(f"--move-extras {target_dir}", f"is inside the index folder {index.path}",
                              "Choose a folder outside the index.")
    extras = [m for g in groups for m in g.extras]
    run = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    moved: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    index.store.acquire_lock()
    try:
        with index.lock:
            files = index.store.files_by_ids([m.file_id for m in extras])
        with open(journal_path(index), "a", encoding="utf-8") as journal:
            _append(journal, {"run": run, "op": "start", "dest": target_dir, "at": time.time(),
                              "count": len(extras)})
            planned = []
            for m in extras:
                f = files.get(m.file_id)
                if f is None or f.status != "ok":
                    skipped.append((m.path, "no longer in the index"))
                    continue
                try:
                    st = os.stat(f.fs_path)
                except OSError as e:
                    skipped.append((m.path, f"cannot be read ({e.strerror or e})"))
                    continue
                if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
                    skipped.append((m.path, "changed since it was indexed (run `clipdex index` first)"))
                    continue
                planned.append((f, _target(target_dir, f.fs_path, roots)))
            # Forget them first: a crash after this leaves photos the index lacks but the disk has
            # (the next `clipdex index` takes them back without encoding), never a search result
            # that points at nothing. The journal holds every record, for undo.
            with index.lock:
                index.store.remove_files([f.path for f, _ in planned])
            for i, (f, target) in enumerate(planned):
                _append(journal, {"run": run, "op": "move", "from": f.fs_path, "to": target,
                                  "file": _file_json(f)})
                try:
                    _move_file(f.fs_path, target)
                except OSError as e:
                    skipped.append((f.path, f"could not be moved ({e.strerror or e}); it stays"))
                    _append(journal, {"run": run, "op": "failed", "from": f.fs_path, "to": target})
                    with index.lock:
                        _restore(index, [f])
                    continue
                moved.append((display_path(f.fs_path), target))
                if progress:
                    progress(i + 1, len(planned))
            _append(journal, {"run": run, "op": "end", "moved": len(moved), "at": time.time()})
    finally:
        index.store.release_lock()
    return MoveReport(moved=moved, journal=str(journal_path(index)), run=run, skipped=skipped)


def _file_json(f: "FileRecord") -> dict[str, Any]:
    data = {k: v for k, v in asdict(f).items() if k != "raw_path"}
    data["raw_path"] = f.raw_path.hex() if f.raw_path is not None else None
    return data


def _restore(index: "Index", files: Iterable["FileRecord"]) -> None:
    """Give the index its records of ``files`` back (their vectors are still there, by content hash)."""
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


def undo_moves(index: "Index", progress: Progress | None = None) -> MoveReport:
    """Put back the photos of the last ``--move-extras`` run not undone yet, last moved first, and give
    the index their records back. Every file is checked before any is moved: one changed or moved
    since (not where the journal put it, another size or time), or a file now where it came from,
    refuses the whole undo with what to do. A run interrupted by a crash is undone as far as it got."""
    entries = read_journal(index)
    undone = {e["run"] for e in entries if e.get("op") == "undone"}
    runs = [e["run"] for e in entries if e.get("op") == "start" and e["run"] not in undone]
    if not runs:
        raise DuplicatesError(str(journal_path(index)), "holds no move to undo",
                              "Nothing was moved with `clipdex duplicates --move-extras DIR` (or every run is "
                              "undone already).")
    run = runs[-1]
    failed = {(e["from"], e["to"]) for e in entries if e.get("run") == run and e.get("op") == "failed"}
    moves = [e for e in entries if e.get("run") == run and e.get("op") == "move"
             and (e["from"], e["to"]) not in failed]
    back: list[tuple[dict[str, Any], bool]] = []  # (entry, needs moving)
    problems = []
    for e in reversed(moves):
        f = _record(e["file"])
        source, target = e["from"], e["to"]
        if os.path.lexists(target):
            st = os.stat(target)
            if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
                problems.append(f"{target} changed since it was moved (size or time)")
            elif os.path.lexists(source):
                problems.append(f"{source} exists again (a new file where the moved one was)")
            else:
                back.append((e, True))
        elif os.path.lexists(source):
            st = os.stat(source)
            if (st.st_size, st.st_mtime_ns) == (f.size, f.mtime_ns):
                back.append((e, False))  # the move never happened (a crash before it)
            else:
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
    index.store.acquire_lock()
    try:
        with open(journal_path(index), "a", encoding="utf-8") as journal:
            for i, (e, needs_move) in enumerate(back):
                if needs_move:
                    _append(journal, {"run": run, "op": "back", "from": e["to"], "to": e["from"]})
                    _move_file(e["to"], e["from"])
                    moved.append((e["to"], e["from"]))
                if progress:
                    progress(i + 1, len(back))
            records = [_record(e["file"]) for e, _ in back]
            with index.lock:  # a photo `clipdex index` took back meanwhile keeps the record it has
                _restore(index, [f for f in records if index.store.file_by_path(f.path) is None])
            _append(journal, {"run": run, "op": "undone", "at": time.time(), "moved_back": len(moved)})
    finally:
        index.store.release_lock()
    return MoveReport(moved=moved, journal=str(journal_path(index)), run=run)
