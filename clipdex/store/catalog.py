"""The on-disk index: a SQLite catalog plus one memory-mappable vector file per model.

Layout of an index folder::

    catalog.sqlite        files, models, embeddings, roots (WAL mode)
    vectors/model-N.f32   model N's vectors, float32 rows (see vectors.py)
    lock                  held by the one process writing the index

Vectors are keyed by (model, content hash): a renamed, moved or duplicated
photo reuses its vector, and several models live side by side in one index.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdex.errors import IndexLocked, IndexNotFound, IndexVersionError
from clipdex.store.migrations import LATEST_VERSION, migrate
from clipdex.store.vectors import VectorFile

CATALOG_NAME = "catalog.sqlite"
LOCK_NAME = "lock"
BUSY_TIMEOUT_S = 30.0
LOCK_POLL_S = 0.5


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

    @property
    def fs_path(self) -> str:
        """The path to open: ``path`` itself, or the exact bytes of a name that is not UTF-8."""
        return os.fsdecode(self.raw_path) if self.raw_path is not None else self.path


FAILURE_KINDS = ("transient", "limit", "permanent")


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


@dataclass(frozen=True)
class Searchable:
    """The photos one model can search: ids, paths, content hashes and vectors, row-aligned."""

    ids: np.ndarray
    paths: list[str]
    hashes: list[str]
    vectors: np.ndarray


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


class Store:
    """An index folder opened for reading and, under :meth:`writing`, for writing."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self._lock_fd: int | None = None

    # -- opening --------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = False) -> "Store":
        """Open the index at ``path``; with ``create``, make it if it does not exist."""
        folder = Path(path).expanduser().resolve()
        catalog = folder / CATALOG_NAME
        if not catalog.exists():
            if not create:
                raise IndexNotFound(folder)
            folder.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(catalog, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > LATEST_VERSION:
            conn.close()
            raise IndexVersionError(folder, version, LATEST_VERSION)
        if version < LATEST_VERSION:
            migrate(conn, version)
        return cls(folder, conn)

    def close(self) -> None:
        self.release_lock()
        self.conn.close()

    # -- the writer's lock ----------------------------------------------------
    def acquire_lock(self, *, wait: bool = False) -> None:
        """Become the index's one writer, or raise :class:`IndexLocked` (unless ``wait``)."""
        import fcntl

        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
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
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- models ---------------------------------------------------------------
    def models(self) -> list[ModelRecord]:
        rows = self.conn.execute("SELECT * FROM models ORDER BY id").fetchall()
        return [_model(r) for r in rows]

    def get_model(self, key: str) -> ModelRecord | None:
        row = self.conn.execute("SELECT * FROM models WHERE key = ?", (key,)).fetchone()
        return _model(row) if row else None

    def add_model(self, key: str, name: str, spec_json: str, dim: int, logit_scale: float,
                  precision: str) -> ModelRecord:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO models (key, name, spec, dim, logit_scale, rows, precision, "
                "vectors_file, created_at) VALUES (?, ?, ?, ?, ?, 0, ?, '', ?)",
                (key, name, spec_json, dim, logit_scale, precision, time.time()))
            model_id = cur.lastrowid
            c.execute("UPDATE models SET vectors_file = ? WHERE id = ?",
                      (f"vectors/model-{model_id}.f32", model_id))
        record = self.get_model(key)
        assert record is not None
        return record

    def update_model_spec(self, model_id: int, spec_json: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE models SET spec = ? WHERE id = ?", (spec_json, model_id))

    def vector_file(self, model: ModelRecord) -> VectorFile:
        return VectorFile(self.path / model.vectors_file, model.dim)

    def embedded_hashes(self, model: ModelRecord) -> dict[str, int]:
        """content hash -> vector row, for every vector of ``model``."""
        rows = self.conn.execute("SELECT content_hash, row FROM embeddings WHERE model_id = ?",
                                 (model.id,))
        return {h: r for h, r in rows}

    # -- roots and files ------------------------------------------------------
    def add_root(self, root: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO roots (path, added_at) VALUES (?, ?) ON CONFLICT(path) "
                      "DO NOTHING", (root, time.time()))

    def mark_root_indexed(self, root: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE roots SET last_indexed_at = ? WHERE path = ?", (time.time(), root))

    def roots(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT path FROM roots ORDER BY path")]

    def files_under(self, root: str) -> dict[str, FileRecord]:
        prefix = root.rstrip(os.sep) + os.sep
        rows = self.conn.execute(
            "SELECT * FROM files WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))
        return {r["path"]: _file(r) for r in rows}

    def file_by_path(self, path: str) -> FileRecord | None:
        row = self.conn.execute("SELECT * FROM files WHERE path = ?", (path,)).fetchone()
        return _file(row) if row else None

    def files_named(self, name: str) -> list[FileRecord]:
        """Files whose name or stem is ``name`` (how people refer to a photo they know)."""
        rows = self.conn.execute(
            "SELECT * FROM files WHERE status = 'ok' AND (path LIKE ? ESCAPE '\\' OR path LIKE ? "
            "ESCAPE '\\') ORDER BY path", (f"%/{_like(name)}", f"%/{_like(name)}.%"))
        return [_file(r) for r in rows]

    def size_of_hash(self, content_hash: str) -> tuple[int | None, int | None]:
        row = self.conn.execute(
            "SELECT width, height FROM files WHERE content_hash = ? AND status = 'ok' LIMIT 1",
            (content_hash,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def commit_batch(self, model: ModelRecord, vectors: np.ndarray, hashes: Sequence[str],
                     files: Sequence[NewFile]) -> ModelRecord:
        """Store a batch atomically: new vectors for ``hashes``, then the file rows.

        The vectors reach the disk first; the catalog's commit then makes them
        count. A kill between the two leaves unreferenced rows that the next
        append overwrites.
        """
        current = self.conn.execute("SELECT rows FROM models WHERE id = ?", (model.id,)).fetchone()[0]
        if len(hashes):
            self.vector_file(model).append(current, vectors)
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO embeddings (model_id, content_hash, row) VALUES (?, ?, ?)",
                [(model.id, h, current + i) for i, h in enumerate(hashes)])
            c.execute("UPDATE models SET rows = ? WHERE id = ?", (current + len(hashes), model.id))
            c.executemany(
                "INSERT INTO files (path, size, mtime_ns, content_hash, width, height, status, "
                "reason, indexed_at, raw_path, failure_kind, failure_limit) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE "
                "SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "content_hash = excluded.content_hash, width = excluded.width, "
                "height = excluded.height, status = excluded.status, reason = excluded.reason, "
                "indexed_at = excluded.indexed_at, raw_path = excluded.raw_path, "
                "failure_kind = excluded.failure_kind, failure_limit = excluded.failure_limit",
                [(f.path, f.size, f.mtime_ns, f.content_hash, f.width, f.height,
                  "failed" if f.reason else "ok", f.reason, now, f.raw_path,
                  (f.failure_kind or "permanent") if f.reason else None,
                  f.failure_limit if f.reason else None) for f in files])
        updated = self.get_model(model.key)
        assert updated is not None
        return updated

    def remove_files(self, paths: Sequence[str]) -> None:
        with self.transaction() as c:
            c.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])

    # -- reading for search ---------------------------------------------------
    def searchable(self, model: ModelRecord) -> "Searchable":
        """Every indexed file that has a vector of ``model``, sorted by path."""
        rows = self.conn.execute(
            "SELECT f.id, f.path, f.content_hash, e.row FROM files f JOIN embeddings e "
            "ON e.content_hash = f.content_hash AND e.model_id = ? "
            "WHERE f.status = 'ok' ORDER BY f.path", (model.id,)).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vector_rows = np.fromiter((r[3] for r in rows), dtype=np.int64, count=len(rows))
        matrix = self.vector_file(model).read(model.rows)
        return Searchable(ids=ids, paths=[r[1] for r in rows], hashes=[r[2] for r in rows],
                          vectors=np.asarray(matrix[vector_rows]))

    def vector_for_hash(self, model: ModelRecord, content_hash: str) -> np.ndarray | None:
        row = self.conn.execute("SELECT row FROM embeddings WHERE model_id = ? AND content_hash = ?",
                                (model.id, content_hash)).fetchone()
        if row is None:
            return None
        return np.array(self.vector_file(model).read(model.rows)[row[0]])

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

    def load_predictions(self, model: ModelRecord, name: str) -> "StoredPredictions | None":
        """A stored label set's predictions for every indexed photo, sorted by path."""
        row = self.conn.execute("SELECT id, definition, labels FROM label_sets WHERE model_id = ? "
                                "AND name = ?", (model.id, name)).fetchone()
        if row is None:
            return None
        labels = json.loads(row[2])
        rows = self.conn.execute(
            "SELECT f.id, f.path, p.label, p.prob, p.probs, f.content_hash FROM files f JOIN predictions p "
            "ON p.content_hash = f.content_hash AND p.set_id = ? WHERE f.status = 'ok' "
            "ORDER BY f.path", (row[0],)).fetchall()
        probs = (np.frombuffer(b"".join(r[4] for r in rows), dtype="<f4").reshape(len(rows), len(labels))
                 if rows else np.zeros((0, len(labels)), np.float32))
        return StoredPredictions(
            definition=row[1], labels=labels, file_ids=[r[0] for r in rows], paths=[r[1] for r in rows],
            predicted=[r[2] for r in rows], confidence=np.array([r[3] for r in rows], dtype=np.float32),
            probs=probs, hashes=[r[5] for r in rows])

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
    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, count(*) FROM files GROUP BY status").fetchall()
        return {r[0]: r[1] for r in rows}

    def count_for_model(self, model: ModelRecord) -> int:
        return self.conn.execute(
            "SELECT count(*) FROM files f JOIN embeddings e ON e.content_hash = f.content_hash "
            "AND e.model_id = ? WHERE f.status = 'ok'", (model.id,)).fetchone()[0]

    def failures(self, root: str | None = None) -> list[FileRecord]:
        rows = self.conn.execute("SELECT * FROM files WHERE status = 'failed' ORDER BY path")
        failed = [_file(r) for r in rows]
        if root:
            prefix = root.rstrip(os.sep) + os.sep
            failed = [f for f in failed if f.path.startswith(prefix)]
        return failed


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _model(row: sqlite3.Row) -> ModelRecord:
    return ModelRecord(id=row["id"], key=row["key"], name=row["name"], spec_json=row["spec"],
                       dim=row["dim"], logit_scale=row["logit_scale"], rows=row["rows"],
                       precision=row["precision"], vectors_file=row["vectors_file"])


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(id=row["id"], path=row["path"], size=row["size"], mtime_ns=row["mtime_ns"],
                      content_hash=row["content_hash"], width=row["width"], height=row["height"],
                      status=row["status"], reason=row["reason"], raw_path=row["raw_path"],
                      failure_kind=row["failure_kind"], failure_limit=row["failure_limit"])
