"""Embeddings in and out of an index, in clip-retrieval's layout.

``clipdex export DIR`` writes what ``clip-retrieval inference`` writes, so that
clip-retrieval, autofaiss and embedding-reader read it as their own::

    DIR/img_emb/img_emb_{i}.npy        float16, one unit row per photo
    DIR/metadata/metadata_{i}.parquet  row-aligned: image_path (the file to open), id,
                                       path, width, height, size, mtime, taken_at,
                                       sha256, and per stored label set its label
                                       (a correction wins) and <set>_prob
    DIR/clipdex.json                   what clipdex wrote: model, rows, shards, columns

embedding-reader lists each folder, sorts the names as strings and pairs the
n-th ``.npy`` with the n-th ``.parquet``: shard numbers are zero-padded to the
width of the last one, so string order is shard order is path order.

``clipdex import DIR`` adopts such a folder (or real clip-retrieval output with
``image_path`` or only ``url``/``caption`` metadata, or the CLIP tutorial's
``features.npy`` + ``photo_ids.csv``) into an index without encoding an image:
vectors are checked against the model's dimension and normalised again (rows of
zeros or NaN are reported and skipped), and every shard is committed in chunks
and recorded in the catalog's ``imports`` table, so a run that is stopped
resumes after the last finished shard and a shard whose file changed is read
again: a photo whose vector in it differs from the one the index holds gets the
new one (the old row is left for ``clipdex compact`` to give back).

The shards of ``clipdex index --engine ray`` (:mod:`clipdex.cluster.shards`) carry
what local indexing records, and it is recorded the same way, so that a later
``clipdex index`` of their folder takes them as its own: a row whose ``status``
is 'failed' (its vector row is zeros) is a failed file with the row's
``error_message``, ``failure_kind`` and ``failure_limit``, tried again exactly
when a failure of local indexing would be; ``taken_source`` says the file's EXIF
was read (it is not read again); ``raw_path`` holds the exact bytes of a name
that is not UTF-8; and the manifest's ``precision`` is recorded as what the
vectors were computed in.

Content hashes: hashing a million image files would cost more than the import
itself, so an imported photo gets a stable synthetic hash: ``import:`` + 40 hex
digits of sha256s of its identity, its absolute path or its URL (see
:func:`synthetic_hash`). The same photo imported again, or from another model's
export, gets the same hash, so several models' vectors of one photo live side
by side (a photo whose vector changed gets a hash of its identity and of the new
vector's bytes: see :func:`_revise_changed`). A ``sha256`` column (clipdex's
export and img2dataset write one) is the file's real content hash and is used as
such: indexing the same photo under another name later then reuses its vector. Where the image exists on this
machine, its real size and mtime are recorded, so a later ``clipdex index`` of
its folder finds it unchanged and encodes nothing; a changed file is encoded
again (and gets its real hash).
"""

from __future__ import annotations

import calendar
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.cluster.shards import STATUS_FAILED, STATUS_REUSED
from clipdex.errors import (
    DimensionMismatch,
    EmptyIndex,
    IndexDamaged,
    InterchangeError,
    ModelError,
    ModelMismatch,
    ModelUnavailable,
    first_line,
)
from clipdex.fileio import replacing
from clipdex.indexer import Progress
from clipdex.search.base import BuildProgress
from clipdex.store import ModelRecord, NewFile, Store
from clipdex.store.catalog import SQL_CHUNK, TAKEN_EXIF, TAKEN_IMPORT, TAKEN_NO_EXIF, _outside
from clipdex.store.vectors import ShortVectorFile, check_storage, unit_rows

if TYPE_CHECKING:
    import pyarrow as pa

    from clipdex.index import Index
    from clipdex.models.registry import ModelSpec

log = logging.getLogger(__name__)


def _require_pyarrow(path: str | Path, what: str) -> None:
    """Parquet is read and written by pyarrow, an extra (``clipdex[parquet]``): without it,
    an :class:`InterchangeError` that says so before anything is touched."""
    from clipdex.models.optional import PARQUET_INSTALL, installed

    if not installed("pyarrow"):
        raise InterchangeError(path, f"{what} needs pyarrow, which is not installed", f"{PARQUET_INSTALL}")


EMBEDDINGS_DIR = "img_emb"
METADATA_DIR = "metadata"
MANIFEST_NAME = "clipdex.json"
FEATURES_FILE = "features.npy"  # the CLIP tutorial's layout: one matrix ...
FEATURE_IDS_FILE = "photo_ids.csv"  # ... and the ids of its rows
EXPORT_FORMAT = "clipdex-export"
EXPORT_VERSION = 1
EXPORT_SHARD_ROWS = 100_000  # rows per exported shard: 100 MB of float16 at 512-d
EXPORT_READ_ROWS = 16_384  # vectors read from the index at a time (32 MB at 512-d)
IMPORT_CHUNK_ROWS = 100_000  # rows committed at once: large enough that SQLite is not the bottleneck
IMPORT_CACHE_KIB = 256 * 1024  # SQLite page cache while importing (random-hash inserts miss a small one)
HASH_PREFIX = "import:"
FOLDER_DIGITS = 10  # a synthetic hash: hex digits of its folder's sha256, then
NAME_DIGITS = 30  # hex digits of its own (160 bits in all, as git's)
CLIP_LOGIT_SCALE = 100.0  # exp(logit_scale) of trained CLIP models (it saturates at its clamp, 100)
SCORING_KEYS = ("logit_scale", "logit_bias")  # their names in open_clip's and Transformers' state dicts
# The width of a Transformers checkpoint's image vectors where its config.json leaves it out
# (CLIPConfig().projection_dim, SiglipConfig().vision_config.hidden_size).
HF_DEFAULT_DIMS = {"clip": 512, "siglip": 768}
SKIPPED_SHOWN = 20  # skipped rows named in a report (the rest are counted)
VECTOR_CHANGED = 1e-4  # 1 - cosine above which an imported row's vector is not the one held (float16: ~1e-7)
REVISION_MARK = "#vector="  # a changed row's synthetic hash: of its identity, this, and ...
REVISION_DIGITS = 16  # ... this many hex digits of the sha256 of its bytes in the shard

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHARD_NUMBER = re.compile(r"(\d+)$")
_UNNORMAL = r"//|/\.\.?(/|$)"  # a path that os.path.normpath would change
_DATE_TIME = re.compile(r"^\s*(\d{4})[:-](\d{2})[:-](\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?")
# Metadata columns that say when a photo was taken, best first (compared case-insensitively);
# an ``exif`` column (img2dataset: JSON) is read for the EXIF_KEYS after them.
TAKEN_COLUMNS = ("taken_at", "datetimeoriginal", "datetime_original", "exif_datetime_original",
                 "exif_datetimeoriginal", "exif_date_time_original", "date_taken", "datetaken")
EXIF_KEYS = ("EXIF DateTimeOriginal", "DateTimeOriginal", "Image DateTime", "DateTime")
BASE_COLUMNS = ("image_path", "id", "path", "width", "height", "size", "mtime", "taken_at", "sha256")
# Columns of a Ray run's shards (clipdex.cluster.shards.COLUMNS) beyond clip-retrieval's: a local
# path's exact bytes, whether the EXIF was read, and a row's failure (status 'failed').
RAY_COLUMNS = ("raw_path", "taken_source", "status", "error_message", "failure_kind", "failure_limit")


# -- export ---------------------------------------------------------------------
@dataclass(frozen=True)
class ExportReport:
    """What ``export`` wrote."""

    folder: str
    model: str
    dim: int
    rows: int
    shards: int
    columns: list[str]
    seconds: float


@dataclass(frozen=True)
class _LabelColumns:
    """One stored label set as two metadata columns."""

    set_id: int
    name: str
    labels: list[str]
    label_column: str
    prob_column: str


