"""The shards a Ray run writes: clip-retrieval's layout, with what clipdex needs to adopt them.

A shard is ``img_emb/img_emb_N.npy`` (float16 vectors, one row per file) and
``metadata/metadata_N.parquet`` (one row per file, row-aligned), the layout
``clip-retrieval inference`` writes and ``clipdex import`` reads. Beside the
paths it carries each file's content hash, size, mtime, upright size, EXIF date
and, for a file that could not be prepared, why (``status`` 'failed', an
``error_message``, and when it is tried again): a bad file is a row, never a
failed job. Its vector row is zeros; readers other than clipdex keep the rows
whose ``status`` is 'ok' (as img2dataset's readers keep its 'success' rows). So is the row of a file
whose content the index holds already ('reused': a moved or renamed photo).

Shards are written atomically: each file is written under a hidden temporary
name and renamed into place, vectors first, so a shard exists once its metadata
does; a vector file without its metadata (a worker killed between the two) is
ignored by the adopting driver and written again. ``N`` comes from the files
it holds (:func:`shard_number`): a batch Ray retries writes the same shard again.

``clipdex.json`` beside ``img_emb/`` names the model (key, name, dimension,
precision), so that a run or an import with another model refuses the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

EMBEDDINGS_DIR = "img_emb"  # (clipdex.interchange's names: the same layout)
METADATA_DIR = "metadata"
MANIFEST_NAME = "clipdex.json"
FORMAT = "clipdex-ray"
VERSION = 1
# A shard's number: its run's start (seconds since 1970), then 15 hex digits of a sha256 of its
# files' paths as a 19-digit decimal: unique across runs, the same for Ray's retry of a batch,
# and sorted by run, so that a later run's shard of the same files is adopted after an earlier one.
RUN_DIGITS = 10
HASH_DIGITS = 19
VECTOR_DTYPE = np.float16  # clip-retrieval's: half the bytes, cosine to float32 ~1 - 1e-7

STATUS_OK = "ok"
STATUS_FAILED = "failed"
# A file whose content the index already holds a vector of (moved, renamed, a copy): hashed
# and its EXIF date read, never decoded or encoded; its vector row is zeros, and the adopting
# index gives it the vector it holds. Other readers skip it as they skip failures.
STATUS_REUSED = "reused"

# The metadata columns, in order. image_path: the catalog's path (a local file's display
# path, or a URI); raw_path: a local path's exact bytes where they are not UTF-8 (else
# null); mtime: UTC, nanoseconds; width/height: the upright size of the file's image;
# taken_source: 'exif' or 'mtime-no-exif' (clipdex.store.catalog's names) once the header
# was read; failure_kind: 'transient', 'limit' or 'permanent'; failure_limit: the
# --max-megapixels a 'limit' failure was judged by.
COLUMNS = ("image_path", "raw_path", "sha256", "size", "mtime", "width", "height", "taken_at",
           "taken_source", "status", "error_message", "failure_kind", "failure_limit")


def schema() -> "pa.Schema":
    """The metadata table's schema (pyarrow)."""
    import pyarrow as pa

    return pa.schema([
        ("image_path", pa.string()), ("raw_path", pa.binary()), ("sha256", pa.string()),
        ("size", pa.int64()), ("mtime", pa.timestamp("ns", tz="UTC")), ("width", pa.int32()),
        ("height", pa.int32()), ("taken_at", pa.string()), ("taken_source", pa.string()),
        ("status", pa.string()), ("error_message", pa.string()), ("failure_kind", pa.string()),
        ("failure_limit", pa.float64()),
    ])


def shard_number(paths: Sequence[str], run: int = 0) -> str:
    """The number of run ``run``'s shard that holds ``paths`` (digits, zero-padded)."""
    digest = hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{run:0{RUN_DIGITS}d}{int(digest[:15], 16):0{HASH_DIGITS}d}"


def shard_names(number: str) -> tuple[str, str]:
    """(vector file, metadata file) of shard ``number``, relative to the output folder."""
    return f"{EMBEDDINGS_DIR}/img_emb_{number}.npy", f"{METADATA_DIR}/metadata_{number}.parquet"


