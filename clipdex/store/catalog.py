"""The on-disk index: a SQLite catalog plus one memory-mappable vector file per model.

Layout of an index folder::

    catalog.sqlite        files, models, embeddings, roots (WAL mode)
    vectors/model-N.f32   model N's vectors, float32 rows (see vectors.py); model-N.f16 for
                          float16 storage; model-N.gG.f32 after compaction G
    lock                  held by the one process writing the index

Vectors are keyed by (model, content hash): a renamed, moved or duplicated
photo reuses its vector, and several models live side by side in one index.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipdex.discover import display_path
from clipdex.errors import ClipdexError, IndexDamaged, IndexLocked, IndexNotFound, IndexStorageError, IndexVersionError
from clipdex.store.guard import (
    catalog_damaged_fix,
    guarded,
    read_only_problem,
    retry_busy,
    storage_errors,
    translate_os_error,
    translate_sqlite_error,
)
from clipdex.store.migrations import LATEST_VERSION, migrate
from clipdex.store.vectors import STORAGE_DTYPES, ShortVectorFile, VectorCheck, VectorFile, storage_dtype, unit_rows

if TYPE_CHECKING:
    from clipdex.models.auto import PrecisionChoice

CATALOG_NAME = "catalog.sqlite"
LOCK_NAME = "lock"
BUSY_TIMEOUT_S = 30.0
SQL_CHUNK = 500  # values bound in one IN (...) list (SQLite allows 32,766; old builds 999)
LOCK_POLL_S = 0.5
VECTOR_SUFFIXES = tuple(f".{storage}" for storage in STORAGE_DTYPES)  # .f32, .f16


@dataclass(frozen=True)
class ModelRecord:
    """A model whose vectors the index holds."""

    id: int
    key: str
    name: str
    spec_json: str
    dim: int
    logit_scale: float
    rows: int
    precision: str
    vectors_file: str
    generation: int = 0  # bumped when row numbers change meaning (compaction, a shrinking repair)
    storage: str = "f32"  # how the vector file stores rows: "f32" or "f16"
    logit_bias: float | None = None  # a sigmoid model's (SigLIP) bias; None: a softmax model (CLIP)


@dataclass(frozen=True)
class ProbeSource:
    """A source of a model whose probe vectors were checked against the index's (see
    :mod:`clipdex.models.probe`): ``towers`` it was checked on ('image', 'text'), ``cosine`` the
    least probe cosine measured (None: the source that recorded the probe)."""

    source: str
    towers: tuple[str, ...]
    cosine: float | None = None
    checked_at: float = 0.0


@dataclass(frozen=True)
class ModelProbe:
    """A model's probe as the index recorded it: its vectors (the probe image's row, then the
    probe texts'), float32 (rows, dim), and the sources found to give them, first first."""

    vectors: np.ndarray
    sources: tuple[ProbeSource, ...]

    def source(self, name: str) -> ProbeSource | None:
        return next((s for s in self.sources if s.source == name), None)


@dataclass(frozen=True)
class FileRecord:
    """One file the index knows, indexed or failed."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    width: int | None
    height: int | None
    status: str
    reason: str | None
    raw_path: bytes | None = None
    failure_kind: str | None = None
    failure_limit: float | None = None
    taken_at: str | None = None  # 'YYYY-MM-DDTHH:MM:SS', local time (EXIF, else mtime)
    taken_source: str | None = None  # where taken_at came from: one of TAKEN_SOURCES
    video_id: int | None = None  # a frame of a video: the video's id (None: a photo, or a video)
    frame_t: float | None = None  # a frame of a video: seconds from its start
    frame_scene: int | None = None  # a frame of a video: its shot (0, 1, ... at each scene change)

    @property
    def fs_path(self) -> str:
        """The path to open: ``path`` itself, or the exact bytes of a name that is not UTF-8."""
        return os.fsdecode(self.raw_path) if self.raw_path is not None else self.path


FILE_COLUMNS = ", ".join(f.name for f in dataclasses.fields(FileRecord))  # files' columns, in FileRecord's order
FAILURE_KINDS = ("transient", "limit", "permanent")
# Where a file's taken_at came from. 'exif': the photo's EXIF date. 'mtime': the file's mtime,
# its EXIF not read yet (migration 006 dated every photo indexed before it so; the next
# `clipdex index` reads their EXIF once). 'mtime-no-exif': the file's mtime, its EXIF read
# and holding no date. 'import': what an import said.
TAKEN_EXIF, TAKEN_MTIME, TAKEN_NO_EXIF, TAKEN_IMPORT = "exif", "mtime", "mtime-no-exif", "import"
TAKEN_SOURCES = (TAKEN_EXIF, TAKEN_MTIME, TAKEN_NO_EXIF, TAKEN_IMPORT)


@dataclass(frozen=True)
class NewFile:
    """A file to record after a batch: indexed (``reason`` None) or failed."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    raw_path: bytes | None = None  # the exact OS bytes when ``path`` is a display form
    failure_kind: str | None = None  # one of FAILURE_KINDS when ``reason`` is set
    failure_limit: float | None = None  # the --max-megapixels a 'limit' failure was judged by
    # When it was taken, local wall-clock time 'YYYY-MM-DDTHH:MM:SS' (EXIF DateTimeOriginal),
    # and where that came from ('exif', 'import'). taken_at None: the file's mtime is stored,
    # with taken_source, or 'mtime' (EXIF not read) when that is None too.
    taken_at: str | None = None
    taken_source: str | None = None


@dataclass(frozen=True)
class VideoSampling:
    """How a video was sampled: its length, the --video-interval used, its codec and frame rate."""

    duration: float
    interval: float
    codec: str | None = None
    fps: float | None = None


@dataclass(frozen=True)
class VideoFrame:
    """A kept frame of a video: its time (seconds), content hash (clipdex.video.frame_hash), shot."""

    t: float
    content_hash: str
    scene: int = 0


@dataclass
class SampledVideo:
    """A video sampled before: how, and its kept frames by time."""

    sampling: VideoSampling
    frames: list[VideoFrame]


@dataclass(frozen=True)
class Searchable:
    """The photos one model can search: ids, paths, content hashes and vectors, row-aligned."""

    ids: np.ndarray
    paths: list[str]
    hashes: list[str]
    vectors: np.ndarray
    # The paths to open, row-aligned, only when some differ from ``paths`` (a name that is
    # not UTF-8 opens by its real bytes); None when every path opens as shown.
    fs_paths: list[str] | None = None

    def fs_path(self, i: int) -> str:
        """The path to open for row ``i``."""
        return self.fs_paths[i] if self.fs_paths is not None else self.paths[i]


@dataclass(frozen=True)
class StoredPredictions:
    """One label set's stored results, row-aligned, sorted by path."""

    definition: str
    labels: list[str]
    file_ids: list[int]
    paths: list[str]
    predicted: list[str]
    confidence: np.ndarray
    probs: np.ndarray
    hashes: list[str]
    fs_paths: list[str] | None = None  # as in :class:`Searchable`: None when every path opens as shown

    def fs_path(self, i: int) -> str:
        """The path to open for row ``i``."""
        return self.fs_paths[i] if self.fs_paths is not None else self.paths[i]


@dataclass(frozen=True)
class VectorDamage:
    """One model's vectors that the catalog counts on but the vector file cannot give back."""

    model: ModelRecord
    check: VectorCheck
    lost_hashes: list[str]  # content hashes whose vector row is missing or not a unit vector
    photos: int  # indexed photos (outside missing folders) with one of those hashes
    roots: list[str]  # the indexed folders those photos are in

    def describe(self) -> str:
        c = self.check
        name = os.path.join("vectors", c.path.name)
        if c.missing:
            what = f"{name} is missing (the catalog committed {c.expected_rows} rows)"
        elif c.file_rows < c.expected_rows:
            what = (f"{name} holds {c.file_rows} complete rows, the catalog committed "
                    f"{c.expected_rows}")
        else:
            what = f"{name} has {len(c.bad_rows)} rows that are not unit vectors (zeroed or garbage)"
        return f"{what}: {self.photos} photos lost their {self.model.name} vector"

    def fix(self, index: Path | None = None) -> str:
        option = index_option(index) if index else ""
        folders = " and ".join(f"`clipdex index {r}{option}`" for r in self.roots or ["FOLDER"])
        return f"Run {folders} to re-encode the {self.photos} lost photos."


