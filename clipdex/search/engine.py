"""One model's vectors made searchable: exact or approximate, always right, never stale.

Small collections are searched exactly (:class:`~clipdex.search.exact.ExactIndex`
over the memory-mapped vector file). From ``ANN_MIN_ROWS`` rows on, clipdex
keeps an approximate index beside the vector file (``<vectors file>.ivf``,
:class:`~clipdex.search.ann.IvfIndex`), built by ``clipdex index`` (or import,
or compact) with a progress bar and updated incrementally by every later run:
new rows are added, rows no photo uses any more are simply never mapped to a
photo (the catalog decides, see :mod:`clipdex.store.rows`).

An approximate index is trusted only when it matches the vector file: the same
model, the same generation of row numbers (compaction bumps it), at most the
rows the catalog committed, and the same vectors at a few sampled rows. Rows
committed after it was saved (another process indexing right now) are searched
exactly beside it. Anything else (a killed run, an older clipdex, another
model's file) makes the search exact, with a notice, until the next
``clipdex index`` rebuilds it: never a wrong answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdex.errors import IndexDamaged
from clipdex.search.base import BuildProgress, Hits, VectorIndex, VectorIndexStats, VectorIndexUnusable, merge_hits
from clipdex.search.exact import ExactIndex
from clipdex.store.catalog import ModelRecord, Store
from clipdex.store.vectors import ShortVectorFile, VectorFile, unit_rows

log = logging.getLogger(__name__)

# Below this many rows exact search answers a query in milliseconds (it reads every
# vector: ~10-20 ms at 100k x 512 on a 2-core EPYC, memory bandwidth bound), and an
# approximate index would only cost building and recall (bench/search_scale.py).
ANN_MIN_ROWS = 100_000
# Rows committed after the approximate index was saved are searched exactly beside it,
# up to this many; beyond, the whole search is exact until the index is updated.
TAIL_MAX_ROWS = 50_000
# Up to this many rows, every vector is checked when a process first searches them (about
# 0.1 s at 200k x 512); beyond, the rows a search returns are.
VERIFY_MAX_ROWS = 200_000
ANN_SUFFIX = ".ivf"
REBUILD = ("run `clipdex index` on any of its folders, `clipdex import` again or `clipdex compact` to "
           "bring it up to date")
FORMAT = 1  # bump when what the engine records in an approximate index's meta changes
SAMPLED_ROWS = 9  # rows whose vectors fingerprint the file an index was built from
LOADED_MAX = 4  # approximate indexes kept loaded per process (shared by every Index object)
ADD_CHUNK_ROWS = 65_536
ANN_PARAMS = None  # IvfParams to build with (None: worked out from the rows; tests set small ones)


def ann_path(store: Store, record: ModelRecord) -> Path:
    """Where ``record``'s approximate index lives: beside its vector file (a compacted
    file has a new name, so its index is new too)."""
    return store.path / (record.vectors_file + ANN_SUFFIX)


def file_key(path: Path) -> tuple[int, ...]:
    """What tells one version of a file from another (inode, size, mtime); () when it is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def fingerprint(matrix: np.ndarray, covered: int) -> str:
    """A digest of the vectors at a few rows spread over the first ``covered`` (and the last of them)."""
    if covered <= 0:
        return ""
    picks = np.unique(np.linspace(0, covered - 1, SAMPLED_ROWS).astype(np.int64))
    digest = hashlib.sha256()
    for row in picks:
        digest.update(np.ascontiguousarray(matrix[int(row)], dtype="<f4").tobytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class SearchBackend:
    """How a model is searched right now, in words for ``clipdex status``."""

    kind: str  # "exact" or "ann"
    note: str  # why, and how fresh
    stats: VectorIndexStats | None = None
    stale: bool = False  # an approximate index exists but cannot be used until rebuilt


class ModelSearch:
    """One model's committed rows, searchable: an approximate index (when there is a sound
    one) plus the rows committed after it, or exact search over all of them."""

    def __init__(self, store: Store, record: ModelRecord, *, exact: bool = False, verify: bool = True) -> None:
        self.record = record
        self.verify = verify
        self.store = store
        vector_file = store.vector_file(record)
        try:
            self.matrix = vector_file.read(record.rows)
        except ShortVectorFile:
            raise _damaged(store, record) from None
        self.read = _FileReader(vector_file, self.matrix)  # float32 vectors of rows, any order
        self.ann: VectorIndex | None = None
        self.tail: ExactIndex | None = None
        self.covered = record.rows
        self.backend = SearchBackend("exact", "exact search (--exact)" if exact else
                                     f"exact search (fewer than {ANN_MIN_ROWS:,} photos)")
        if exact or record.rows == 0:
            self.exact: ExactIndex | None = ExactIndex(self.matrix, record.dim)
            self._verify()
            return
        path = ann_path(store, record)
        ann, problem = _load_ann(path, record, vector_file, self.matrix)
        if ann is None:
            self.exact = ExactIndex(self.matrix, record.dim)
            self._verify()
            if problem is not None:
                self.backend = SearchBackend("exact", f"exact search: the approximate index {problem}; "
                                             f"{REBUILD}", stale=True)
                log.warning("the approximate search index %s %s; searching exactly (slower) meanwhile: %s",
                            path, problem, REBUILD)
            elif record.rows >= ANN_MIN_ROWS:
                self.backend = SearchBackend("exact", f"exact search: no approximate index yet; {REBUILD}",
                                             stale=True)
            return
        stats = ann.stats()
        covered = int(ann.meta.get("rows", stats.covered))  # rows of the file it was brought up to
        tail = record.rows - covered
        if tail > TAIL_MAX_ROWS:
            self.exact = ExactIndex(self.matrix, record.dim)
            self.backend = SearchBackend("exact", f"exact search: the approximate index lacks the newest "
                                         f"{tail:,} photos; {REBUILD}", stats, stale=True)
            return
        self.exact = None
        self.ann = ann
        self.covered = covered
        if tail:
            self.tail = ExactIndex(None, record.dim)
            rows = np.arange(covered, record.rows, dtype=np.int64)
            self.tail.add(rows, self.read(rows))
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(stats.built_at)) if stats.built_at else "?"
        fresh = "up to date" if not tail else f"{tail:,} newest photos searched exactly beside it"
        self.backend = SearchBackend("ann", f"approximate search ({_describe(stats)}), {fresh}, "
                                     f"updated {built}", stats)

    def _verify(self) -> None:
        """Check every vector a photo uses once, when that is cheap (up to ``VERIFY_MAX_ROWS``):
        a damaged one is refused with what to do, never ranked. Larger files are checked where
        they are read (the rows a search returns); `clipdex status --verify` reads them all."""
        if self.verify and self.record.rows <= VERIFY_MAX_ROWS:
            damage = self.store.vector_damage(self.record, full=True)
            if damage is not None:
                raise IndexDamaged(self.store.path, damage.describe(), damage.fix(self.store.path))

    def check(self, rows: np.ndarray) -> None:
        """Raise :class:`IndexDamaged` when a vector at ``rows`` (rows a search shows) is not sound."""
        if len(rows) and not unit_rows(self.read(rows)).all():
            raise _damaged(self.store, self.record)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None, text: bool) -> Hits:
        """The ``k`` best rows (score desc, row asc); rows no photo uses may be among them."""
        if self.exact is not None:
            hits = self.exact.search(query, k, allowed, text=text)
        else:
            assert self.ann is not None
            in_ann = allowed if allowed is None else allowed[allowed < self.covered]
            try:
                hits = self.ann.search(query, k, in_ann, text=text)
                if len(hits) and int(hits.rows.max()) >= self.record.rows:
                    raise VectorIndexUnusable(ann_path(self.store, self.record), "it names rows the catalog "
                                              "never committed")
            except VectorIndexUnusable as e:  # damaged inside: exact from now on, never a wrong answer
                log.warning("the approximate search index %s is damaged (%s); searching exactly until "
                            "`clipdex index` (or `clipdex compact`) rebuilds it", e.path, e.reason)
                path = ann_path(self.store, self.record)
                forget(path)
                with contextlib.suppress(OSError):  # disposable: the next index run builds it anew
                    path.unlink()
                self.ann, self.tail = None, None
                self.exact = ExactIndex(self.matrix, self.record.dim)
                self.backend = SearchBackend("exact", f"exact search: the approximate index is damaged "
                                             f"({e.reason}); {REBUILD}", stale=True)
                return self.exact.search(query, k, allowed, text=text)
            if self.tail is not None:
                in_tail = None if allowed is None else allowed[allowed >= self.covered]
                if in_tail is None or len(in_tail):
                    hits = merge_hits([hits, self.tail.search(query, k, in_tail, text=text)], k)
        return hits