def written(out: str, vectors: bool = False) -> dict[str, str]:
    """number -> path in its file system of the output folder's finished shards (their metadata
    files), or with ``vectors`` of its vector files (a finished shard's, or half a shard's)."""
    import pyarrow.fs as pafs

    fs, base = filesystem(out)
    sub, prefix, suffix = ((EMBEDDINGS_DIR, "img_emb_", ".npy") if vectors
                           else (METADATA_DIR, "metadata_", ".parquet"))
    infos = fs.get_file_info(pafs.FileSelector(f"{base}/{sub}", allow_not_found=True))
    return {i.base_name[len(prefix):-len(suffix)]: i.path for i in infos
            if i.type == pafs.FileType.File and i.base_name.startswith(prefix) and i.base_name.endswith(suffix)}


def filesystem(out: str) -> tuple["pafs.FileSystem", str]:
    """(file system, path in it) of an output folder: a local path, or a URI pyarrow opens
    (``s3://``, ``gs://``, ``hdfs://``, ``file://``)."""
    import pyarrow.fs as pafs

    if "://" not in out:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(out))
    return pafs.FileSystem.from_uri(out)


def is_local(out: str) -> bool:
    """Whether ``out`` is a folder of this machine's file system (a path or ``file://``)."""
    return "://" not in out or out.startswith("file://")


def local_path(out: str) -> str:
    """The local folder of a path or ``file://`` URI."""
    return filesystem(out)[1] if out.startswith("file://") else os.path.abspath(os.path.expanduser(out))


def write_atomically(fs: "pafs.FileSystem", path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing: under a hidden
    temporary name in the same folder, then renamed (one PUT on object stores, which is
    atomic there already)."""
    folder, name = path.rsplit("/", 1)
    temporary = f"{folder}/.{name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        with fs.open_output_stream(temporary) as f:
            f.write(data)
        fs.move(temporary, path)
    except BaseException:
        try:
            fs.delete_file(temporary)
        except Exception:  # noqa: BLE001  (already gone, or never written)
            pass
        raise


def write_shard(out: str, vectors: np.ndarray, table: "pa.Table", run: int = 0) -> tuple[str, str]:
    """Write one shard of run ``run`` (``vectors`` row-aligned with ``table``, of :func:`schema`)
    into the output folder ``out``, atomically; returns its two files' names relative to ``out``."""
    import pyarrow.parquet as pq

    if len(vectors) != table.num_rows:
        raise ValueError(f"{len(vectors)} vectors for {table.num_rows} metadata rows")
    fs, base = filesystem(out)
    vector_name, metadata_name = shard_names(shard_number(table.column("image_path").to_pylist(), run))
    fs.create_dir(f"{base}/{EMBEDDINGS_DIR}", recursive=True)
    fs.create_dir(f"{base}/{METADATA_DIR}", recursive=True)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE))
    write_atomically(fs, f"{base}/{vector_name}", buffer.getvalue())
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_atomically(fs, f"{base}/{metadata_name}", sink.getvalue())
    return vector_name, metadata_name


def manifest(key: str, name: str, dim: int, precision: str, source: str) -> dict[str, Any]:
    """What ``clipdex.json`` says of a run's shards."""
    return {"format": FORMAT, "version": VERSION, "model": {"key": key, "name": name, "dim": dim,
                                                           "precision": precision},
            "source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def read_manifest(out: str) -> dict[str, Any] | None:
    """The output folder's ``clipdex.json``, or None where it has none (or one that is not a
    manifest). An error reading it (a store that does not answer) propagates: it must not be
    taken for a folder without one, whose manifest a run would then write."""
    fs, base = filesystem(out)
    try:
        with fs.open_input_stream(f"{base}/{MANIFEST_NAME}") as f:
            found = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None


def write_manifest(out: str, facts: dict[str, Any]) -> None:
    """Write the output folder's ``clipdex.json`` (atomically)."""
    fs, base = filesystem(out)
    fs.create_dir(base, recursive=True)
    write_atomically(fs, f"{base}/{MANIFEST_NAME}", json.dumps(facts, indent=2).encode("utf-8"))