@guarded
class Store:
    """An index folder opened for reading and, under :meth:`writing`, for writing.

    Every public method turns SQLite and OS errors into :class:`IndexDamaged`
    or :class:`IndexStorageError` (see :mod:`clipdex.store.guard`).
    """

    _unguarded = ("transaction", "snapshot", "close", "release_lock")

    def __init__(self, path: Path, conn: sqlite3.Connection, *, readonly: bool = False,
                 readonly_reason: str = "") -> None:
        self.path = path
        self.conn = conn
        self.readonly = readonly
        self.readonly_reason = readonly_reason
        self._lock_fd: int | None = None
        self._checks: dict[int, tuple[tuple[int, ...], VectorCheck]] = {}
        self._recheck: dict[int, int] = {}  # model id -> first bad row a read found below checked_rows
        self.damage_found = 0  # how many times a read found lost vectors (status caches key on it)

    # -- opening --------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = False,
             readonly: bool | None = None) -> "Store":
        """Open the index at ``path``; with ``create``, make it if it does not exist.

        ``readonly`` None (the default) opens for writing where the index can be
        written and for reading where it cannot (read-only mount, no permission);
        True never writes. Raises :class:`IndexDamaged` for a catalog that is not
        a SQLite database, or empty while ``vectors/`` holds vectors.
        """
        folder = Path(path).expanduser().resolve()
        catalog = folder / CATALOG_NAME
        with storage_errors(folder, doing="opening the index"):
            if not catalog.exists():
                _check_no_vectors(folder, f"its catalog {CATALOG_NAME} is missing")
                if not create or readonly:
                    raise IndexNotFound(folder)
                folder.mkdir(parents=True, exist_ok=True)
            else:
                _check_header(folder, catalog)
            reason = ""
            if readonly is None:
                reason = _not_writable(folder, catalog)
            elif readonly:
                reason = "opened read-only"
            conn: sqlite3.Connection | None = None
            if not reason:
                try:
                    conn = _connect_writable(catalog)
                except sqlite3.OperationalError as e:
                    if readonly is not None or not _is_read_only_error(e):
                        raise translate_sqlite_error(folder, e) from e
                    reason = str(e)
            if conn is None:
                conn = _connect_read_only(folder, catalog)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > LATEST_VERSION:
                    raise IndexVersionError(folder, version, LATEST_VERSION)
                if version < LATEST_VERSION:
                    if reason:
                        raise IndexStorageError(
                            folder, f"the index has schema version {version} and this clipdex "
                            f"needs {LATEST_VERSION}, but it is read-only ({reason}) and cannot be "
                            "upgraded", "Open it once with write access to upgrade it, or use the "
                            "clipdex version that wrote it.")
                    migrate(conn)
            except sqlite3.Error as e:
                conn.close()
                raise translate_sqlite_error(folder, e) from e
            except BaseException:
                conn.close()
                raise
        return cls(folder, conn, readonly=bool(reason), readonly_reason=reason)

    def close(self) -> None:
        self.release_lock()
        self.conn.close()

    def require_writable(self) -> None:
        """Raise :class:`IndexStorageError` if the index was opened read-only."""
        if self.readonly:
            raise read_only_problem(self.path, self.readonly_reason)

    # -- the writer's lock ----------------------------------------------------
    def acquire_lock(self, *, wait: bool = False) -> None:
        """Become the index's one writer, or raise :class:`IndexLocked` (unless ``wait``)."""
        import fcntl

        self.require_writable()
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise translate_os_error(self.path, e, f"opening {self.path / LOCK_NAME}") from e
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise IndexLocked(self.path, holder) from None
                time.sleep(LOCK_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%H:%M:%S')}".encode(), 0)
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.require_writable()
        retry_busy(lambda: self.conn.execute("BEGIN IMMEDIATE"))
        try:
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every statement inside sees the same committed catalog.

        Another process may commit an indexing batch between any two statements
        (WAL lets it). Reads that must agree (a model's committed ``rows`` and the
        embeddings pointing into its vector file; a label set and its predictions;
        the counts of a status) are made inside one snapshot. Inside a transaction
        or another snapshot, it joins that one.
        """
        if self.conn.in_transaction:
            yield self.conn
            return
        with storage_errors(self.path, self.conn, "reading the catalog"):
            self.conn.execute("BEGIN")
        try:
            yield self.conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            raise
        with storage_errors(self.path, self.conn, "reading the catalog"):
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")  # ends the read; there is nothing to write
        self._lower_checked_rows()

    def stamp(self) -> tuple[int, int]:
        """Changes when anyone (this connection or another process) writes the catalog."""
        return (self.conn.total_changes, self.conn.execute("PRAGMA data_version").fetchone()[0])

    # -- models ---------------------------------------------------------------
    def models(self) -> list[ModelRecord]:
        rows = self.conn.execute("SELECT * FROM models ORDER BY id").fetchall()
        return [_model(r) for r in rows]

    def get_model(self, key: str) -> ModelRecord | None:
        row = self.conn.execute("SELECT * FROM models WHERE key = ?", (key,)).fetchone()
        return _model(row) if row else None

    def _current(self, model: ModelRecord) -> ModelRecord:
        """``model`` as the catalog holds it now (inside a snapshot: as of that snapshot)."""
        row = self.conn.execute("SELECT * FROM models WHERE id = ?", (model.id,)).fetchone()
        return _model(row) if row else model

    def add_model(self, key: str, name: str, spec_json: str, dim: int, logit_scale: float,
                  precision: str, storage: str = "f32", logit_bias: float | None = None) -> ModelRecord:
        """Register a model (or get it, if another process registered it first).

        ``storage`` is how its vector file keeps rows: "f32", or "f16" (half the disk and
        memory, scores within ~1e-3). A model registered before keeps its own storage.
        ``logit_bias`` is the bias of a model trained with a sigmoid loss (SigLIP), whose
        labels are scored each on its own; None for a softmax model (CLIP)."""
        storage_dtype(storage)  # ValueError for an unknown storage
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO models (key, name, spec, dim, logit_scale, rows, precision, "
                "vectors_file, created_at, storage, logit_bias) VALUES (?, ?, ?, ?, ?, 0, ?, '', ?, ?, ?) "
                "ON CONFLICT(key) DO NOTHING",
                (key, name, spec_json, dim, logit_scale, precision, time.time(), storage,
                 None if logit_bias is None else float(logit_bias)))
            if cur.rowcount:
                model_id = cur.lastrowid
                c.execute("UPDATE models SET vectors_file = ? WHERE id = ?",
                          (f"vectors/model-{model_id}.{storage}", model_id))
        record = self.get_model(key)
        assert record is not None
        return record

    def update_model_spec(self, model_id: int, spec_json: str, name: str) -> None:
        """A model's weights found in a new place: its spec, and its name (which may hold the path)."""
        with self.transaction() as c:
            c.execute("UPDATE models SET spec = ?, name = ? WHERE id = ?", (spec_json, name, model_id))

    def set_scoring(self, model_id: int, logit_scale: float, logit_bias: float | None) -> None:
        """A model's scoring as its weights say, for a record made without them (an index from
        before biases were kept, or vectors imported where the weights were not on disk)."""
        with self.transaction() as c:
            c.execute("UPDATE models SET logit_scale = ?, logit_bias = ? WHERE id = ?",
                      (float(logit_scale), None if logit_bias is None else float(logit_bias), model_id))

    # -- probes (see clipdex.models.probe) ---------------------------------------
    def model_probe(self, model_id: int) -> ModelProbe | None:
        """The model's recorded probe (None: none recorded yet, e.g. an index from before 009)."""
        row = self.conn.execute("SELECT dim, probe, probe_sources FROM models WHERE id = ?",
                                (model_id,)).fetchone()
        if row is None or row["probe"] is None:
            return None
        return _probe(row["probe"], row["dim"], row["probe_sources"], self.path)

    def record_probe(self, model_id: int, vectors: np.ndarray, source: str,
                     towers: Sequence[str]) -> ModelProbe:
        """Record ``vectors`` as the model's probe, given by ``source``, where it has none; returns
        the probe the model has then (another process's, when it recorded one first)."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        sources = json.dumps([_probe_source_json(ProbeSource(source, tuple(towers), None, time.time()))])
        with self.transaction() as c:
            c.execute("UPDATE models SET probe = ?, probe_sources = ? WHERE id = ? AND probe IS NULL",
                      (vectors.tobytes(), sources, model_id))
        probe = self.model_probe(model_id)
        assert probe is not None
        return probe

    def add_probe_source(self, model_id: int, source: str, towers: Sequence[str], cosine: float) -> None:
        """Record that ``source`` gave the model's probe on ``towers`` (with least cosine
        ``cosine``), beside the towers it was checked on before."""
        with self.transaction() as c:
            row = c.execute("SELECT probe_sources FROM models WHERE id = ?", (model_id,)).fetchone()
            known = _probe_sources(row["probe_sources"] if row else None, self.path)
            old = next((s for s in known if s.source == source), None)
            merged = tuple(sorted(set(towers) | set(old.towers if old else ())))
            worst = cosine if old is None or old.cosine is None else min(cosine, old.cosine)
            entry = ProbeSource(source, merged, None if old is not None and old.cosine is None else worst,
                                time.time())
            updated = [entry if s.source == source else s for s in known] + ([] if old else [entry])
            c.execute("UPDATE models SET probe_sources = ? WHERE id = ?",
                      (json.dumps([_probe_source_json(s) for s in updated]), model_id))

    # -- precisions (see clipdex.models.auto) -----------------------------------
    def precision_counts(self, model: ModelRecord) -> dict[str, int]:
        """How many of ``model``'s vectors some indexed photo uses, per precision they were
        computed in (a vector from before precisions were recorded counts as the model's)."""
        rows = self.conn.execute(
            "SELECT coalesce(e.precision, m.precision), count(*) FROM embeddings e JOIN models m "
            "ON m.id = e.model_id WHERE e.model_id = ? AND EXISTS (SELECT 1 FROM files f "
            "WHERE f.content_hash = e.content_hash AND f.status = 'ok') GROUP BY 1 ORDER BY 2 DESC, 1",
            (model.id,)).fetchall()
        return {r[0]: r[1] for r in rows}

    def get_precision_choice(self, model_id: int, host: str) -> "PrecisionChoice | None":
        """What ``--precision auto`` chose for a model on ``host`` (None: never chosen there)."""
        row = self.conn.execute("SELECT * FROM precision_choices WHERE model_id = ? AND host = ?",
                                (model_id, host)).fetchone()
        return _choice(row) if row else None

    def precision_choices(self, model_id: int) -> list["PrecisionChoice"]:
        """Every choice recorded for a model, one per kind of host, oldest first."""
        rows = self.conn.execute("SELECT * FROM precision_choices WHERE model_id = ? ORDER BY chosen_at",
                                 (model_id,)).fetchall()
        return [_choice(r) for r in rows]

    def set_precision_choice(self, model_id: int, choice: "PrecisionChoice") -> "PrecisionChoice":
        """Record ``choice`` for the model on its host (replacing an earlier one there);
        returns it with the time it was recorded."""
        chosen_at = time.time()
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO precision_choices (model_id, host, precision, runtime, reason, "
                      "cosine, speedup, photos, min_cosine, chosen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (model_id, choice.host, choice.precision, choice.runtime, choice.reason, choice.cosine,
                       choice.speedup, choice.photos, choice.min_cosine, chosen_at))
        return dataclasses.replace(choice, chosen_at=chosen_at)

    def vector_file(self, model: ModelRecord) -> VectorFile:
        return VectorFile(self.path / model.vectors_file, model.dim, model.storage)

    def used_rows(self, model: ModelRecord) -> int:
        """How many of ``model``'s vectors some indexed photo uses (an SQL count: no file read).

        Photos in folders that are missing for now count as used: they come back when the
        disk is mounted again."""
        return self.conn.execute(
            "SELECT count(*) FROM embeddings e WHERE e.model_id = ? AND EXISTS (SELECT 1 FROM files f "
            "WHERE f.content_hash = e.content_hash AND f.status = 'ok')", (model.id,)).fetchone()[0]

    def reclaimable(self, model: ModelRecord) -> tuple[int, int]:
        """(rows, bytes) of ``model``'s vector file that no indexed photo uses any more (removed,
        changed or replaced photos): what `clipdex compact` frees. SQL counts, no file read."""
        with self.snapshot():
            model = self._current(model)
            rows = max(model.rows - self.used_rows(model), 0)
        return rows, rows * self.vector_file(model).row_bytes

    def embedded_hashes(self, model: ModelRecord) -> dict[str, int]:
        """content hash -> vector row, for every vector of ``model``."""
        rows = self.conn.execute("SELECT content_hash, row FROM embeddings WHERE model_id = ?",
                                 (model.id,))
        return {h: r for h, r in rows}

    # -- vector integrity -----------------------------------------------------
    def check_vectors(self, model: ModelRecord) -> VectorCheck:
        """The model's vector file against the catalog, every row read and checked to be a
        unit vector: O(rows x dim) (cached while the file and ``model.rows`` are unchanged)."""
        key = self._file_key(model)
        cached = self._checks.get(model.id)
        if cached is None or cached[0] != key:
            cached = (key, self.vector_file(model).check(model.rows))
            self._checks[model.id] = cached
        return cached[1]

    def vectors_stamp(self) -> tuple[object, ...]:
        """Changes when a vector file changes (one ``stat`` per model) or a read found damage."""
        return (self.damage_found, *(self._file_key(m) for m in self.models()))

    def _file_key(self, model: ModelRecord) -> tuple[int, ...]:
        try:
            st = os.stat(self.vector_file(model).path)
        except FileNotFoundError:
            return (model.rows, -1)
        return (model.rows, st.st_size, st.st_mtime_ns, st.st_ino)

    def _length_check(self, model: ModelRecord) -> VectorCheck:
        """The vector file's length against the catalog (one ``stat``), with the rows a full
        check of this very file found bad, if one was made."""
        cached = self._checks.get(model.id)
        if cached is not None and cached[0] == self._file_key(model):
            return cached[1]
        vectors = self.vector_file(model)
        on_disk = vectors.file_rows()
        return VectorCheck(path=vectors.path, expected_rows=model.rows, file_rows=on_disk or 0,
                           missing=on_disk is None and model.rows > 0, bad_rows=np.zeros(0, np.int64))

    def vector_damage(self, model: ModelRecord, hidden_roots: Sequence[str] | None = None, *,
                      full: bool = False) -> VectorDamage | None:
        """What the model's vector file lost, or None when every vector the catalog uses is sound.

        By default only the file's length is compared with the catalog (O(1): a
        missing or truncated file), plus rows an earlier full check of the same
        file found bad; searching checks every row it loads. ``full`` reads and
        checks every row (O(rows x dim)). The model's committed rows and its
        embeddings are read in one snapshot, so a batch another process commits
        meanwhile is never taken for a lost vector.
        """
        with self.snapshot() as c:
            model = self._current(model)
            check = self.check_vectors(model) if full else self._length_check(model)
            if check.sound:
                return None
            if len(check.bad_rows):
                self._recheck[model.id] = int(check.bad_rows.min())
            if len(check.bad_rows):
                rows = c.execute("SELECT content_hash, row FROM embeddings WHERE model_id = ?",
                                 (model.id,)).fetchall()
                ok = check.row_ok(np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows)))
                lost = [r[0] for r, good in zip(rows, ok) if not good]
            else:
                lost = [r[0] for r in c.execute(
                    "SELECT content_hash FROM embeddings WHERE model_id = ? AND row >= ?",
                    (model.id, check.readable_rows))]
            if not lost:
                return None
            return self._damage(model, check, lost, hidden_roots)

    def _damage(self, model: ModelRecord, check: VectorCheck, lost: list[str],
                hidden_roots: Sequence[str] | None) -> VectorDamage:
        hidden = self.missing_roots() if hidden_roots is None else list(hidden_roots)
        lost_set = set(lost)
        paths = [p for p, h in self.conn.execute(
            "SELECT path, content_hash FROM files WHERE status = 'ok' AND content_hash IS NOT NULL")
            if h in lost_set and not _under_any(p, hidden)]
        return VectorDamage(model=model, check=check, lost_hashes=lost, photos=len(paths),
                            roots=_roots_of(paths, self.roots()))

    def _damaged(self, damage: VectorDamage) -> IndexDamaged:
        return IndexDamaged(self.path, damage.describe(), damage.fix(self.path))

    def repair_vectors(self, model: ModelRecord) -> int:
        """Forget the vectors the file lost, so that indexing encodes those photos again.

        Embeddings that point past the file's end or at rows that are not unit
        vectors are deleted; a short file's committed rows shrink to what it
        holds (the next append continues there, never after zeros; the model's
        generation is bumped, as row numbers past that point will name new
        vectors). Only rows from ``models.checked_rows`` on are read (the rows an
        earlier run found sound are not read again: a run at a million rows would
        read 2 GB), plus the file's length; ``status --verify`` reads every row.
        Returns how many vectors were forgotten. Call it holding the writer's lock.
        """
        model = self._current(model)
        checked = self.checked_rows(model)
        check = self.vector_file(model).check(model.rows, start=checked)
        if check.sound:
            if checked != model.rows:
                with self.transaction() as c:
                    c.execute("UPDATE models SET checked_rows = ? WHERE id = ? AND rows = ?",
                              (model.rows, model.id, model.rows))
            return 0
        readable = check.readable_rows
        with self.transaction() as c:
            forgotten = c.execute("DELETE FROM embeddings WHERE model_id = ? AND row >= ?",
                                  (model.id, readable)).rowcount
            if len(check.bad_rows):
                forgotten += c.executemany(
                    "DELETE FROM embeddings WHERE model_id = ? AND row = ?",
                    [(model.id, int(r)) for r in check.bad_rows]).rowcount
            shrinks = int(readable < model.rows)
            c.execute("UPDATE models SET rows = ?, checked_rows = ?, generation = generation + ? "
                      "WHERE id = ?", (readable, readable, shrinks, model.id))
        self._checks.pop(model.id, None)
        return max(forgotten, 0)

    def _lower_checked_rows(self) -> None:
        """Make the next index run read again the rows a full check found bad below
        ``checked_rows`` (bit rot in rows an earlier run found sound), so that it forgets
        and re-encodes them. Best effort, after the read that found them: a read-only
        index, or one busy for 30 s, is repaired by the run that can write it."""
        if not self._recheck or self.conn.in_transaction or self.readonly:
            return
        pending, self._recheck = self._recheck, {}
        with contextlib.suppress(sqlite3.Error, ClipdexError), self.transaction() as c:
            c.executemany("UPDATE models SET checked_rows = min(checked_rows, ?) WHERE id = ?",
                          [(row, model_id) for model_id, row in pending.items()])

    def checked_rows(self, model: ModelRecord) -> int:
        """How many of ``model``'s first rows a check found sound (at most its committed rows)."""
        row = self.conn.execute("SELECT checked_rows, rows FROM models WHERE id = ?", (model.id,)).fetchone()
        return min(row[0], row[1]) if row else 0

    # -- compaction (see clipdex.store.compact) -------------------------------
    def rows_in_use(self, model: ModelRecord) -> tuple[ModelRecord, np.ndarray, int]:
        """(``model`` as the catalog holds it now, the vector rows some indexed photo uses in
        ascending order, how many embeddings no photo uses): one pass over its embeddings,
        read in one snapshot."""
        with self.snapshot() as c:
            model = self._current(model)
            cursor = c.cursor()
            cursor.row_factory = None
            pairs = cursor.execute(
                "SELECT e.row, EXISTS (SELECT 1 FROM files f WHERE f.content_hash = e.content_hash "
                "AND f.status = 'ok') FROM embeddings e WHERE e.model_id = ? ORDER BY e.row",
                (model.id,)).fetchall()
        table = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        used = table[:, 1].astype(bool)
        return model, np.unique(table[used, 0]), int((~used).sum())

    def renumber_vectors(self, model: ModelRecord, kept: np.ndarray, vectors_file: str,
                         generation: int) -> ModelRecord:
        """Point ``model`` at a compacted vector file, in one transaction: row ``kept[i]``
        becomes row ``i``, embeddings of rows not kept are dropped, ``rows``,
        ``checked_rows`` (the copy checked every row), ``vectors_file`` and ``generation``
        are set. Raises RuntimeError if the model changed since ``model`` was read (a writer
        without the lock). Call it holding the writer's lock."""
        with self.transaction() as c:
            now = c.execute("SELECT rows, generation, vectors_file FROM models WHERE id = ?",
                            (model.id,)).fetchone()
            if tuple(now) != (model.rows, model.generation, model.vectors_file):
                raise RuntimeError(f"model {model.key} changed while it was compacted")
            c.execute("CREATE TEMP TABLE IF NOT EXISTS renumbered "
                      "(old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
            c.execute("DELETE FROM renumbered")
            c.executemany("INSERT INTO renumbered (old, new) VALUES (?, ?)",
                          zip(kept.tolist(), range(len(kept))))
            c.execute("DELETE FROM embeddings WHERE model_id = ? AND row NOT IN (SELECT old FROM renumbered)",
                      (model.id,))
            c.execute("UPDATE embeddings SET row = (SELECT new FROM renumbered WHERE old = embeddings.row) "
                      "WHERE model_id = ?", (model.id,))
            c.execute("UPDATE models SET rows = ?, checked_rows = ?, vectors_file = ?, generation = ? "
                      "WHERE id = ?", (len(kept), len(kept), vectors_file, generation, model.id))
            c.execute("DELETE FROM renumbered")
        self._checks.pop(model.id, None)
        updated = self.get_model(model.key)
        assert updated is not None
        return updated

    # -- roots and files ------------------------------------------------------
    def add_root(self, root: str, kind: str = "folder") -> None:
        """Record an indexed folder (``kind`` "folder"), or the folder of imported
        embeddings ("import": never hidden as missing, its images may live elsewhere).
        Indexing a folder that was imported makes it a folder."""
        with self.transaction() as c:
            c.execute("INSERT INTO roots (path, added_at, kind) VALUES (?, ?, ?) ON CONFLICT(path) "
                      "DO UPDATE SET kind = 'folder' WHERE excluded.kind = 'folder'",
                      (display_path(root), time.time(), kind))

    def mark_root_indexed(self, root: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE roots SET last_indexed_at = ? WHERE path = ?",
                      (time.time(), display_path(root)))

    def roots(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT path FROM roots ORDER BY path")]

    def missing_roots(self) -> list[str]:
        """Indexed folders that no longer exist (moved, deleted or unmounted); the folders of
        imported embeddings are never missing (their images may live on another machine)."""
        rows = self.conn.execute("SELECT path FROM roots WHERE kind = 'folder' ORDER BY path")
        return [r[0] for r in rows if not _is_dir(r[0])]

    def root_kinds(self) -> dict[str, str]:
        """Every root with its kind ("folder" or "import")."""
        return {r[0]: r[1] for r in self.conn.execute("SELECT path, kind FROM roots ORDER BY path")}

    def remove_root(self, root: str) -> int:
        """Forget ``root`` and the files under it (vectors stay, for reuse by content hash).

        Files under another indexed folder inside ``root`` stay with that folder;
        when a folder that holds ``root`` is indexed too, its files stay with it.
        Returns how many indexed photos the index forgot.
        """
        root = display_path(root)
        others = [r for r in self.roots() if r != root]
        keep = [r for r in others if is_under(r, root)]  # nested roots keep their files
        with self.transaction() as c:
            c.execute("DELETE FROM roots WHERE path = ?", (root,))
            if any(is_under(root, r) for r in others):
                return 0  # an enclosing indexed folder still holds these files
            under, args = _under_sql([root])
            outside, outside_args = _outside(keep, "path")
            gone = c.execute(f"SELECT path, status FROM files WHERE {under}{outside} AND video_id IS NULL",
                             (*args, *outside_args)).fetchall()
            c.executemany("DELETE FROM files WHERE path = ?", [(p,) for p, _ in gone])  # frames go with videos
        return sum(1 for _, s in gone if s == "ok")

    def files_under(self, root: str) -> dict[str, FileRecord]:
        """Every file under ``root``, by path (what an index run compares the walk with).

        Rows come back as plain tuples, made into records by position: at a million
        files, name lookups on row objects cost more than the query."""
        condition, args = _under_sql([root])
        cursor = self.conn.cursor()
        cursor.row_factory = None
        rows = cursor.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE {condition} AND video_id IS NULL", args)
        return {r[1]: FileRecord(*r) for r in rows}

    def file_by_path(self, path: str) -> FileRecord | None:
        """The file at ``path``: its display form, or its real name (not UTF-8) as the OS gives it."""
        row = self.conn.execute("SELECT * FROM files WHERE path = ?",
                                (display_path(path),)).fetchone()
        return _file(row) if row else None

    def files_named(self, name: str) -> list[FileRecord]:
        """Files whose name or stem is ``name`` (how people refer to a photo they know).

        A name that is not valid UTF-8 matches by its real bytes and by its
        display form (``\\xNN`` escapes) alike."""
        name = display_path(name)
        rows = self.conn.execute(
            "SELECT * FROM files WHERE status = 'ok' AND video_id IS NULL AND (path LIKE ? ESCAPE '\\' OR "
            "path LIKE ? ESCAPE '\\') ORDER BY path", (f"%/{_like(name)}", f"%/{_like(name)}.%"))
        return [_file(r) for r in rows]

    def sizes_of_hashes(self, hashes: Iterable[str]) -> dict[str, tuple[int | None, int | None]]:
        """(width, height) recorded for each content hash an indexed file has (one query per
        500 hashes: a moved folder's reused photos are not looked up one by one)."""
        wanted = list(dict.fromkeys(hashes))
        sizes: dict[str, tuple[int | None, int | None]] = {}
        for start in range(0, len(wanted), SQL_CHUNK):
            chunk = wanted[start:start + SQL_CHUNK]
            rows = self.conn.execute(
                f"SELECT content_hash, width, height FROM files WHERE status = 'ok' AND content_hash IN "
                f"({', '.join('?' * len(chunk))})", chunk)
            for content_hash, width, height in rows:
                sizes.setdefault(content_hash, (width, height))
        return sizes

    def commit_batch(self, model: ModelRecord, vectors: np.ndarray, hashes: Sequence[str],
                     files: Sequence[NewFile], precision: str | None = None) -> ModelRecord:
        """Store a batch atomically: new vectors for ``hashes``, then the file rows.

        The vectors reach the disk first; the catalog's commit then makes them
        count. A kill between the two leaves unreferenced rows that the next
        append overwrites. A vector file shorter than its committed rows is
        refused (:class:`IndexDamaged`), never grown with zeros. ``precision`` is what
        the vectors were computed in (None: the model's own).
        """
        self.require_writable()
        current = self.conn.execute("SELECT rows FROM models WHERE id = ?", (model.id,)).fetchone()[0]
        if len(hashes):
            vector_file = self.vector_file(model)
            try:
                vector_file.append(current, vectors)
            except ShortVectorFile as e:
                check = VectorCheck(path=e.path, expected_rows=e.expected, file_rows=e.actual,
                                    missing=e.missing, bad_rows=np.zeros(0, np.int64))
                damage = self.vector_damage(model) or self._damage(model, check, [], None)
                raise self._damaged(damage) from None
            except OSError as e:
                raise translate_os_error(self.path, e, f"writing {vector_file.path}") from e
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO embeddings (model_id, content_hash, row, precision) VALUES (?, ?, ?, ?)",
                [(model.id, h, current + i, precision) for i, h in enumerate(hashes)])
            c.execute("UPDATE models SET rows = ? WHERE id = ?", (current + len(hashes), model.id))
            self._upsert_files(c, files, now)
        updated = self.get_model(model.key)
        assert updated is not None
        return updated

    @staticmethod
    def _upsert_files(c: sqlite3.Connection, files: Sequence[NewFile], now: float) -> None:
        """Insert or update the rows of ``files`` (by path), indexed or failed."""
        c.executemany(
            "INSERT INTO files (path, size, mtime_ns, content_hash, width, height, status, "
            "reason, indexed_at, raw_path, failure_kind, failure_limit, taken_at, taken_source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE "
            "SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "content_hash = excluded.content_hash, width = excluded.width, "
            "height = excluded.height, status = excluded.status, reason = excluded.reason, "
            "indexed_at = excluded.indexed_at, raw_path = excluded.raw_path, "
            "failure_kind = excluded.failure_kind, failure_limit = excluded.failure_limit, "
            "taken_at = excluded.taken_at, taken_source = excluded.taken_source",
            [(display_path(f.path), f.size, f.mtime_ns, f.content_hash, f.width, f.height,
              "failed" if f.reason else "ok", f.reason, now, _raw(f),
              (f.failure_kind or "permanent") if f.reason else None,
              f.failure_limit if f.reason else None, *_taken(f)) for f in files])

    def set_taken_dates(self, dates: Sequence[tuple[str, str | None]]) -> None:
        """Record what reading the EXIF of files indexed before found: (path, taken_at) with
        the EXIF date ('exif'), or None when it holds none (the mtime date stays, now
        'mtime-no-exif': never read again). Files changed since are left alone."""
        with self.transaction() as c:
            c.executemany(
                "UPDATE files SET taken_at = coalesce(?, taken_at), taken_source = ? "
                "WHERE path = ? AND taken_source = ?",
                [(taken, TAKEN_EXIF if taken else TAKEN_NO_EXIF, display_path(path), TAKEN_MTIME)
                 for path, taken in dates])

    def remove_files(self, paths: Sequence[str]) -> None:
        with self.transaction() as c:
            c.executemany("DELETE FROM files WHERE path = ?", [(display_path(p),) for p in paths])

    # -- reading for search ---------------------------------------------------
    def searchable(self, model: ModelRecord, hidden_roots: Sequence[str] | None = None) -> "Searchable":
        """Every indexed file that has a vector of ``model``, sorted by path.

        Files under ``hidden_roots`` (default: the indexed folders that no longer
        exist) are left out. The model's committed rows and the embeddings are read
        in one snapshot: an indexer committing batches meanwhile (another process)
        is never mistaken for damage. Raises :class:`IndexDamaged` when a vector is
        lost: past the end of its file, or not a unit vector.
        """
        hidden = self.missing_roots() if hidden_roots is None else list(hidden_roots)
        where, args = _outside(hidden)
        with self.snapshot() as c:
            model = self._current(model)
            cursor = c.cursor()
            cursor.row_factory = None  # plain tuples: a row object per photo costs more than the read
            rows = cursor.execute(
                "SELECT f.id, f.path, f.content_hash, e.row, f.raw_path FROM files f JOIN embeddings e "
                "ON e.content_hash = f.content_hash AND e.model_id = ? "
                f"WHERE f.status = 'ok'{where} ORDER BY f.path", (model.id, *args)).fetchall()
        if not rows:
            return Searchable(ids=np.zeros(0, np.int64), paths=[], hashes=[],
                              vectors=np.zeros((0, model.dim), dtype=np.float32))
        ids, paths, hashes, vector_rows, raws = zip(*rows)  # columns, without a loop per row
        vectors = self._gather(model, np.array(vector_rows, dtype=np.int64), hashes, hidden)
        return Searchable(ids=np.array(ids, dtype=np.int64), paths=list(paths), hashes=list(hashes),
                          vectors=vectors, fs_paths=_fs_paths(paths, raws))

    def _gather(self, model: ModelRecord, vector_rows: np.ndarray, hashes: Sequence[str],
                hidden: Sequence[str]) -> np.ndarray:
        """The vectors at ``vector_rows`` (of the content ``hashes``), each checked: on disk
        and a unit vector. ``model`` must come from the snapshot the rows were read in."""
        if not len(vector_rows):
            return np.zeros((0, model.dim), dtype=np.float32)
        vector_file = self.vector_file(model)
        on_disk = vector_file.file_rows()
        usable = min(on_disk or 0, model.rows)
        past = vector_rows >= usable
        if past.any():
            raise self._lost(model, hashes, past, hidden, on_disk, np.zeros(0, np.int64))
        try:
            matrix = vector_file.take(vector_rows)
        except ShortVectorFile as e:  # truncated since it was measured
            past = vector_rows >= e.actual
            raise self._lost(model, hashes, past if past.any() else vector_rows == vector_rows.max(),
                             hidden, None if e.missing else e.actual, np.zeros(0, np.int64)) from None
        good = unit_rows(matrix)
        if not good.all():
            self._checks.pop(model.id, None)  # the file changed under a cached check
            raise self._lost(model, hashes, ~good, hidden, on_disk, np.unique(vector_rows[~good]))
        return matrix

    def _lost(self, model: ModelRecord, hashes: Sequence[str], lost: np.ndarray, hidden: Sequence[str],
              on_disk: int | None, bad_rows: np.ndarray) -> IndexDamaged:
        """The error for vectors a read found lost (``lost``: a mask over ``hashes``, never empty).

        The whole file is checked to say how many photos lost their vector; should
        that check find nothing (the file was repaired meanwhile), the error names
        what this read found."""
        self.damage_found += 1
        damage = self.vector_damage(model, hidden, full=True)
        if damage is None:
            check = VectorCheck(path=self.vector_file(model).path, expected_rows=model.rows,
                                file_rows=on_disk or 0, missing=on_disk is None, bad_rows=bad_rows)
            damage = self._damage(model, check, [hashes[int(i)] for i in np.flatnonzero(lost)], hidden)
        return self._damaged(damage)

    def vector_for_hash(self, model: ModelRecord, content_hash: str) -> np.ndarray | None:
        """The stored vector of ``content_hash`` (None when ``model`` has none)."""
        with self.snapshot() as c:
            model = self._current(model)
            row = c.execute("SELECT row FROM embeddings WHERE model_id = ? AND content_hash = ?",
                            (model.id, content_hash)).fetchone()
        if row is None:
            return None
        return np.array(self._gather(model, np.array([row[0]], dtype=np.int64), [content_hash], [])[0])

    # -- classifications ------------------------------------------------------
    def save_predictions(self, model: ModelRecord, name: str, definition: str, labels: Sequence[str],
                         hashes: Sequence[str], predicted: Sequence[str], confidence: np.ndarray,
                         probs: np.ndarray) -> None:
        """Replace label set ``name``'s predictions for ``model`` (keyed by content hash)."""
        probs32 = np.ascontiguousarray(probs, dtype="<f4")
        with self.transaction() as c:
            c.execute("DELETE FROM label_sets WHERE model_id = ? AND name = ?", (model.id, name))
            set_id = c.execute(
                "INSERT INTO label_sets (model_id, name, definition, labels, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (model.id, name, definition, json.dumps(list(labels)), time.time())).lastrowid
            c.executemany(
                "INSERT OR REPLACE INTO predictions (set_id, content_hash, label, prob, probs) "
                "VALUES (?, ?, ?, ?, ?)",
                [(set_id, h, p, float(c_), probs32[i].tobytes())
                 for i, (h, p, c_) in enumerate(zip(hashes, predicted, confidence))])

    def label_sets(self, model: ModelRecord) -> list[tuple[str, str, list[str]]]:
        """(name, definition JSON, labels) of every stored label set of ``model``."""
        rows = self.conn.execute("SELECT name, definition, labels FROM label_sets WHERE model_id = ? "
                                 "ORDER BY created_at", (model.id,)).fetchall()
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    def load_predictions(self, model: ModelRecord, name: str,
                         hidden_roots: Sequence[str] | None = None) -> "StoredPredictions | None":
        """A stored label set's predictions for every indexed photo, sorted by path.

        Files under ``hidden_roots`` (default: indexed folders that no longer exist) are left out."""
        hidden = self.missing_roots() if hidden_roots is None else list(hidden_roots)
        where, args = _outside(hidden)
        with self.snapshot() as c:  # a set replaced meanwhile is read whole, old or new
            row = c.execute("SELECT id, definition, labels FROM label_sets WHERE model_id = ? "
                            "AND name = ?", (model.id, name)).fetchone()
            if row is None:
                return None
            rows = c.execute(
                "SELECT f.id, f.path, p.label, p.prob, p.probs, f.content_hash, f.raw_path FROM files f "
                "JOIN predictions p ON p.content_hash = f.content_hash AND p.set_id = ? "
                f"WHERE f.status = 'ok'{where} ORDER BY f.path", (row[0], *args)).fetchall()
        labels = json.loads(row[2])
        probs = (np.frombuffer(b"".join(r[4] for r in rows), dtype="<f4").reshape(len(rows), len(labels))
                 if rows else np.zeros((0, len(labels)), np.float32))
        return StoredPredictions(
            definition=row[1], labels=labels, file_ids=[r[0] for r in rows], paths=[r[1] for r in rows],
            predicted=[r[2] for r in rows], confidence=np.array([r[3] for r in rows], dtype=np.float32),
            probs=probs, hashes=[r[5] for r in rows],
            fs_paths=_fs_paths([r[1] for r in rows], [r[6] for r in rows]))

    def save_correction(self, model: ModelRecord, set_name: str, content_hash: str, label: str) -> None:
        """Record a person's label for a photo (ground truth), replacing an earlier one."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO corrections (model_id, set_name, content_hash, label, "
                      "corrected_at) VALUES (?, ?, ?, ?, ?)",
                      (model.id, set_name, content_hash, label, time.time()))

    def corrections(self, model: ModelRecord, set_name: str) -> dict[str, str]:
        """content hash -> corrected label, for one label set."""
        rows = self.conn.execute("SELECT content_hash, label FROM corrections WHERE model_id = ? "
                                 "AND set_name = ?", (model.id, set_name))
        return {h: label for h, label in rows}

    def file_by_id(self, file_id: int) -> FileRecord | None:
        row = self.conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return _file(row) if row else None

    def predictions_for_hash(self, model: ModelRecord, content_hash: str
                             ) -> list[tuple[str, list[str], str, float, np.ndarray, str | None]]:
        """(set, labels, label, prob, probs, corrected label) of every stored set, for one photo."""
        rows = self.conn.execute(
            "SELECT s.name, s.labels, p.label, p.prob, p.probs, c.label FROM label_sets s "
            "JOIN predictions p ON p.set_id = s.id AND p.content_hash = ? "
            "LEFT JOIN corrections c ON c.model_id = s.model_id AND c.set_name = s.name "
            "AND c.content_hash = p.content_hash WHERE s.model_id = ? ORDER BY s.created_at",
            (content_hash, model.id)).fetchall()
        return [(r[0], json.loads(r[1]), r[2], r[3], np.frombuffer(r[4], dtype="<f4"), r[5]) for r in rows]

    # -- reporting ------------------------------------------------------------
    def counts(self, hidden_roots: Sequence[str] = ()) -> dict[str, int]:
        """Files per status ('ok', 'failed': photos and videos), with 'videos' (indexed videos,
        counted in 'ok' too) and 'frames' (their sampled frames, counted apart), outside
        ``hidden_roots``."""
        where, args = _outside(hidden_roots, "path")
        rows = self.conn.execute(
            f"SELECT status, count(*) FROM files WHERE video_id IS NULL{where} GROUP BY status", args).fetchall()
        counts = {r[0]: r[1] for r in rows}
        videos = self.conn.execute(
            f"SELECT count(*) FROM files f JOIN videos v ON v.file_id = f.id WHERE f.status = 'ok'{where}",
            args).fetchone()[0]
        frames = self.conn.execute(
            f"SELECT count(*) FROM files WHERE video_id IS NOT NULL AND status = 'ok'{where}", args).fetchone()[0]
        if videos or frames:
            counts.update(videos=videos, frames=frames)
        return counts

    def count_under(self, roots: Sequence[str], status: str = "ok") -> int:
        """Files (photos and videos, not frames) with ``status`` under any of ``roots`` (each file
        once, nested roots or not)."""
        if not roots:
            return 0
        condition, args = _under_sql(roots)  # a real name that is not UTF-8, or its display form
        return self.conn.execute(f"SELECT count(*) FROM files WHERE status = ? AND {condition} "
                                 "AND video_id IS NULL", (status, *args)).fetchone()[0]

    def count_videos_under(self, roots: Sequence[str]) -> int:
        """Indexed videos under any of ``roots`` (counted in :meth:`count_under` too)."""
        if not roots:
            return 0
        condition, args = _under_sql(roots, "f.path")
        return self.conn.execute(f"SELECT count(*) FROM files f JOIN videos v ON v.file_id = f.id "
                                 f"WHERE f.status = 'ok' AND {condition}", args).fetchone()[0]

    def count_for_model(self, model: ModelRecord, hidden_roots: Sequence[str] = (), media: str | None = None) -> int:
        """Indexed photos and frames of videos outside ``hidden_roots`` that have a vector of
        ``model`` (``media`` "photos": photos only; "videos": frames only)."""
        where, args = _outside(hidden_roots)
        if media is not None:
            where += " AND f.video_id IS NULL" if media == "photos" else " AND f.video_id IS NOT NULL"
        return self.conn.execute(
            "SELECT count(*) FROM files f JOIN embeddings e ON e.content_hash = f.content_hash "
            f"AND e.model_id = ? WHERE f.status = 'ok'{where}", (model.id, *args)).fetchone()[0]

    def unencoded_by_root(self, model: ModelRecord, hidden_roots: Sequence[str] = ()) -> dict[str, int]:
        """Indexed photos outside ``hidden_roots`` without a vector of ``model``, counted per
        innermost indexed folder (SQL counts; no path is listed). Empty when all have one."""
        where, args = _outside(hidden_roots)
        # A video's own row has no vector (its frames have): it is encoded once its frames are.
        base = ("SELECT count(*) FROM files f LEFT JOIN embeddings e ON e.content_hash = f.content_hash "
                f"AND e.model_id = ? WHERE f.status = 'ok' AND e.row IS NULL{where} "
                "AND f.id NOT IN (SELECT file_id FROM videos)")
        total = self.conn.execute(base, (model.id, *args)).fetchone()[0]
        if not total:
            return {}
        roots = [r for r in self.roots() if not _under_any(r, hidden_roots) and r not in hidden_roots]
        counts: dict[str, int] = {}
        for root in roots:
            nested = [r for r in roots if is_under(r, root)]
            inner, inner_args = _outside(nested)
            under, under_args = _under_sql([root], "f.path")
            n = self.conn.execute(base + f" AND {under}{inner}",
                                  (model.id, *args, *under_args, *inner_args)).fetchone()[0]
            if n:
                counts[root] = n
        if sum(counts.values()) < total:  # files outside every indexed folder (not expected)
            outside, outside_args = _outside(roots)
            for path, in self.conn.execute(base.replace("count(*)", "f.path") + outside,
                                           (model.id, *args, *outside_args)):
                folder = os.path.dirname(path)
                counts[folder] = counts.get(folder, 0) + 1
        return dict(sorted(counts.items()))

    # -- videos (clipdex.video; migration 011) --------------------------------------
    def commit_video(self, video: NewFile, frames: Sequence["VideoFrame"], sampling: "VideoSampling | None",
                     ) -> int:
        """Record a video and the frames sampled from it, in one transaction: the video's row
        (indexed, or failed when ``video.reason``), its sampling and one row per frame,
        replacing what the video had. Every frame's vector must be committed
        already (:meth:`commit_batch`): a kill before this leaves vectors no row uses yet,
        which the next run finds and does not compute again. Returns the video's id."""
        self.require_writable()
        from clipdex.video import frame_path

        now = time.time()
        raw = _raw(video)
        with self.transaction() as c:
            self._upsert_files(c, [video], now)
            video_id = c.execute("SELECT id FROM files WHERE path = ?", (display_path(video.path),)).fetchone()[0]
            c.execute("DELETE FROM files WHERE video_id = ?", (video_id,))
            c.execute("DELETE FROM videos WHERE file_id = ?", (video_id,))
            if video.reason or sampling is None:
                return int(video_id)
            taken_at, taken_source = _taken(video)
            start = _parse_taken(taken_at)
            c.executemany(
                "INSERT INTO files (path, size, mtime_ns, content_hash, width, height, status, indexed_at, "
                "raw_path, taken_at, taken_source, video_id, frame_t, frame_scene) "
                "VALUES (?, 0, ?, ?, ?, ?, 'ok', ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET content_hash = excluded.content_hash, mtime_ns = excluded.mtime_ns, "
                "width = excluded.width, height = excluded.height, status = 'ok', reason = NULL, "
                "indexed_at = excluded.indexed_at, raw_path = excluded.raw_path, taken_at = excluded.taken_at, "
                "taken_source = excluded.taken_source, video_id = excluded.video_id, frame_t = excluded.frame_t, "
                "frame_scene = excluded.frame_scene",
                [(display_path(frame_path(video.path, f.t)), video.mtime_ns, f.content_hash, video.width,
                  video.height, now, None if raw is None else raw + frame_path("", f.t).encode(),
                  _plus_seconds(start, f.t) if start else taken_at, taken_source, video_id, f.t, f.scene)
                 for f in frames])
            c.execute("INSERT INTO videos (file_id, duration, interval, frames, codec, fps, sampled_at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)", (video_id, sampling.duration, sampling.interval, len(frames),
                                                       sampling.codec, sampling.fps, now))
        return int(video_id)

    def sampled_videos(self, model: ModelRecord, interval: float) -> dict[str, "SampledVideo"]:
        """Video content hash -> how it was sampled and its frames, for every indexed video
        sampled at ``interval`` whose frames all have a vector of ``model``: an unchanged video
        is not decoded again, and a copy (or a moved video) takes the frames of its original."""
        cursor = self.conn.cursor()
        cursor.row_factory = None
        rows = cursor.execute(
            "SELECT v.id, v.content_hash, s.duration, s.interval, s.codec, s.fps, f.frame_t, f.content_hash, "
            "f.frame_scene, e.row IS NOT NULL FROM files v JOIN videos s ON s.file_id = v.id "
            "JOIN files f ON f.video_id = v.id "
            "LEFT JOIN embeddings e ON e.model_id = ? AND e.content_hash = f.content_hash "
            "WHERE v.status = 'ok' AND abs(s.interval - ?) < 1e-9 ORDER BY v.id, f.frame_t", (model.id, interval))
        found: dict[str, SampledVideo] = {}
        source: dict[str, int] = {}  # the one video (of copies of one content) whose frames are taken
        incomplete: set[str] = set()
        for video_id, video_hash, duration, every, codec, fps, t, frame_hash, scene, embedded in rows:
            if source.setdefault(video_hash, video_id) != video_id:
                continue
            if not embedded:
                incomplete.add(video_hash)
            sampled = found.get(video_hash)
            if sampled is None:
                sampled = found[video_hash] = SampledVideo(VideoSampling(duration, every, codec, fps), [])
            sampled.frames.append(VideoFrame(t, frame_hash, scene or 0))
        return {h: v for h, v in found.items() if h not in incomplete}

    def video_frames(self, video_id: int) -> list[FileRecord]:
        """The frames kept of video ``video_id``, by time."""
        rows = self.conn.execute("SELECT * FROM files WHERE video_id = ? ORDER BY frame_t", (video_id,))
        return [_file(r) for r in rows]

    def video_sampling(self, video_id: int) -> "VideoSampling | None":
        """How video ``video_id`` was sampled (None: not a video, or not indexed)."""
        row = self.conn.execute("SELECT duration, interval, codec, fps FROM videos WHERE file_id = ?",
                                (video_id,)).fetchone()
        return None if row is None else VideoSampling(*row)

    def failures(self) -> list[FileRecord]:
        rows = self.conn.execute("SELECT * FROM files WHERE status = 'failed' ORDER BY path")
        return [_file(r) for r in rows]

    # -- duplicates (clipdex.duplicates; migration 010) ------------------------
    def phashes(self, hashes: Iterable[str]) -> dict[str, str | None]:
        """The perceptual signatures cached for ``hashes`` (content hashes), by content hash: hex digits
        (clipdex.duplicates.phash_of_image: 64 for four pHashes; a shorter one is an older recipe, which
        the caller computes again), or None for an image that could not be decoded; absent: never computed."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, str | None] = {}
        for start in range(0, len(wanted), SQL_CHUNK):
            chunk = wanted[start:start + SQL_CHUNK]
            rows = self.conn.execute(f"SELECT content_hash, phash FROM phashes WHERE content_hash IN "
                                     f"({', '.join('?' * len(chunk))})", chunk)
            found.update({h: p for h, p in rows})
        return found

    def save_phashes(self, phashes: dict[str, str | None]) -> None:
        """Cache perceptual signatures by content hash (None: the image could not be decoded)."""
        now = time.time()
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO phashes (content_hash, phash, computed_at) VALUES (?, ?, ?)",
                          [(h, p, now) for h, p in phashes.items()])

    def duplicate_rule(self, model_id: int) -> tuple[str, float] | None:
        """(rule JSON, calibrated_at) of the duplicate rule calibrated for a model, or None."""
        row = self.conn.execute("SELECT rule, calibrated_at FROM duplicate_rules WHERE model_id = ?",
                                (model_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def save_duplicate_rule(self, model_id: int, rule_json: str) -> None:
        """Record a model's calibrated duplicate rule, replacing an earlier one."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO duplicate_rules (model_id, rule, calibrated_at) VALUES (?, ?, ?)",
                      (model_id, rule_json, time.time()))

    def keepers(self) -> set[str]:
        """The paths a person marked to keep (display form) whose photo still holds the content it had
        when marked: a mark on a file replaced or edited since (and indexed again) no longer counts."""
        return {r[0] for r in self.conn.execute(
            "SELECT k.path FROM keepers k JOIN files f ON f.path = k.path AND f.content_hash = k.content_hash "
            "WHERE f.status = 'ok'")}

    def set_keeper(self, path: str, keep: bool, content_hash: str = "") -> None:
        """Mark the photo at ``path`` (holding ``content_hash``) to keep (``keep``), or take the mark away."""
        with self.transaction() as c:
            if keep:
                c.execute("INSERT OR REPLACE INTO keepers (path, content_hash, marked_at) VALUES (?, ?, ?)",
                          (display_path(path), content_hash, time.time()))
            else:
                c.execute("DELETE FROM keepers WHERE path = ?", (display_path(path),))

    def files_stamp(self) -> tuple[object, ...]:
        """Changes when the photos change (added, removed, replaced, their folders), not when a keeper is
        marked or a label corrected: what a duplicates report depends on, cheaply (one pass over files)."""
        files = tuple(self.conn.execute(
            "SELECT count(*), max(id), total(size), total(mtime_ns % 1000000007) FROM files WHERE status = 'ok'"
        ).fetchone())
        models = tuple(tuple(r) for r in self.conn.execute("SELECT id, generation FROM models ORDER BY id"))
        rows = self.conn.execute("SELECT count(*), max(row) FROM embeddings").fetchone()
        roots = tuple(r[0] for r in self.conn.execute("SELECT path FROM roots ORDER BY path"))
        rules = tuple(tuple(r) for r in self.conn.execute("SELECT model_id, calibrated_at FROM duplicate_rules"))
        return files + models + tuple(rows) + roots + rules

    def files_by_ids(self, file_ids: Sequence[int]) -> dict[int, FileRecord]:
        """The file records of ``file_ids``, by id (one query per 500 ids); ids the catalog lacks are absent."""
        wanted = list(dict.fromkeys(int(i) for i in file_ids))
        found: dict[int, FileRecord] = {}
        for start in range(0, len(wanted), SQL_CHUNK):
            chunk = wanted[start:start + SQL_CHUNK]
            rows = self.conn.execute(f"SELECT * FROM files WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            found.update({r["id"]: _file(r) for r in rows})
        return found


def index_option(index: Path) -> str:
    """`` --index PATH`` for a command that must reach this index ('' for the default one)."""
    from clipdex.settings import default_index_dir

    try:
        default = default_index_dir().expanduser().resolve()
    except Exception:  # noqa: BLE001  (a bad CLIPDEX_INDEX only costs the shorter form)
        default = None
    return "" if index == default else f" --index {index}"


def _prefix(root: str) -> str:
    return root.rstrip(os.sep) + os.sep


def is_under(path: str, root: str) -> bool:
    """Is ``path`` inside folder ``root`` (and not ``root`` itself)?"""
    return path.startswith(_prefix(root))


def _under_any(path: str, roots: Sequence[str]) -> bool:
    return any(path.startswith(_prefix(r)) for r in roots)


def _under_sql(roots: Sequence[str], column: str = "path") -> tuple[str, list[object]]:
    """An SQL condition (in parentheses) true for rows whose ``column`` is under any of
    ``roots`` (each non-empty), and its arguments."""
    args: list[object] = []
    for r in roots:
        prefix = _prefix(display_path(r))  # rows hold display forms: compare like with like
        args += [len(prefix), prefix]
    return "(" + " OR ".join([f"substr({column}, 1, ?) = ?"] * len(roots)) + ")", args


def _outside(roots: Sequence[str], column: str = "f.path") -> tuple[str, list[object]]:
    """An SQL condition (`` AND …``) keeping rows whose ``column`` is under none of ``roots``."""
    if not roots:
        return "", []
    condition, args = _under_sql(roots, column)
    return " AND NOT " + condition, args


def _roots_of(paths: Sequence[str], roots: Sequence[str]) -> list[str]:
    """The innermost indexed folder of each path, each folder once, sorted."""
    ordered = sorted(roots, key=len, reverse=True)
    found = {next((r for r in ordered if p.startswith(_prefix(r))), os.path.dirname(p)) for p in paths}
    return sorted(found)


def _is_dir(root: str) -> bool:
    """Does indexed folder ``root`` (its display form) exist? A folder whose name is not
    UTF-8 is stored with \\xNN escapes: its real name has those bytes back."""
    if os.path.isdir(root):
        return True
    if "\\x" not in root:
        return False
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), root.encode("utf-8"))
    return os.path.isdir(os.fsdecode(raw))


