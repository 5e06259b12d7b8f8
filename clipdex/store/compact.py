"""Compaction: give back the vector rows no indexed photo uses any more.

Vector files are append-only: a removed, changed or replaced photo leaves its
row behind (kept for reuse by content hash while some photo has that content).
:func:`compact` rewrites each model's file with only the rows some indexed
photo uses, in their order, and renumbers the catalog to match.

Every step leaves the index searchable and correct, whatever kills the process:

1. the kept rows are copied to a new file (``vectors/model-N.gG.f32``, G the new
   generation), each checked to be a unit vector, then fsync'ed with its folder;
2. one catalog transaction renumbers the model's embeddings, drops those no photo
   uses, and points the model at the new file with ``generation`` + 1 (anything
   built on row numbers, such as the approximate index, is rebuilt);
3. the old file (and whatever lives beside it, named after it) is deleted.

Killed before 2 commits: the old file and the old catalog still agree, and the
new file is a leftover. Killed after: the new ones agree, and the old file is a
leftover. The next compaction deletes leftovers: files in ``vectors/`` named
``model-…`` that are not, and do not start with, a file the catalog references, and
the hidden temporary files (``.model-….tmp``) of a save that was killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipdex.errors import IndexDamaged
from clipdex.store.catalog import ModelRecord, Store
from clipdex.store.guard import translate_os_error
from clipdex.store.vectors import VectorFile, unit_rows

COMPACT_CHUNK_ROWS = 32_768  # rows copied at a time: 64 MB at dim 512 float32 (bounded memory)
VECTOR_FILE_NAME = re.compile(r"model-\d+[.]")  # what a compaction may delete in vectors/ (when unreferenced)
# The temporary file of a vector or approximate index file being replaced (clipdex.fileio.replacing
# names it ``.model-1.f32.ivf.XXXX.tmp``): a SIGKILL mid-save leaves it. Only the writer's lock holder
# writes one, so one found holding that lock is a leftover, whichever file it was to replace.
REPLACING_FILE_NAME = re.compile(r"[.]model-\d+[.].*[.]tmp\Z")

CHECKPOINT_WAIT_MS = 1_000  # how long the closing WAL checkpoint waits for readers

CompactProgress = Callable[[int, int], None]  # (rows copied, rows to copy) for one model


@dataclass(frozen=True)
class ModelCompaction:
    """What compacting one model's vector file did."""

    key: str
    name: str
    rows_before: int
    rows_after: int
    bytes_before: int  # the old file's size on disk
    bytes_after: int
    vectors_file: str  # the file the catalog references now (unchanged when nothing was freed)
    generation: int

    @property
    def compacted(self) -> bool:
        return self.rows_after != self.rows_before or self.bytes_after != self.bytes_before

    @property
    def bytes_reclaimed(self) -> int:
        return max(self.bytes_before - self.bytes_after, 0)


@dataclass
class CompactReport:
    """What one ``clipdex compact`` did, per model."""

    index: str
    models: list[ModelCompaction] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # files of killed runs deleted (vectors/…)
    leftover_bytes: int = 0
    seconds: float = 0.0

    @property
    def rows_before(self) -> int:
        return sum(m.rows_before for m in self.models)

    @property
    def rows_after(self) -> int:
        return sum(m.rows_after for m in self.models)

    @property
    def bytes_reclaimed(self) -> int:
        return sum(m.bytes_reclaimed for m in self.models) + self.leftover_bytes


def compact(store: Store, progress: CompactProgress | None = None, *, wait: bool = False) -> CompactReport:
    """Rewrite every model's vector file with only the rows indexed photos use.

    Takes the writer's lock (:class:`~clipdex.errors.IndexLocked` unless ``wait``);
    raises :class:`~clipdex.errors.IndexStorageError` for a read-only index and
    :class:`~clipdex.errors.IndexDamaged` when a vector a photo uses is lost (the
    index is left as it was: `clipdex index` re-encodes those photos first).
    Memory stays bounded (COMPACT_CHUNK_ROWS rows at a time) at any size.
    """
    started = time.perf_counter()
    store.require_writable()
    store.acquire_lock(wait=wait)
    try:
        report = CompactReport(index=str(store.path))
        report.leftovers, report.leftover_bytes = remove_leftovers(store)
        for model in store.models():
            report.models.append(_compact_model(store, model, progress))
        _shrink_wal(store)
    finally:
        store.release_lock()
    report.seconds = time.perf_counter() - started
    return report


def _shrink_wal(store: Store) -> None:
    """The renumbering's WAL back to its size (best effort). It waits for readers of older
    snapshots (an export reads in one for minutes): CHECKPOINT_WAIT_MS, not the catalog's
    busy timeout; the WAL a reader kept is truncated by a later checkpoint."""
    conn = store.conn
    with contextlib.suppress(sqlite3.Error):
        waited = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(waited)}")