def _describe(stats: VectorIndexStats) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in stats.params.items() if k in ("nlist", "codes", "nprobe_text"))
    return f"{stats.kind.upper()} {shown}".strip()


def _damaged(store: Store, record: ModelRecord) -> IndexDamaged:
    damage = store.vector_damage(record, full=True)
    if damage is not None:
        return IndexDamaged(store.path, damage.describe(), damage.fix(store.path))
    return IndexDamaged(store.path, f"the vectors of {record.name} changed while they were read",
                        "Search again; if it persists, run `clipdex status --verify`.")


def _load_ann(path: Path, record: ModelRecord, vector_file: VectorFile, matrix: np.ndarray, *,
              shared: bool = True) -> tuple[VectorIndex | None, str | None]:
    """The approximate index at ``path`` when it matches the vector file, else (None, why).

    ``shared``: the process's loaded copy, which searches use (never changed in place);
    otherwise a copy of its own that the caller may change (an update)."""
    identity = file_key(path)
    if not identity:
        return None, None
    key = (str(path), *identity)
    ann = None
    if shared:
        with _loaded_lock:
            ann = _loaded.get(key)
            if ann is not None:
                _loaded.move_to_end(key)
    if ann is None:
        from clipdex.search.ann import IvfIndex

        try:
            ann = IvfIndex.load(path, _FileReader(vector_file, matrix))
        except VectorIndexUnusable as e:
            return None, f"cannot be read ({e.reason})"
        if shared:
            with _loaded_lock:
                for stale in [k for k in _loaded if k[0] == key[0]]:  # an older file of that path
                    del _loaded[stale]
                _loaded[key] = ann
                while len(_loaded) > LOADED_MAX:
                    _loaded.popitem(last=False)
    problem = _mismatch(ann, record, matrix)
    return (None, problem) if problem else (ann, None)