def export_embeddings(index: "Index", folder: str | os.PathLike[str], *, model: str | None = None,
                      shard_rows: int = EXPORT_SHARD_ROWS, overwrite: bool = False,
                      progress: Progress | None = None) -> ExportReport:
    """Write the index's photos that have a vector of ``model`` to ``folder``, by path.

    ``model`` is a name or key of a model the index holds, or what
    :func:`~clipdex.models.resolve_model` takes; default: the model the index was opened with.

    Photos under folders that are gone are left out. Vectors are streamed from
    the memory-mapped vector file a few thousand rows at a time; every file is
    written under a temporary name and renamed into place. A folder that already
    holds an export is refused unless ``overwrite`` (its shards are then
    replaced, none left over). Raises :class:`EmptyIndex` when nothing is exported.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, not {shard_rows}")
    started = time.perf_counter()
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(folder))))
    _require_pyarrow(out, "writing an export (its metadata is Parquet)")
    store = index.store
    record = _export_model(index, model)
    hidden = store.missing_roots()
    try:
        with store.snapshot() as c:  # the rows counted, the rows listed and the vectors agree
            record = store.get_model(record.key) or record
            # Mapped once, as of this snapshot: a compaction that replaces the file meanwhile
            # unlinks a name, and the map still reads the rows these row numbers mean.
            matrix = store.vector_file(record).read(record.rows)
            columns, shards, total, sets = _export_rows(index, record, matrix, hidden, out, shard_rows,
                                                        overwrite, progress, c)
    except ShortVectorFile:
        raise _lost_vectors(store, record.key) from None
    manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "rows": total, "shards": shards,
                "model": {"key": record.key, "name": record.name, "dim": record.dim,
                          "spec": json.loads(record.spec_json)},
                "columns": columns, "label_sets": [s.name for s in sets],
                "roots": store.roots(), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_bytes(out / MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
    return ExportReport(folder=str(out), model=record.key, dim=record.dim, rows=total, shards=shards,
                        columns=columns, seconds=time.perf_counter() - started)


def _export_rows(index: "Index", record: ModelRecord, matrix: np.ndarray, hidden: list[str], out: Path,
                 shard_rows: int, overwrite: bool, progress: Progress | None,
                 c: sqlite3.Connection) -> tuple[list[str], int, int, list[_LabelColumns]]:
    """Write the shards of ``record``'s photos (inside the snapshot ``c``, with the vector file
    mapped as of it); (the metadata's columns, shards, rows, label sets)."""
    store = index.store
    sets = _label_columns(store, record)
    where, args = _outside(hidden)
    # Photos only: a moment of a video is no file a reader of image_path could open (the
    # clip-retrieval layout has no column for a time within a file).
    where += " AND f.video_id IS NULL"
    total = c.execute("SELECT count(*) FROM files f JOIN embeddings e ON e.content_hash = "
                      f"f.content_hash AND e.model_id = ? WHERE f.status = 'ok'{where}",
                      (record.id, *args)).fetchone()[0]
    if not total:
        raise EmptyIndex(store.path, record.key, hidden)
    _prepare_export_folder(out, overwrite)  # (now that there is something to write)
    shards = math.ceil(total / shard_rows)
    width = len(str(shards - 1))
    if progress:
        progress.start(total)
    cursor = c.cursor()
    cursor.row_factory = None
    cursor.execute(_export_sql(sets, where), (record.id, *_label_args(sets, record), *args))
    columns: list[str] = []
    for number in range(shards):
        rows = cursor.fetchmany(shard_rows)
        name = f"{number:0{width}d}"
        _write_vectors(out / EMBEDDINGS_DIR / f"img_emb_{name}.npy", store, record, matrix,
                       np.array([r[8] for r in rows], dtype=np.int64))
        table = _metadata_table(rows, sets)
        _write_parquet(out / METADATA_DIR / f"metadata_{name}.parquet", table)
        columns = table.column_names
        if progress:
            progress.advance(len(rows))
    return columns, shards, total, sets


def _lost_vectors(store: Store, key: str) -> IndexDamaged:
    """The error for a vector file shorter than the catalog says, or gone (replaced by a
    compaction between the catalog's read and the file's: running again reads the new one)."""
    record = store.get_model(key)
    damage = store.vector_damage(record) if record is not None else None
    if damage is not None:
        return IndexDamaged(store.path, damage.describe(), damage.fix(store.path))
    return IndexDamaged(store.path, f"the vector file of {key} was replaced as it was opened (a compaction)",
                        "Run the command again.")


def _export_model(index: "Index", model: str | None) -> ModelRecord:
    """The record of the model to export: by name or key among the index's, else resolved."""
    if model is None:
        return index.model_record()
    records = index.store.models()
    for record in records:
        if model in (record.name, record.key):
            return record
    from clipdex.models.registry import resolve_model

    try:
        key = resolve_model(model).key
    except ModelError:
        key = model
    from clipdex.index import INT8_KEY_SUFFIX

    for record in records:
        if record.key in (key, key + INT8_KEY_SUFFIX):
            return record
    raise ModelMismatch(key, [r.key for r in records], index.store.path,
                        "Export one of its models: --model " + " or --model ".join(r.name for r in records) + ".")


def _prepare_export_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds an export (unless ``overwrite``: its files are removed)."""
    if out.exists() and not out.is_dir():
        raise InterchangeError(out, "is a file, not a folder", "Choose a folder to export to.")
    held = _export_files(out)
    if held and not overwrite:
        raise InterchangeError(out, f"already holds an export ({len(held)} files: "
                               f"{', '.join(str(p.relative_to(out)) for p in held[:3])}"
                               f"{' …' if len(held) > 3 else ''})",
                               "Pass --overwrite to replace it, or choose another folder.")
    for path in held:  # embedding-reader reads every .npy/.parquet there: none may be left over
        path.unlink()
    (out / EMBEDDINGS_DIR).mkdir(parents=True, exist_ok=True)
    (out / METADATA_DIR).mkdir(parents=True, exist_ok=True)


def _export_files(out: Path) -> list[Path]:
    """The files of an export in ``out`` (what embedding-reader would read, and the manifest)."""
    files = sorted((out / EMBEDDINGS_DIR).glob("*.npy")) if (out / EMBEDDINGS_DIR).is_dir() else []
    if (out / METADATA_DIR).is_dir():
        files += sorted((out / METADATA_DIR).glob("*.parquet"))
    if (out / MANIFEST_NAME).is_file():
        files.append(out / MANIFEST_NAME)
    return files


def _label_columns(store: Store, record: ModelRecord) -> list[_LabelColumns]:
    """The model's stored label sets, each with the names of its two columns."""
    rows = store.conn.execute("SELECT id, name, labels FROM label_sets WHERE model_id = ? "
                              "ORDER BY created_at", (record.id,)).fetchall()
    taken = set(BASE_COLUMNS)
    sets = []
    for set_id, name, labels in rows:
        column = name if name not in taken and f"{name}_prob" not in taken else f"label_{name}"
        taken |= {column, f"{column}_prob"}
        sets.append(_LabelColumns(set_id, name, json.loads(labels), column, f"{column}_prob"))
    return sets


def _export_sql(sets: Sequence[_LabelColumns], where: str) -> str:
    """One query for the export's rows, by path: the file, its vector row, and per label set
    its prediction, the prediction's probability, the correction and (only when the
    correction differs) the probabilities, to look the corrected label up in."""
    selects, joins = [], []
    for i in range(len(sets)):
        selects.append(f", p{i}.label, p{i}.prob, c{i}.label, "
                       f"CASE WHEN c{i}.label IS NOT NULL AND c{i}.label != p{i}.label THEN p{i}.probs END")
        joins.append(f" LEFT JOIN predictions p{i} ON p{i}.set_id = ? AND p{i}.content_hash = f.content_hash"
                     f" LEFT JOIN corrections c{i} ON c{i}.model_id = ? AND c{i}.set_name = ?"
                     f" AND c{i}.content_hash = f.content_hash")
    return ("SELECT f.id, f.path, f.raw_path, f.width, f.height, f.size, f.mtime_ns, f.taken_at, e.row, "
            "f.content_hash" + "".join(selects) + " FROM files f JOIN embeddings e ON "
            "e.content_hash = f.content_hash AND e.model_id = ?" + "".join(joins)
            + f" WHERE f.status = 'ok'{where} ORDER BY f.path")


def _label_args(sets: Sequence[_LabelColumns], record: ModelRecord) -> list[object]:
    args: list[object] = []
    for s in sets:
        args += [s.set_id, record.id, s.name]
    return args


def _write_vectors(target: Path, store: Store, record: ModelRecord, matrix: np.ndarray, rows: np.ndarray) -> None:
    """``rows`` of ``matrix`` (the model's mapped vector file) as a float16 ``.npy``, read a
    chunk at a time, each in file order (pages are read forward, not at random)."""
    from numpy.lib import format as npy

    with replacing(target) as f:
        npy.write_array_header_1_0(f, {"descr": npy.dtype_to_descr(np.dtype("<f2")), "fortran_order": False,
                                       "shape": (len(rows), record.dim)})
        for start in range(0, len(rows), EXPORT_READ_ROWS):
            wanted = rows[start:start + EXPORT_READ_ROWS]
            order = np.argsort(wanted, kind="stable")
            chunk = np.empty((len(wanted), record.dim), dtype=np.float32)
            chunk[order] = matrix[wanted[order]]
            bad = ~unit_rows(chunk)
            if bad.any():
                raise IndexDamaged(store.path, f"{int(bad.sum())} vectors of {record.name} read for the "
                                   "export are not unit vectors (zeroed or garbage)",
                                   "Run `clipdex status --verify` to see which photos lost them, and "
                                   "`clipdex index` their folders to encode them again.")
            f.write(chunk.astype("<f2").tobytes())


def _metadata_table(rows: Sequence[tuple[Any, ...]], sets: Sequence[_LabelColumns]) -> "pa.Table":
    """The metadata of one shard, row-aligned with its vectors."""
    import pyarrow as pa

    columns: dict[str, pa.Array] = {
        "image_path": pa.array([_open_path(r[1], r[2]) for r in rows], pa.string()),
        "id": pa.array([r[0] for r in rows], pa.int64()),
        "path": pa.array([r[1] for r in rows], pa.string()),
        "width": pa.array([r[3] for r in rows], pa.int32()),
        "height": pa.array([r[4] for r in rows], pa.int32()),
        "size": pa.array([r[5] for r in rows], pa.int64()),
        "mtime": pa.array([r[6] if r[6] else None for r in rows], pa.int64()).cast(pa.timestamp("ns", "UTC")),
        "taken_at": pa.array([r[7] for r in rows], pa.string()),
        "sha256": pa.array([r[9] if r[9] and _SHA256.match(r[9]) else None for r in rows], pa.string()),
    }
    for i, s in enumerate(sets):
        base = 10 + 4 * i
        labels, probs = [], []
        for r in rows:
            predicted, prob, corrected, all_probs = r[base:base + 4]
            labels.append(corrected or predicted)
            probs.append(_prob_of(corrected, all_probs, s.labels) if all_probs is not None else prob)
        columns[s.label_column] = pa.array(labels, pa.string())
        columns[s.prob_column] = pa.array(probs, pa.float32())
    return pa.table(columns)


def _open_path(path: str, raw: bytes | None) -> str:
    """The path to open, as Parquet can hold it (UTF-8): the real name, else the shown one."""
    if raw is None:
        return path
    real = os.fsdecode(raw)
    try:
        real.encode("utf-8")
    except UnicodeEncodeError:
        return path  # not UTF-8: Parquet strings cannot hold it; the \\xNN form names it
    return real


def _prob_of(label: str | None, probs: bytes, labels: list[str]) -> float | None:
    """The model's probability of a corrected label (None when it is not one of the set's)."""
    if label not in labels:
        return None
    return float(np.frombuffer(probs, dtype="<f4")[labels.index(label)])


def _write_parquet(target: Path, table: "pa.Table") -> None:
    import pyarrow.parquet as pq

    with replacing(target) as f:
        pq.write_table(table, f)


def _write_bytes(target: Path, data: bytes) -> None:
    with replacing(target) as f:
        f.write(data)


# -- import ---------------------------------------------------------------------
@dataclass(frozen=True)
class SkippedRow:
    """A row that was not imported, and why."""

    shard: str
    row: int
    reason: str


@dataclass
class ImportReport:
    """What ``import`` did."""

    source: str
    model: str
    layout: str  # "clip-retrieval", "clipdex" or "features"
    rows: int = 0  # rows read (in the shards imported this run)
    imported: int = 0  # photos recorded
    vectors_added: int = 0
    reused: int = 0  # photos whose vector the index already held (the same content hash)
    replaced: int = 0  # photos whose held vector differs from the shard's: its vector is added for them
    skipped: int = 0  # rows not imported (zeros, NaN, no path)
    skipped_rows: list[SkippedRow] = field(default_factory=list)  # the first SKIPPED_SHOWN
    failed: int = 0  # rows whose ``status`` says the file could not be prepared: recorded as failed files
    failures: list[tuple[str, str]] = field(default_factory=list)  # the first SKIPPED_SHOWN: (path, reason)
    shards: int = 0
    shards_imported: int = 0
    shards_done_before: int = 0  # finished by an earlier run, unchanged since: not read again
    partial_shards: int = 0  # vector files without their metadata yet (``partial``): left for a later run
    roots: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the import itself
    search_seconds: float = 0.0  # bringing the approximate search index up to date afterwards

    def skip(self, shard: str, row: int, reason: str) -> None:
        self.skipped += 1
        if len(self.skipped_rows) < SKIPPED_SHOWN:
            self.skipped_rows.append(SkippedRow(shard, row, reason))

    def fail(self, path: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < SKIPPED_SHOWN:
            self.failures.append((path, reason))


@dataclass(frozen=True)
class _Shard:
    """One vector file and the metadata of its rows."""

    name: str  # as recorded in the imports table: its path inside the source folder
    vectors: Path
    metadata: Path  # a Parquet file, or the CSV of ids (features layout)

    def fingerprint(self) -> str:
        a, b = os.stat(self.vectors), os.stat(self.metadata)
        return f"{a.st_size}:{a.st_mtime_ns};{b.st_size}:{b.st_mtime_ns}"


@dataclass
class _Rows:
    """The metadata of a run of rows, as the catalog will record them."""

    paths: list[str | None]  # the photo's path (absolute) or URL; None: no way to name it
    local: list[bool]  # whether each path names a file (that may be on this machine), not a URL
    hashes: list[str | None]  # a real content hash from the metadata, when it has one
    taken: list[str | None]
    widths: list[int | None]
    heights: list[int | None]
    sizes: list[int | None]
    mtimes: list[int | None]
    # Columns of a Ray run's shards (clipdex.cluster.shards); None: the shard has no such column.
    raws: list[bytes | None] | None = None  # a local path's exact bytes where they are not UTF-8
    sources: list[str | None] | None = None  # taken_source: whether the file's EXIF was read
    failures: list["_RowFailure | None"] | None = None  # per row: why it failed (status 'failed'), else None
    reused: list[bool] | None = None  # per row: its file's vector is the index's own (status 'reused')


@dataclass(frozen=True)
class _RowFailure:
    """Why a row's file could not be prepared, as the catalog records a failed file."""

    reason: str
    kind: str  # one of clipdex.store.catalog.FAILURE_KINDS
    limit: float | None  # the --max-megapixels a 'limit' failure was judged by


def import_embeddings(index: "Index", source: str | os.PathLike[str], *,
                      images: str | os.PathLike[str] | None = None, allow_new_model: bool = False,
                      wait: bool = False, progress: Progress | None = None,
                      search_progress: BuildProgress | None = None, storage: str | None = None,
                      chunk_rows: int = IMPORT_CHUNK_ROWS, partial: bool = False,
                      roots: Sequence[str] | None = None, refresh: bool = True,
                      lock: bool = True) -> ImportReport:
    """Adopt the embeddings in ``source`` into the index under its model, encoding nothing.

    ``index`` must be opened with the model that made the vectors (its
    dimension is checked first; the index is untouched on a mismatch).
    ``images`` is where relative ``image_path`` values and the features
    layout's ids point. Shards finished by an earlier run and unchanged since
    are skipped; Ctrl-C keeps every finished shard. An index that holds other
    models' vectors takes this one beside them only with ``allow_new_model``.
    ``storage`` ("f32" or "f16") is how a model new to the index keeps its
    vectors (float16: half the file, and half the writing; clip-retrieval's
    vectors are float16 already); a model the index holds keeps its storage.
    Afterwards the approximate search index is brought up to date
    (``search_progress(done, total)`` follows it).

    For a driver that adopts a folder while it is still being written (the Ray
    engine, :mod:`clipdex.cluster`), called again and again during a run:
    ``partial`` ignores (and counts) a vector file whose metadata is not there yet,
    where it would otherwise be refused as half a shard; ``roots`` are the folders
    to record as the photos' (default: their deepest common folder, and the hosts
    of URLs); ``refresh`` False leaves the search index to the caller; ``lock``
    False is for a caller that holds the index's writer lock already (it is not
    re-entrant: taking it again would fail, and letting it go would end the
    caller's).
    """
    check_storage(storage)
    started = time.perf_counter()
    folder = Path(os.path.abspath(os.path.expanduser(os.fspath(source))))
    images_dir = os.path.abspath(os.path.expanduser(os.fspath(images))) if images is not None else None
    if images_dir is not None and not os.path.isdir(images_dir):
        raise InterchangeError(images_dir, "is not a folder", "Pass the folder that holds the images (--images).")
    spec = index.spec()
    store = index.store
    store.require_writable()
    record = store.get_model(spec.key)
    if record is None and store.models() and not allow_new_model:
        raise ModelMismatch(spec.key, [r.key for r in store.models()], store.path,
                            "Pass --add-model to import this model's vectors beside them (nothing is "
                            "removed), or choose another index with --index DIR.")
    layout, shards, lone = _check_source(folder, spec, record.dim if record is not None else None, partial)
    precision = _manifest_precision(folder)
    report = ImportReport(source=str(folder), model=spec.key, layout=layout, shards=len(shards),
                          partial_shards=lone)
    if lock:
        store.acquire_lock(wait=wait)
    previous_cache = store.conn.execute("PRAGMA cache_size").fetchone()[0]
    store.conn.execute(f"PRAGMA cache_size = -{IMPORT_CACHE_KIB}")
    try:
        record = store.get_model(spec.key)  # again, as the writer: another may have imported meanwhile
        done = _finished_shards(store, record, folder) if record is not None else {}
        todo = [s for s in shards if done.get(s.name) != s.fingerprint()]
        report.shards_done_before = len(shards) - len(todo)
        stems = _image_stems(images_dir) if layout == "features" and images_dir else {}
        readers = [_ShardReader(s, layout, folder, images_dir, stems) for s in todo]
        # (The pre-pass over the paths refuses relative ones first; with roots given, a shard that
        # holds one is refused when it is read.)
        report.roots = list(roots) if roots is not None else _roots(readers, layout, folder, images_dir)
        if record is None and shards:
            scale, bias = scoring_params(spec)
            record = store.add_model(spec.key, spec.name, spec.to_json(), _vector_shape(shards[0].vectors)[1],
                                     scale, precision or "fp32", storage or "f32", logit_bias=bias)
        for root in report.roots:
            store.add_root(root, kind="import")
        if progress:
            progress.start(sum(r.count for r in readers))
        seen: set[str] = set()  # content hashes given a vector in this run
        check_known = record is not None and record.rows > 0
        for reader in readers:
            assert record is not None  # (registered above: there are shards)
            record = _import_shard(store, record, reader, report, seen, check_known, chunk_rows, precision,
                                   progress)
            reader.close()
            _record_shard(store, record, folder, reader.shard, reader.count)
            report.shards_imported += 1
    finally:
        store.conn.execute(f"PRAGMA cache_size = {previous_cache}")
        if lock:
            store.release_lock()
    report.seconds = time.perf_counter() - started
    if not refresh:
        return report
    # Builds or updates the approximate search index; run again, an import whose shards are all
    # done still brings it up to date (an earlier run killed while building it).
    started = time.perf_counter()
    if lock:
        index.refresh_search(search_progress, wait=wait)
    else:
        index._refresh_search(search_progress)  # (under the caller's lock)
    report.search_seconds = time.perf_counter() - started
    return report


def _manifest_precision(folder: Path) -> str | None:
    """The precision a ``clipdex.json`` says the vectors were computed in (a Ray run's shards
    say it; an export does not): None where it says none."""
    from clipdex.models.precision import CONCRETE

    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        precision = manifest["model"]["precision"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if precision is None:
        return None
    if precision not in CONCRETE:
        raise InterchangeError(folder / MANIFEST_NAME, f"says its vectors were computed in precision {precision!r}, "
                               f"which clipdex does not know (one of {', '.join(CONCRETE)})",
                               "Write the shards again with this version of clipdex, or correct the model's "
                               '"precision" there.')
    return str(precision)


def check_source(source: str | os.PathLike[str], spec: "ModelSpec",
                 dim: int | None = None) -> tuple[str, list[_Shard]]:
    """The layout of the folder ``source`` and its shards, checked against ``spec``: a clipdex
    export must be of that model, and every shard's vectors of ``dim`` dimensions (None: the
    model's, learnt from its config). Reads headers only; raises what an import would."""
    folder = Path(os.path.abspath(os.path.expanduser(os.fspath(source))))
    layout, shards, _ = _check_source(folder, spec, dim, partial=False)
    return layout, shards


def _check_source(folder: Path, spec: "ModelSpec", dim: int | None,
                  partial: bool) -> tuple[str, list[_Shard], int]:
    """:func:`check_source`, and with ``partial`` the vector files whose metadata is not
    written yet left out: (layout, shards, how many were left out)."""
    layout, shards, lone = _find_shards(folder, partial)
    manifest_dim = _check_manifest(folder, spec)
    expected = dim if dim is not None else _expected_dim(spec, manifest_dim)
    for shard in shards:
        found = _vector_shape(shard.vectors)[1]
        if found != expected:
            raise DimensionMismatch(str(shard.vectors), found, spec.name, spec.key, expected)
    return layout, shards, lone


def _expected_dim(spec: "ModelSpec", manifest_dim: int | None) -> int:
    """The dimension ``spec``'s vectors have: from its config; for a hub Transformers checkpoint
    that is not on this machine, what a clipdex export of it says (else the error that says
    how to bring the checkpoint)."""
    try:
        return embedding_dim(spec)
    except ModelUnavailable as e:
        if manifest_dim is None:
            raise ModelUnavailable(spec.name, e.looked, "not downloaded yet, and the dimension of a Transformers "
                                   "checkpoint's vectors is read from its config.json",
                                   f"Bring the checkpoint first (`hf download {spec.pretrained}` on a machine with "
                                   "internet, then copy its Hugging Face cache here and set HF_HOME to it), or "
                                   "import a `clipdex export` of the vectors (its clipdex.json says their "
                                   "dimension).") from None
        return manifest_dim


def _find_shards(folder: Path, partial: bool = False) -> tuple[str, list[_Shard], int]:
    """The layout of ``folder``, its shards in shard order (paired by shard number), and how
    many vector files were left out for lack of their metadata: with ``partial``, those of a
    writer that puts the vectors in place first (a shard is whole once its metadata is there:
    clipdex.cluster.shards); without, they are refused."""
    if not folder.is_dir():
        raise InterchangeError(folder, "is not a folder", "Pass the folder that holds img_emb/ and metadata/ "
                               f"(clip-retrieval, clipdex export), or {FEATURES_FILE} + {FEATURE_IDS_FILE}.")
    emb, meta = folder / EMBEDDINGS_DIR, folder / METADATA_DIR
    if emb.is_dir():
        vectors = _by_number(emb.glob("*.npy"))
        if not vectors:
            raise InterchangeError(emb, "holds no .npy files", "Pass a folder written by `clip-retrieval "
                                   "inference` or `clipdex export`.")
        if not meta.is_dir() and not partial:
            raise InterchangeError(folder, f"has {EMBEDDINGS_DIR}/ but no {METADATA_DIR}/ beside it (the "
                                   "paths of the vectors' photos)", "Copy the metadata folder too.")
        metadata = _by_number(meta.glob("*.parquet")) if meta.is_dir() else {}
        lone = [k for k in vectors if k not in metadata] if partial else []
        for k in lone:
            del vectors[k]
        unpaired = sorted(set(vectors) ^ set(metadata))
        if unpaired:
            lonely = [str((vectors.get(k) or metadata[k]).relative_to(folder)) for k in unpaired[:3]]
            raise InterchangeError(folder, f"{len(unpaired)} shards lack their other half ({', '.join(lonely)}"
                                   f"{' …' if len(unpaired) > 3 else ''}): every img_emb_N.npy needs its "
                                   "metadata_N.parquet", "Copy the missing files, or remove the lone ones.")
        layout = "clipdex" if (folder / MANIFEST_NAME).is_file() else "clip-retrieval"
        return layout, [_Shard(str(vectors[k].relative_to(folder)), vectors[k], metadata[k])
                        for k in sorted(vectors)], len(lone)
    if (folder / FEATURES_FILE).is_file():
        ids = folder / FEATURE_IDS_FILE
        if not ids.is_file():
            raise InterchangeError(folder, f"has {FEATURES_FILE} but no {FEATURE_IDS_FILE} (the ids of its rows)",
                                   "Copy the ids file beside it.")
        return "features", [_Shard(FEATURES_FILE, folder / FEATURES_FILE, ids)], 0
    raise InterchangeError(folder, f"holds neither {EMBEDDINGS_DIR}/ + {METADATA_DIR}/ nor {FEATURES_FILE} + "
                           f"{FEATURE_IDS_FILE}", "Pass a folder written by `clip-retrieval inference` or "
                           "`clipdex export`, or the CLIP tutorial's features folder.")


def _by_number(paths: Iterator[Path]) -> dict[tuple[int, str], Path]:
    """Files keyed by the number their name ends in (img_emb_10 pairs metadata_10, and comes
    after img_emb_9 even where the names are not zero-padded)."""
    keyed = {}
    for path in paths:
        found = _SHARD_NUMBER.search(path.stem)
        keyed[(int(found.group(1)), "") if found else (-1, path.stem)] = path
    return keyed


def _check_manifest(folder: Path, spec: "ModelSpec") -> int | None:
    """Refuse a clipdex export of another model (same dimension or not: its vectors mean other
    things); the dimension a clipdex export of ``spec`` says its vectors have (else None)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        key, name = manifest["model"]["key"], manifest["model"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not clipdex's export, or a manifest it cannot read: the dimension check remains
    if key != spec.key:
        raise ModelError(f"{folder} holds vectors of {name} ({key}), not of {spec.name} ({spec.key}). Import "
                         f"it with the model that made them (--model {name}, or the same --weights file).")
    dim = manifest["model"].get("dim")
    return dim if isinstance(dim, int) and dim > 0 else None


def _vector_shape(path: Path) -> tuple[int, int]:
    """(rows, dimension) of a ``.npy`` of vectors, from its header only."""
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise InterchangeError(path, f"is not a NumPy array file ({e})", "Pass the vectors as .npy files.") from None
    if array.ndim != 2 or array.dtype.kind != "f":
        raise InterchangeError(path, f"holds a {array.dtype} array of shape {array.shape}, not rows of float "
                               "vectors", "Pass a 2-D float16 or float32 array (one row per image).")
    return int(array.shape[0]), int(array.shape[1])


def embedding_dim(spec: "ModelSpec") -> int:
    """The dimension of ``spec``'s vectors, learnt without building the model or its weights:
    a Transformers checkpoint's config.json (:class:`ModelUnavailable` for a hub checkpoint
    not on this machine), a custom architecture's config, else open_clip's config of the
    architecture."""
    if spec.family == "hf":
        from clipdex.models.hf import locate

        return hf_embedding_dim(locate(spec, download=False))
    if spec.config is not None:
        return int(spec.config["embed_dim"])
    config = _open_clip_config(spec.arch)
    if config is None:
        raise ModelError(f"cannot tell the dimension of model {spec.name} ({spec.arch}) without building it: "
                         "open_clip has no config for that architecture. Pass --model-config FILE.json "
                         "(with --weights FILE) for a custom architecture.")
    return int(config["embed_dim"])


def hf_embedding_dim(folder: Path) -> int:
    """The width of a Transformers checkpoint's image vectors (``get_image_features``), from its
    config.json: CLIP projects both towers to ``projection_dim``; SigLIP's image vector is its
    vision tower's pooled output, ``vision_config.hidden_size``. A value config.json leaves out
    is the config class's default (save_pretrained writes only what differs from it)."""
    from clipdex.models.hf import model_type

    kind = model_type(folder)  # (refuses a missing or broken config.json, and other models)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if kind == "clip":
        value = config.get("projection_dim")
    else:
        value = (config.get("vision_config") or {}).get("hidden_size")
    return int(value or HF_DEFAULT_DIMS[kind])


def _open_clip_config(arch: str) -> dict[str, Any] | None:
    """open_clip's model config of ``arch``: read from its package's JSON (importing open_clip
    imports torch: seconds), else from open_clip itself (configs added at run time)."""
    import importlib.util

    found = importlib.util.find_spec("open_clip")
    for location in (found.submodule_search_locations or []) if found else []:
        path = Path(location) / "model_configs" / f"{arch}.json"
        if path.is_file():
            return dict(json.loads(path.read_text(encoding="utf-8")))
    try:
        import open_clip
    except ImportError:
        return None
    config = open_clip.get_model_config(arch)
    return dict(config) if config else None


def scoring_params(spec: "ModelSpec") -> tuple[float, float | None]:
    """(exp(logit_scale), logit_bias) of ``spec`` for zero-shot classification, read from its
    weights where they are on this machine (nothing is downloaded, no model is built): a local
    ``--weights`` file, a Transformers checkpoint's folder, or the Hugging Face cache's file of
    a hub model. A bias makes it a sigmoid model (SigLIP); None a softmax model (CLIP).

    Where the weights are not here (vectors imported on a machine without the model) or hold no
    scale, trained CLIP's (100, None), with a warning: until the model is at hand, its labels are
    scored as a softmax at scale 100, which is wrong for a SigLIP model. (Read when the vectors
    come in rather than later, so that an import with the model here is right at once; a
    classification that loads the model corrects a bias recorded missing: ``Index.classify``.)"""
    try:
        files = _scoring_files(spec)
    except ModelUnavailable as e:
        return _default_scoring(spec, f"its weights are not on this machine ({e.looked})")
    try:
        found = {key: _read_scalar(path, key) for key, path in files.items()}
    except Exception as e:  # noqa: BLE001  (a damaged or odd checkpoint: pickles and safetensors raise many kinds)
        return _default_scoring(spec, f"its weights could not be read ({first_line(e)})")
    scale, bias = found.get("logit_scale"), found.get("logit_bias")
    if scale is None:
        return _default_scoring(spec, "its weights hold no logit_scale")
    return math.exp(scale), bias


def _default_scoring(spec: "ModelSpec", why: str) -> tuple[float, None]:
    log.warning("%s: %s, so its labels are scored as a softmax at scale %g (as CLIP's) until the model is on "
                "this machine, which for a SigLIP model is not its own scoring (a sigmoid with its bias); the "
                "first classification with the model here records its own.", spec.name, why, CLIP_LOGIT_SCALE)
    return CLIP_LOGIT_SCALE, None


def _scoring_files(spec: "ModelSpec") -> dict[str, Path]:
    """Which file of ``spec``'s weights holds each of :data:`SCORING_KEYS` (a key may be
    missing: CLIP has no bias); :class:`ModelUnavailable` where they are not on disk."""
    if spec.family == "hf":
        from clipdex.models.hf import locate, weight_files

        weights = weight_files(locate(spec, download=False))
        if not weights:
            raise ModelUnavailable(spec.name, str(spec.weights or spec.pretrained), "the checkpoint has no weights",
                                   "Save the model there again with save_pretrained.")
        if not weights[0].name.endswith(".index.json"):
            return dict.fromkeys(SCORING_KEYS, weights[0])
        # A sharded checkpoint: its index says which shard holds each tensor.
        weight_map = json.loads(weights[0].read_text(encoding="utf-8"))["weight_map"]
        return {key: weights[0].parent / weight_map[key] for key in SCORING_KEYS if key in weight_map}
    from clipdex.models.weights import locate_weights

    path = Path(spec.weights) if spec.weights else Path(locate_weights(spec, download=False))
    if not path.is_file():
        raise ModelUnavailable(spec.name, str(path), "no such file", "Pass the checkpoint with --weights FILE.")
    return dict.fromkeys(SCORING_KEYS, path)


def _read_scalar(path: Path, key: str) -> float | None:
    """The one-number tensor ``key`` of a weights file (None if it has none): a safetensors
    file is read through its header without torch, a pickle (.pt, .bin) through torch."""
    if path.suffix == ".safetensors":
        return _safetensors_scalar(path, key)
    import torch

    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    for name in (key, f"module.{key}"):
        if name in state:
            return float(state[name].float().item())
    return None


def _safetensors_scalar(path: Path, key: str) -> float | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        names = set(f.keys())
        name = next((n for n in (key, f"module.{key}") if n in names), None)
        if name is None:
            return None
        if f.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16: widen its bits by hand
            return _bf16_scalar(path, name)
        return float(np.asarray(f.get_tensor(name), dtype=np.float64).reshape(-1)[0])


def _bf16_scalar(path: Path, name: str) -> float:
    """A bfloat16 tensor's first value, from the safetensors layout (an 8-byte header length,
    the JSON header, then the data): its two bytes are a float32's upper half."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        start = json.loads(f.read(length))[name]["data_offsets"][0]
        f.seek(8 + length + start)
        bits = np.frombuffer(f.read(2), dtype="<u2").astype("<u4") << 16
    return float(bits.view("<f4")[0])


def _finished_shards(store: Store, record: ModelRecord, folder: Path) -> dict[str, str]:
    """shard -> fingerprint of the shards of ``folder`` an earlier run finished."""
    rows = store.conn.execute("SELECT shard, fingerprint FROM imports WHERE model_id = ? AND source = ?",
                              (record.id, str(folder)))
    return {shard: fingerprint for shard, fingerprint in rows}


def _record_shard(store: Store, record: ModelRecord, folder: Path, shard: _Shard, rows: int) -> None:
    with store.transaction() as c:
        c.execute("INSERT OR REPLACE INTO imports (model_id, source, shard, rows, fingerprint, done_at) "
                  "VALUES (?, ?, ?, ?, ?, ?)", (record.id, str(folder), shard.name, rows, shard.fingerprint(),
                                                time.time()))


def _image_stems(folder: str) -> dict[str, str]:
    """stem -> file name of the images in ``folder`` (not its subfolders)."""
    from clipdex.decode import supported_extensions

    extensions = set(supported_extensions())
    stems: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in extensions:
                stems.setdefault(stem, entry.name)
    return stems


class _ShardReader:
    """One shard's vectors (memory-mapped) and metadata, read a run of rows at a time.

    The vectors are mapped and the metadata table read when the first rows are asked
    for, and both let go by :meth:`close`: one shard in memory at a time (a map holds
    the pages it has read while it lives)."""

    def __init__(self, shard: _Shard, layout: str, source: Path, images: str | None,
                 stems: dict[str, str]) -> None:
        self.shard = shard
        self.layout = layout
        self.source = source
        self.images = images
        self.stems = stems
        self.count = _vector_shape(shard.vectors)[0]  # (its header: mapped when its rows are read)
        self._vectors: np.ndarray | None = None
        self._table: pa.Table | None = None
        self._ids: list[str] | None = None
        self._columns: list[str] = []
        if layout == "features":
            self._ids = _read_ids(shard.metadata)
            rows = len(self._ids)
        else:
            _require_pyarrow(shard.metadata, "reading a shard's metadata (Parquet)")
            import pyarrow.parquet as pq

            try:
                parquet = pq.ParquetFile(shard.metadata)
            except Exception as e:  # noqa: BLE001  (pyarrow raises several kinds for a bad file)
                raise _unreadable(shard.metadata, e) from None
            names = parquet.schema_arrow.names
            self._columns = self._wanted(names)
            if not self._columns:
                raise InterchangeError(shard.metadata, "has no image_path or url column: nothing names its "
                                       f"images (its columns: {', '.join(names[:12]) or 'none'})",
                                       "clip-retrieval writes image_path (or url and caption); add one.")
            rows = parquet.metadata.num_rows
        if rows != self.count:
            raise InterchangeError(shard.metadata, f"describes {rows} images, but {shard.vectors.name} holds "
                                   f"{self.count} vectors", "The two files must be row-aligned: copy both "
                                   "again from where they were written.")

    @staticmethod
    def _wanted(names: list[str]) -> list[str]:
        lowered = {n.lower() for n in names}
        wanted = {"image_path", "url", "sha256", "width", "height", "original_width", "original_height",
                  "size", "mtime", "exif", *TAKEN_COLUMNS, *RAY_COLUMNS}
        if not lowered & {"image_path", "url"}:
            return names[:0]  # nothing names the images: reported per row
        return [n for n in names if n.lower() in wanted]

    def _read(self, columns: list[str]) -> "pa.Table":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(self.shard.metadata, columns=columns)
        except Exception as e:  # noqa: BLE001
            raise _unreadable(self.shard.metadata, e) from None

    def names(self) -> "pa.ChunkedArray | None":
        """The column naming the images (image_path, else url), for the pre-pass over paths."""
        for column in ("image_path", "url"):
            if column in self._columns:
                return self._read([column]).column(column)
        return None

    @property
    def vectors(self) -> np.ndarray:
        """The shard's vectors, memory-mapped on first use (until :meth:`close`)."""
        if self._vectors is None:
            self._vectors = np.load(self.shard.vectors, mmap_mode="r")
        return self._vectors

    def close(self) -> None:
        """Let the shard's metadata and the map of its vectors go (their pages with them)."""
        self._table = None
        self._vectors = None

    def rows(self, start: int, stop: int) -> _Rows:
        if self._ids is not None:
            return self._id_rows(self._ids[start:stop])
        if self._table is None:
            self._table = self._read(self._columns)
        table = self._table.slice(start, stop - start)
        n = stop - start

        def column(*names: str) -> list[Any]:
            for name in names:
                if name in table.column_names:
                    return table.column(name).to_pylist()
            return [None] * n

        paths: list[str | None] = [None] * n
        local = [False] * n
        if "image_path" in table.column_names:
            paths, local = self._paths(table.column("image_path"))
        if "url" in table.column_names:
            paths = [p or u or None for p, u in zip(paths, column("url"))]
        hashes = [h if isinstance(h, str) and _SHA256.match(h) else None for h in column("sha256")]
        names = table.column_names
        return _Rows(paths=paths, local=local, hashes=hashes, taken=self._taken(table, n),
                     widths=_ints(table, n, "original_width", "width"),
                     heights=_ints(table, n, "original_height", "height"), sizes=_ints(table, n, "size"),
                     mtimes=_mtimes(table, n),
                     raws=[r if isinstance(r, bytes) else None for r in column("raw_path")]
                     if "raw_path" in names else None,
                     sources=[v if isinstance(v, str) else None for v in column("taken_source")]
                     if "taken_source" in names else None,
                     reused=[v == STATUS_REUSED for v in column("status")] if "status" in names else None,
                     failures=_row_failures(column("status"), column("error_message"), column("failure_kind"),
                                            column("failure_limit")) if "status" in names else None)

    def _paths(self, named: "pa.ChunkedArray") -> tuple[list[str | None], list[bool]]:
        """The paths of an image_path column (absolute, normalised; URLs as they are), and
        which of them are files. Checked for the column at once: most are taken as they are."""
        import pyarrow.compute as pc

        values: list[str | None] = named.to_pylist()
        if (pc.all(pc.starts_with(named, os.sep)).as_py() is not False
                and not pc.any(pc.match_substring_regex(named, _UNNORMAL)).as_py()):
            return values, [v is not None for v in values]
        paths = [self._path(v) if v else None for v in values]
        return paths, [p is not None and not _URL.match(p) for p in paths]

    def _path(self, value: str) -> str:
        if value[0] == os.sep:
            return os.path.normpath(value)
        if _URL.match(value):
            return value
        if self.images is None:  # (refused by the pre-pass over the paths, unless the roots were given)
            raise InterchangeError(self.shard.metadata, f"names its images by relative paths (e.g. {value!r})",
                                   "Pass --images FOLDER: the folder those paths start from.")
        return os.path.normpath(os.path.join(self.images, value))

    def _id_rows(self, ids: list[str]) -> _Rows:
        base = self.images or str(self.source)
        paths: list[str | None] = [os.path.join(base, self.stems.get(i, i)) if i else None for i in ids]
        n = len(ids)
        return _Rows(paths=paths, local=[True] * n, hashes=[None] * n, taken=[None] * n, widths=[None] * n,
                     heights=[None] * n,
                     sizes=[None] * n, mtimes=[None] * n)

    def _taken(self, table: "pa.Table", n: int) -> list[str | None]:
        by_lower = {name.lower(): name for name in table.column_names}
        taken: list[str | None] = [None] * n
        for wanted in TAKEN_COLUMNS:
            if wanted in by_lower:
                values = table.column(by_lower[wanted]).to_pylist()
                taken = [t or taken_at(v) for t, v in zip(taken, values)]
        if "exif" in by_lower:
            taken = [t or _exif_taken(v) for t, v in zip(taken, table.column(by_lower["exif"]).to_pylist())]
        return taken


def _row_failures(statuses: list[Any], messages: list[Any], kinds: list[Any],
                  limits: list[Any]) -> list[_RowFailure | None]:
    """Per row, why its file could not be prepared where its ``status`` is 'failed' (a Ray run
    writes such rows, vectors of zeros: clipdex.cluster.shards), else None. A kind clipdex does
    not know is taken as 'permanent' (tried again only with --retry-failed)."""
    from clipdex.store.catalog import FAILURE_KINDS

    out: list[_RowFailure | None] = []
    for status, message, kind, limit in zip(statuses, messages, kinds, limits):
        if status != STATUS_FAILED:
            out.append(None)
            continue
        judged_by = float(limit) if isinstance(limit, (int, float)) and math.isfinite(limit) else None
        out.append(_RowFailure(reason=str(message) if message else STATUS_FAILED,
                               kind=kind if kind in FAILURE_KINDS else "permanent", limit=judged_by))
    return out


def _unreadable(path: Path, error: Exception) -> InterchangeError:
    return InterchangeError(path, f"cannot be read as Parquet ({error})",
                            "Copy the file again from where it was written.")


def _read_ids(path: Path) -> list[str]:
    """The ids of the features layout's rows: the CSV's first column, under its header."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InterchangeError(path, f"cannot be read as CSV ({e})", "Pass the ids as a CSV file with a "
                               "header (e.g. photo_id), one row per vector.") from None
    return [row[0].strip() if row else "" for row in rows[1:]]


def _mtimes(table: "pa.Table", n: int) -> list[int | None]:
    """mtime_ns per row from an ``mtime`` column: a timestamp, or seconds since the epoch."""
    import pyarrow as pa

    if "mtime" not in table.column_names:
        return [None] * n
    column = table.column("mtime")
    if pa.types.is_timestamp(column.type):
        return list(column.cast(pa.timestamp("ns", column.type.tz)).cast(pa.int64()).to_pylist())
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return [int(v * 1e9) if v is not None and math.isfinite(v) else None for v in column.to_pylist()]
    return [None] * n


def taken_at(value: object) -> str | None:
    """When a photo was taken, as the catalog keeps it ('YYYY-MM-DDTHH:MM:SS', wall-clock time),
    from an EXIF date ('2019:05:01 12:00:00'), an ISO date or time, or a datetime; None when
    it says nothing usable."""
    if value is None:
        return None
    if hasattr(value, "strftime"):
        try:
            return str(value.strftime("%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return None
    found = _DATE_TIME.match(str(value))
    if found is None:
        return None
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in found.groups())
    if not (1 <= month <= 12 and year > 0 and hour < 24 and minute < 60 and second < 61):
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:  # 2021-02-31 is no date
        return None
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{min(second, 59):02d}"


def _exif_taken(value: object) -> str | None:
    """The date taken in an img2dataset ``exif`` cell (JSON of EXIF tags)."""
    if not value:
        return None
    try:
        tags = json.loads(str(value)) if not isinstance(value, dict) else value
    except ValueError:
        return None
    if not isinstance(tags, dict):
        return None
    return next((t for t in (taken_at(tags.get(k)) for k in EXIF_KEYS) if t), None)


def _roots(readers: Sequence[_ShardReader], layout: str, source: Path, images: str | None) -> list[str]:
    """The folders the imported photos live under (one, their deepest common folder), and
    ``scheme://host`` for URLs; raises for relative paths without ``images``."""
    if layout == "features":
        return [images or str(source)]
    import pyarrow as pa
    import pyarrow.compute as pc

    roots: set[str] = set()
    low: str | None = None
    high: str | None = None
    for reader in readers:
        names = reader.names()
        if names is None:
            continue
        names = pc.drop_null(names)
        is_url = pc.match_substring_regex(names, _URL.pattern)
        hosts = pc.extract_regex(pc.filter(names, is_url), r"^(?P<root>[A-Za-z][A-Za-z0-9+.-]*://[^/]*)")
        roots |= {h for h in pc.unique(pc.struct_field(hosts, "root")).to_pylist() if h}
        local = pc.filter(names, pc.and_(pc.invert(is_url), pc.not_equal(names, "")))
        relative = pc.filter(local, pc.invert(pc.starts_with(local, os.sep)))
        if len(relative) and images is None:
            raise InterchangeError(reader.shard.metadata, f"names its images by relative paths (e.g. "
                                   f"{relative[0].as_py()!r})", "Pass --images FOLDER: the folder those "
                                   "paths start from.")
        for values, join in ((pc.filter(local, pc.starts_with(local, os.sep)), None), (relative, images)):
            if not len(values):
                continue
            bounds = pc.min_max(values.cast(pa.string()))
            for bound in (bounds["min"].as_py(), bounds["max"].as_py()):
                path = os.path.normpath(os.path.join(join, bound) if join else bound)
                low = path if low is None or path < low else low
                high = path if high is None or path > high else high
    if low is not None and high is not None:
        common = os.path.commonpath([low, high])  # the folder of every path between them too
        roots.add(os.path.dirname(common) if common in (low, high) else common)
    return sorted(roots)


def _import_shard(store: Store, record: ModelRecord, reader: _ShardReader, report: ImportReport,
                  seen: set[str], check_known: bool, chunk_rows: int, precision: str | None,
                  progress: Progress | None) -> ModelRecord:
    """Import one shard, ``chunk_rows`` rows per atomic commit; returns the model as updated.
    ``precision``: what the vectors were computed in, where the source says (None: the model's).
    Rows whose file failed (``status`` 'failed') are recorded as failed files, as local indexing
    records its own, so that `clipdex index` of their folder tries them again when it would its own."""
    shard = reader.shard.name
    for start in range(0, reader.count, chunk_rows):
        stop = min(start + chunk_rows, reader.count)
        block = np.array(reader.vectors[start:stop], dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        usable = np.isfinite(norms) & (norms > 0)
        block /= np.where(usable, norms, 1.0)[:, None]
        meta = reader.rows(start, stop)
        hashes: dict[int, str] = {}  # row in the chunk -> content hash, for the rows to import
        folders: dict[str, str] = {}
        files: list[NewFile] = []  # the catalog's rows: the failed files first
        vector_rows = np.ones(len(block), dtype=bool)  # rows meant to hold a vector (not a failure's zeros)
        if meta.failures is not None:
            files = _failed_files(meta, shard, start, report)
            vector_rows = np.array([f is None for f in meta.failures], dtype=bool)
        if meta.reused is not None and any(meta.reused):
            reused_rows = np.array(meta.reused, dtype=bool)
            vector_rows &= ~reused_rows
            files += _held_files(store, record, meta, np.flatnonzero(reused_rows).tolist(), seen, report)
        failed = len(files)  # (the reused files, counted as imported by _held_files)
        for i in np.flatnonzero(vector_rows & ~usable).tolist():
            report.skip(shard, start + i, "a row of zeros" if norms[i] == 0 else "not a finite vector (NaN or inf)")
        for i in np.flatnonzero(vector_rows & usable).tolist():
            path = meta.paths[i]
            if path is None:
                report.skip(shard, start + i, "no image_path, url or id names its image")
            else:
                hashes[i] = meta.hashes[i] or synthetic_hash(path, folders)
        known = _known_hashes(store, record, set(hashes.values()) - seen) if check_known else {}
        if known:
            hashes, known = _revise_changed(store, record, reader, start, block, meta.paths, hashes, known, seen,
                                            report)
        new_rows: list[int] = []
        new_hashes: list[str] = []
        for i, content_hash in hashes.items():
            if content_hash in seen or content_hash in known:
                report.reused += 1
            else:
                seen.add(content_hash)
                new_rows.append(i)
                new_hashes.append(content_hash)
            files.append(_new_file(meta, i, content_hash))
        vectors = block if len(new_rows) == len(block) else block[new_rows]  # (in order: no copy)
        record = store.commit_batch(record, vectors, new_hashes, files, precision=precision)
        report.rows += stop - start
        report.imported += len(files) - failed
        report.vectors_added += len(new_hashes)
        if progress:
            progress.advance(stop - start)
    return record


def synthetic_hash(identity: str, folders: dict[str, str] | None = None) -> str:
    """The stable content hash of an imported photo that was not hashed: ``import:``, then
    the sha256 of its folder's path (or URL) and of its own, cut (see the module's docstring).

    Photos of one folder share the first part, so a million of them reach the catalog's
    hash indexes folder by folder instead of at random places: commits take half the time.
    ``folders`` remembers the first parts of folders seen (one sha256 per photo, not two).
    """
    folder = identity.rpartition("/")[0]
    start = folders.get(folder) if folders is not None else None
    if start is None:
        digest = hashlib.sha256(folder.encode("utf-8", "surrogateescape")).hexdigest()
        start = HASH_PREFIX + digest[:FOLDER_DIGITS]
        if folders is not None:
            folders[folder] = start
    return start + hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:NAME_DIGITS]


def _known_hashes(store: Store, record: ModelRecord, hashes: set[str]) -> dict[str, int]:
    """Those of ``hashes`` that already have a vector of ``record``, with its row."""
    wanted = list(hashes)
    known: dict[str, int] = {}
    for start in range(0, len(wanted), SQL_CHUNK):
        chunk = wanted[start:start + SQL_CHUNK]
        rows = store.conn.execute(f"SELECT content_hash, row FROM embeddings WHERE model_id = ? AND content_hash "
                                  f"IN ({', '.join('?' * len(chunk))})", (record.id, *chunk))
        known.update(rows)
    return known


def _revise_changed(store: Store, record: ModelRecord, reader: "_ShardReader", start: int, block: np.ndarray,
                    paths: Sequence[str | None], hashes: dict[int, str], known: dict[str, int], seen: set[str],
                    report: ImportReport) -> tuple[dict[int, str], dict[str, int]]:
    """(hashes, known) with a new hash for each row whose photo has a vector of ``record``
    that differs from the row's (a shard changed since it was imported: its vectors win).

    The new hash is the synthetic hash of the photo's identity and a digest of the row's
    bytes in the shard, so importing the same changed shard again finds it held. The
    photo's file then points at the new vector (the old row is left to `clipdex compact`);
    the other models' vectors of the old hash are recorded under the new one too, so that
    the photo keeps them."""
    held = [(i, h) for i, h in hashes.items() if h in known and h not in seen]
    if not held:
        return hashes, known
    try:
        stored = store.vector_file(record).take(np.array([known[h] for _, h in held], dtype=np.int64))
    except ShortVectorFile:
        raise _lost_vectors(store, record.key) from None
    rows = np.array([i for i, _ in held], dtype=np.int64)
    changed = rows[np.einsum("ij,ij->i", stored, block[rows]) < 1.0 - VECTOR_CHANGED]
    if not len(changed):
        return hashes, known
    revised = dict(hashes)
    folders: dict[str, str] = {}
    for i in changed.tolist():
        digest = hashlib.sha256(np.ascontiguousarray(reader.vectors[start + i]).tobytes()).hexdigest()
        revised[i] = synthetic_hash(f"{paths[i]}{REVISION_MARK}{digest[:REVISION_DIGITS]}", folders)
    held_before = _known_hashes(store, record, {revised[i] for i in changed.tolist()} - seen)
    moves = {(hashes[i], revised[i]) for i in changed.tolist() if revised[i] not in held_before}
    report.replaced += len(moves)
    if moves:
        with store.transaction() as c:
            # One key lookup per other model (the key is (model_id, content_hash)), never a scan.
            others = [m.id for m in store.models() if m.id != record.id]
            c.executemany("INSERT OR IGNORE INTO embeddings (model_id, content_hash, row, precision) SELECT "
                          "model_id, ?, row, precision FROM embeddings WHERE model_id = ? AND content_hash = ?",
                          [(new, other, old) for old, new in sorted(moves) for other in others])
    return revised, known | held_before


REUSE_LOST = ("its vector was to be reused, but the index no longer holds it (compacted or removed meanwhile); it "
              "is encoded on the next run")


def _held_files(store: Store, record: ModelRecord, meta: _Rows, rows: list[int], seen: set[str],
                report: ImportReport) -> list[NewFile]:
    """The catalog rows of files a Ray run found the index holding already ('reused': moved,
    renamed, copies), with the upright size recorded for their content. One whose vector is
    gone since (or whose hash the run only took for held) is a transient failure: sent again."""
    wanted = {h for i in rows if (h := meta.hashes[i]) is not None}
    held = set(_known_hashes(store, record, wanted - seen)) | (wanted & seen)
    sizes = store.sizes_of_hashes(held)
    files = []
    for i in rows:
        path, content_hash = meta.paths[i], meta.hashes[i]
        if path is None:
            continue
        if content_hash is None or content_hash not in held:
            size, mtime_ns = _stat(meta, i)
            files.append(NewFile(path=path, size=size, mtime_ns=mtime_ns, content_hash=content_hash,
                                 reason=REUSE_LOST, raw_path=meta.raws[i] if meta.raws is not None else None,
                                 failure_kind="transient"))
            report.fail(path, REUSE_LOST)
            continue
        file = _new_file(meta, i, content_hash)
        width, height = sizes.get(content_hash, (None, None))
        files.append(dataclasses.replace(file, width=width, height=height))
        report.reused += 1
        report.imported += 1
    return files


def _failed_files(meta: _Rows, shard: str, start: int, report: ImportReport) -> list[NewFile]:
    """The catalog rows of the chunk's failed files (each counted in ``report``); a failed row
    that names no image is skipped."""
    assert meta.failures is not None
    files = []
    for i, failure in enumerate(meta.failures):
        if failure is None:
            continue
        path = meta.paths[i]
        if path is None:
            report.skip(shard, start + i, f"failed ({failure.reason}), and no image_path names its image")
            continue
        size, mtime_ns = _stat(meta, i)
        raw = meta.raws[i] if meta.raws is not None else None
        files.append(NewFile(path=path, size=size, mtime_ns=mtime_ns, content_hash=meta.hashes[i],
                             width=meta.widths[i], height=meta.heights[i], reason=failure.reason, raw_path=raw,
                             failure_kind=failure.kind, failure_limit=failure.limit))
        report.fail(path, failure.reason)
    return files


def _stat(meta: _Rows, i: int) -> tuple[int, int]:
    """(size, mtime_ns) of row ``i``'s file: its real ones where it is here (so `clipdex index`
    finds it unchanged), else what the metadata says. A Ray run's row (it has a status) keeps
    the stat of the bytes its worker read: a photo edited since has a vector of its old bytes,
    and must look changed to the next run."""
    path = meta.paths[i]
    assert path is not None
    raw = meta.raws[i] if meta.raws is not None else None
    size, mtime_ns = meta.sizes[i], meta.mtimes[i]
    if meta.local[i] and not (meta.failures is not None and size is not None and mtime_ns is not None):
        try:
            st = os.stat(raw if raw is not None else path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        except (OSError, ValueError):
            pass  # not on this machine (or not a name the OS takes): the metadata's values
    return int(size or 0), int(mtime_ns or 0)


def _new_file(meta: _Rows, i: int, content_hash: str) -> NewFile:
    """The catalog row of an imported photo: its real size and mtime where the file is here
    (so `clipdex index` finds it unchanged), else what the metadata says. Where a ``taken_source``
    says its EXIF was read (a Ray run's shards), it is recorded as local indexing records it, so
    `clipdex index` does not read it again; otherwise a date from the metadata is the import's."""
    path = meta.paths[i]
    assert path is not None
    size, mtime_ns = _stat(meta, i)
    taken = meta.taken[i]
    source: str | None = TAKEN_IMPORT if taken else None
    if meta.sources is not None and meta.sources[i] in (TAKEN_EXIF, TAKEN_NO_EXIF):
        source = TAKEN_EXIF if taken else TAKEN_NO_EXIF  # (what local indexing records after reading it)
    return NewFile(path=path, size=size, mtime_ns=mtime_ns, content_hash=content_hash,
                   width=meta.widths[i], height=meta.heights[i], taken_at=taken, taken_source=source,
                   raw_path=meta.raws[i] if meta.raws is not None else None)


def _ints(table: "pa.Table", n: int, *names: str) -> list[int | None]:
    """Whole numbers of the first of the columns ``names`` that ``table`` has (None where a
    cell is empty or not a number; all None without such a column)."""
    import pyarrow as pa

    column = next((table.column(name) for name in names if name in table.column_names), None)
    if column is None:
        return [None] * n
    if pa.types.is_integer(column.type):
        return list(column.to_pylist())
    out: list[int | None] = []
    for v in column.to_pylist():
        try:
            out.append(int(v) if v is not None else None)
        except (TypeError, ValueError):
            out.append(None)
    return out