def remove_leftovers(store: Store) -> tuple[list[str], int]:
    """Delete the files a killed compaction left in ``vectors/``; (names, bytes) deleted.

    Only files named ``model-…`` go, and never one the catalog references or one named
    after a referenced file (``model-1.f32.ivf``, the approximate index beside it); and the
    temporary files of a killed save (``.model-1.f32.ivf.XXXX.tmp``), referenced or not.
    Call it holding the writer's lock: no other process then creates vector files."""
    folder = store.path / "vectors"
    if not folder.is_dir():
        return [], 0
    referenced = [Path(m.vectors_file).name for m in store.models()]
    removed: list[str] = []
    freed = 0
    for path in sorted(folder.iterdir()):
        name = path.name
        if not path.is_file():
            continue
        if not REPLACING_FILE_NAME.match(name):
            if not VECTOR_FILE_NAME.match(name):
                continue
            if any(name == ref or name.startswith(ref + ".") for ref in referenced):
                continue
        size = path.stat().st_size
        _discard(path)
        removed.append(f"vectors/{name}")
        freed += size
    return removed, freed


def _compact_model(store: Store, model: ModelRecord, progress: CompactProgress | None) -> ModelCompaction:
    model, kept, unused = store.rows_in_use(model)
    old = store.vector_file(model)
    size = old.path.stat().st_size if old.path.exists() else 0
    unchanged = ModelCompaction(model.key, model.name, model.rows, model.rows, size, size,
                                model.vectors_file, model.generation)
    in_place = len(kept) == model.rows and (not len(kept) or int(kept[-1]) == model.rows - 1)
    if in_place and not unused and size == model.rows * old.row_bytes:
        return unchanged  # nothing to give back: no new file, no new generation
    generation = model.generation + 1
    name = f"vectors/model-{model.id}.g{generation}.{model.storage}"
    new = VectorFile(store.path / name, model.dim, model.storage)
    _copy_rows(store, model, old, new, kept, progress)
    store.renumber_vectors(model, kept, name, generation)
    if old.path != new.path:
        _discard(old.path)
        for beside in old.path.parent.glob(old.path.name + ".*"):  # its approximate index…
            _discard(beside)
    return ModelCompaction(model.key, model.name, model.rows, len(kept), size,
                           len(kept) * new.row_bytes, name, generation)


def _copy_rows(store: Store, model: ModelRecord, old: VectorFile, new: VectorFile, kept: np.ndarray,
               progress: CompactProgress | None) -> None:
    """Write the ``kept`` rows of ``old`` to ``new`` in order, each checked, then fsync it and
    its folder (the new name must be on disk before the catalog points at it)."""
    on_disk = old.file_rows() or 0
    if len(kept) and int(kept[-1]) >= min(on_disk, model.rows):
        raise _damage(store, model)
    new.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(new.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise translate_os_error(store.path, e, f"writing {new.path}") from e
    try:
        try:
            for start in range(0, len(kept), COMPACT_CHUNK_ROWS):
                rows = kept[start:start + COMPACT_CHUNK_ROWS]
                vectors = old.take(rows)
                if not unit_rows(vectors).all():
                    raise _damage(store, model)
                _write_all(fd, np.ascontiguousarray(vectors, dtype=new.dtype))
                if progress:
                    progress(start + len(rows), len(kept))
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_folder(new.path.parent)
    except IndexDamaged:
        _discard(new.path)
        raise
    except OSError as e:
        _discard(new.path)
        raise translate_os_error(store.path, e, f"writing {new.path}") from e
    except BaseException:
        _discard(new.path)  # Ctrl-C: no leftover (a SIGKILL's is deleted by the next compaction)
        raise


def _damage(store: Store, model: ModelRecord) -> IndexDamaged:
    """The error for a vector a photo uses that the file lost: nothing is compacted."""
    damage = store.vector_damage(model, full=True)
    if damage is not None:
        fix = damage.fix(store.path).rstrip(".")
        return IndexDamaged(store.path, damage.describe(), f"{fix}, then compact again.")
    return IndexDamaged(store.path, f"the vectors of {model.name} changed while they were compacted",
                        "Run `clipdex compact` again; if it persists, run `clipdex status --verify`.")


def _write_all(fd: int, rows: np.ndarray) -> None:
    """Write a contiguous array's bytes (no copy of them first)."""
    view = rows.data.cast("B")
    while view:
        view = view[os.write(fd, view):]


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Delete ``path`` if it exists (a leftover, or a file being replaced)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