def _mismatch(ann: VectorIndex, record: ModelRecord, matrix: np.ndarray) -> str | None:
    meta = ann.meta
    covered = int(meta.get("rows", ann.stats().covered))
    if meta.get("format") != FORMAT:
        return "was written by another version of clipdex"
    if meta.get("model") != record.key or ann.dim != record.dim:
        return f"belongs to another model ({meta.get('model')})"
    if meta.get("generation") != record.generation:
        return "was built before the vectors were compacted or repaired"
    if covered > record.rows:
        return f"holds {covered:,} rows, the catalog committed {record.rows:,} (a killed run or a repair)"
    if meta.get("fingerprint") != fingerprint(matrix, covered):
        return "does not match the vector file (it was changed or replaced)"
    return None


class _FileReader:
    """Reads rows of a vector file for an approximate index (re-ranking, building), mapping
    the file again when asked for a row committed after it was mapped."""

    def __init__(self, vector_file: VectorFile, matrix: np.ndarray) -> None:
        self.vector_file = vector_file
        self.matrix = matrix
        self._lock = threading.Lock()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        matrix = self.matrix
        if len(rows) and (int(rows.max()) >= len(matrix) or int(rows.min()) < 0):
            with self._lock:
                on_disk = self.vector_file.file_rows() or 0
                if int(rows.max()) >= on_disk or int(rows.min()) < 0:  # only a damaged index names them
                    raise VectorIndexUnusable(self.vector_file.path, "it names rows the vector file does not "
                                              f"have (row {int(rows.max())} of {on_disk})")
                self.matrix = matrix = self.vector_file.read(on_disk)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.vector_file.dim), np.float32)
        out[order] = matrix[rows[order]]
        return out


_loaded: OrderedDict[tuple[object, ...], VectorIndex] = OrderedDict()
_loaded_lock = threading.Lock()


@dataclass(frozen=True)
class RefreshReport:
    """What keeping one model's approximate index fresh did."""

    model: str
    action: str  # "none", "built", "updated", "removed"
    rows: int
    seconds: float
    why: str = ""


def trained_index(store: Store, record: ModelRecord) -> VectorIndex | None:
    """``record``'s approximate index as it is on disk, sound or not (None: none, or unreadable):
    what a rebuild after compaction reuses the trained lists of."""
    path = ann_path(store, record)
    if not path.exists():
        return None
    from clipdex.search.ann import IvfIndex

    try:
        return IvfIndex.load(path, _FileReader(store.vector_file(record), np.zeros((0, record.dim), np.float32)))
    except VectorIndexUnusable:
        return None