def _fs_paths(paths: Sequence[str], raws: Sequence[bytes | None]) -> list[str] | None:
    """The paths to open, row-aligned, when some name is not UTF-8; None when all open as shown."""
    if raws.count(None) == len(raws):
        return None
    return [os.fsdecode(raw) if raw is not None else path for path, raw in zip(paths, raws)]


def _taken(f: NewFile) -> tuple[str | None, str | None]:
    """(taken_at, taken_source) to store for ``f``: what it says, else its mtime (local time)."""
    if f.reason:
        return None, None
    if f.taken_at:
        return f.taken_at, f.taken_source or TAKEN_EXIF
    if f.mtime_ns > 0:
        return mtime_taken_at(f.mtime_ns), f.taken_source or TAKEN_MTIME
    return None, None


def _parse_taken(taken_at: str | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(taken_at, "%Y-%m-%dT%H:%M:%S") if taken_at else None
    except ValueError:
        return None


def _plus_seconds(start: datetime.datetime, seconds: float) -> str:
    """A frame's taken_at: its video's start plus its time (whole seconds)."""
    return (start + datetime.timedelta(seconds=int(seconds))).strftime("%Y-%m-%dT%H:%M:%S")


def mtime_taken_at(mtime_ns: int) -> str:
    """A file's mtime as a taken_at value (local wall-clock time, as EXIF dates are)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime_ns / 1e9))


def _raw(f: NewFile) -> bytes | None:
    """The exact OS bytes of a path that is not valid UTF-8 (None for the usual names)."""
    if f.raw_path is not None:
        return f.raw_path
    return os.fsencode(f.path) if display_path(f.path) != f.path else None


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_header(folder: Path, catalog: Path) -> None:
    """Refuse a catalog that is not a SQLite database, or empty beside vectors it lost."""
    with open(catalog, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if not header:
        _check_no_vectors(folder, f"its catalog {CATALOG_NAME} is empty (0 bytes)")
        return  # a first run killed before it wrote anything: a new index
    if header != SQLITE_HEADER:
        raise IndexDamaged(folder, f"its catalog {CATALOG_NAME} is not a SQLite database (it starts "
                           f"with {header[:16]!r})", catalog_damaged_fix(folder))


def _check_no_vectors(folder: Path, what: str) -> None:
    """Refuse a catalog that is missing or empty while ``vectors/`` still holds vectors: a
    fresh catalog would count 0 rows and the first append would truncate them."""
    vectors = folder / "vectors"
    held = ([p.name for p in vectors.iterdir() if p.suffix in VECTOR_SUFFIXES and p.stat().st_size]
            if vectors.is_dir() else [])
    if held:
        raise IndexDamaged(folder, f"{what} but vectors/ still holds {', '.join(sorted(held))}: "
                           "the list of photos is lost", catalog_damaged_fix(folder))


def _not_writable(folder: Path, catalog: Path) -> str:
    """Why the index cannot be written ('' when it can): a read-only mount, permissions."""
    if catalog.exists() and not os.access(catalog, os.W_OK):
        return f"{catalog} cannot be written"
    if not os.access(folder, os.W_OK):
        return f"{folder} cannot be written"
    return ""


def _is_read_only_error(error: sqlite3.Error) -> bool:
    name = getattr(error, "sqlite_errorname", "") or ""
    text = str(error).lower()
    return (name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM"))
            or "readonly" in text or "unable to open" in text)


def _connect_writable(catalog: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(catalog, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_read_only(folder: Path, catalog: Path) -> sqlite3.Connection:
    """Open the catalog without writing anything: ``mode=ro``, and where even the WAL's
    shared-memory file cannot be created (a read-only mount), ``immutable=1``."""
    base = "file:" + urllib.parse.quote(str(catalog)) + "?mode=ro"
    error: sqlite3.Error | None = None
    for uri in (base, base + "&immutable=1"):
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as e:
            conn.close()
            if not _is_read_only_error(e):
                raise
            error = e
    assert error is not None
    raise translate_sqlite_error(folder, error)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _model(row: sqlite3.Row) -> ModelRecord:
    return ModelRecord(id=row["id"], key=row["key"], name=row["name"], spec_json=row["spec"],
                       dim=row["dim"], logit_scale=row["logit_scale"], rows=row["rows"],
                       precision=row["precision"], vectors_file=row["vectors_file"],
                       generation=row["generation"], storage=row["storage"], logit_bias=row["logit_bias"])


def _probe(blob: bytes, dim: int, sources: str | None, index: Path) -> ModelProbe:
    if len(blob) % (4 * dim):
        raise IndexDamaged(index, f"a model's probe holds {len(blob)} bytes, not whole rows of {dim} floats",
                           "Set models.probe and models.probe_sources to NULL in catalog.sqlite: the next "
                           "`clipdex index` records the probe again.")
    vectors = np.frombuffer(blob, dtype="<f4").reshape(-1, dim).astype(np.float32)
    return ModelProbe(vectors, _probe_sources(sources, index))


def _probe_sources(text: str | None, index: Path) -> tuple[ProbeSource, ...]:
    try:
        return tuple(ProbeSource(str(s["source"]), tuple(s["towers"]), s.get("cosine"), float(s.get("at", 0.0)))
                     for s in json.loads(text or "[]"))
    except (ValueError, TypeError, KeyError) as e:
        raise IndexDamaged(index, f"a model's probe_sources cannot be read ({e})",
                           "Set models.probe_sources to '[]' in catalog.sqlite: each source is checked "
                           "again on its next use.") from None


def _probe_source_json(source: ProbeSource) -> dict[str, object]:
    return {"source": source.source, "towers": list(source.towers), "cosine": source.cosine,
            "at": source.checked_at}


def _choice(row: sqlite3.Row) -> "PrecisionChoice":
    from clipdex.models.auto import PrecisionChoice

    return PrecisionChoice(precision=row["precision"], runtime=row["runtime"], reason=row["reason"],
                           cosine=row["cosine"], speedup=row["speedup"], photos=row["photos"],
                           min_cosine=row["min_cosine"], host=row["host"], chosen_at=row["chosen_at"])


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(id=row["id"], path=row["path"], size=row["size"], mtime_ns=row["mtime_ns"],
                      content_hash=row["content_hash"], width=row["width"], height=row["height"],
                      status=row["status"], reason=row["reason"], raw_path=row["raw_path"],
                      failure_kind=row["failure_kind"], failure_limit=row["failure_limit"],
                      taken_at=row["taken_at"], taken_source=row["taken_source"], video_id=row["video_id"],
                      frame_t=row["frame_t"], frame_scene=row["frame_scene"])