def refresh(store: Store, record: ModelRecord, progress: BuildProgress | None = None, *,
            trained: VectorIndex | None = None) -> RefreshReport:
    """Bring ``record``'s approximate index up to date with its vector file; call it holding the
    writer's lock. Built from scratch when there is none (and the model has at least
    ``ANN_MIN_ROWS`` rows) or the one there does not match; otherwise the rows committed since
    are added and the rows no photo uses any more (deleted, changed photos) are removed, so
    that searches do not wade through them until a compaction. Below ``ANN_MIN_ROWS`` an
    existing index is removed (exact search is as fast). ``trained``: the index of these vectors
    before a compaction renumbered them, whose trained lists a rebuild reuses."""
    started = time.perf_counter()
    path = ann_path(store, record)
    if record.rows < ANN_MIN_ROWS:
        if path.exists():
            path.unlink()
            forget(path)
            return RefreshReport(record.key, "removed", record.rows, time.perf_counter() - started,
                                 f"fewer than {ANN_MIN_ROWS:,} rows: exact search is used")
        return RefreshReport(record.key, "none", record.rows, 0.0)
    record, used, _unused = store.rows_in_use(record)
    vector_file = store.vector_file(record)
    try:
        matrix = vector_file.read(record.rows)
    except ShortVectorFile:
        raise _damaged(store, record) from None
    from clipdex.search.ann import IvfIndex

    unused = np.setdiff1d(np.arange(record.rows, dtype=np.int64), used, assume_unique=True)
    # A copy of its own: searches in this process (other threads) keep the loaded one.
    ann, problem = _load_ann(path, record, vector_file, matrix, shared=False)
    if ann is not None:
        held = ann.held()
        gone = np.setdiff1d(held, used, assume_unique=True)  # photos deleted or changed since
        # New rows, and rows used again (a deleted photo back: its vector is reused by hash).
        todo = np.setdiff1d(used, held, assume_unique=True)
        if not len(gone) and not len(todo):
            return RefreshReport(record.key, "none", record.rows, 0.0)
        if len(gone):
            ann.remove(gone)
        for start in range(0, len(todo), ADD_CHUNK_ROWS):
            rows = todo[start:start + ADD_CHUNK_ROWS]
            ann.add(rows, np.asarray(matrix[rows], dtype=np.float32))
            if progress:
                progress(start + len(rows), len(todo))
        action, why = "updated", f"{len(todo):,} rows added, {len(gone):,} removed"
        if isinstance(ann, IvfIndex):
            ann.built_at = time.time()  # what status shows as "updated"
    else:
        log.info("building the approximate search index of %s (%s rows; a few minutes per million)",
                 record.name, f"{record.rows:,}")
        ann = IvfIndex.build(_FileReader(vector_file, matrix), record.rows, record.dim, params=ANN_PARAMS,
                             progress=progress, exclude=unused,
                             trained=trained if isinstance(trained, IvfIndex) else None)
        action, why = "built", problem or ("after a compaction, its lists kept" if trained else "there was none")
    ann.meta.update(format=FORMAT, model=record.key, generation=record.generation, rows=record.rows,
                    fingerprint=fingerprint(matrix, record.rows))
    ann.save(path)
    forget(path)
    with _loaded_lock:  # this process searches with what it just saved, without reading it again
        key = (str(path), *file_key(path))
        _loaded[key] = ann
    return RefreshReport(record.key, action, record.rows, time.perf_counter() - started, why)


def forget(path: Path | None = None) -> None:
    """Let go of the loaded approximate indexes of ``path`` (of every index: None), and with
    them the vector files they map: an index closed, rebuilt or compacted away."""
    with _loaded_lock:
        for key in [k for k in _loaded if path is None or k[0] == str(path)]:
            del _loaded[key]


def forget_under(folder: Path) -> None:
    """Let go of every loaded approximate index of the index at ``folder``."""
    prefix = str(folder).rstrip(os.sep) + os.sep
    with _loaded_lock:
        for key in [k for k in _loaded if str(k[0]).startswith(prefix)]:
            del _loaded[key]


def backend_of(store: Store, record: ModelRecord) -> SearchBackend:
    """How ``record`` would be searched now (loads its approximate index if it has one, and
    reads the rows committed after it, up to ``TAIL_MAX_ROWS``)."""
    return ModelSearch(store, record, verify=False).backend
