"""Append-only vector files that search memory-maps.

A file holds rows of ``dim`` little-endian values and nothing else: float32
(``model-N.f32``), or float16 (``model-N.f16``: half the disk and page cache, scores
within ~1e-3) for a model registered with ``storage="f16"``. Whatever a file
stores, :meth:`VectorFile.take` gives float32.
How many rows are valid is recorded in the catalog, not in the file: rows past
that count are the leftovers of a killed run and are overwritten by the next
append. Appends are flushed and fsync'ed before the catalog commits them.

A file is never trusted blindly: it must hold at least the rows the catalog
committed (a missing or truncated file is damage, never zeros), an append never
grows a file that is shorter than its committed rows, and every row read is
checked to be a unit vector (vectors are L2-normalised at encode time, so a row
of zeros, garbage or NaN is damage too).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DTYPE = np.dtype("<f4")  # what vectors are computed and read back in
STORAGE_DTYPES: dict[str, np.dtype] = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}  # models.storage -> rows on disk
STORAGE_OPTIONS = {"fp32": "f32", "fp16": "f16"}  # --storage's names (as --precision's) -> models.storage
NORM_TOLERANCE = 0.05  # |norm - 1| allowed: bf16/fp16 encoders normalise in half precision
CHECK_CHUNK_ROWS = 65_536  # rows checked at a time (bounded memory on a million-row file)
TAKE_CHUNK_ROWS = 16_384  # rows read at a time when loading vectors (32 MB at dim 512)
RUN_READ_RATIO = 64  # rows in runs this long on average: read straight into place
SPARSE_READ_RATIO = 8  # rows spread wider than this many times their count: memory-map them


class ShortVectorFile(Exception):
    """A vector file holds fewer rows than the catalog committed (or is missing)."""

    def __init__(self, path: Path, expected: int, actual: int, missing: bool) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        self.missing = missing
        what = "is missing" if missing else f"holds {actual} complete rows"
        super().__init__(f"{path} {what}, the catalog committed {expected}")


@dataclass(frozen=True)
class VectorCheck:
    """What a vector file holds compared with what the catalog committed."""

    path: Path
    expected_rows: int
    file_rows: int  # complete rows on disk (0 when the file is missing)
    missing: bool
    bad_rows: np.ndarray  # rows below min(expected, file_rows) that are not unit vectors

    @property
    def sound(self) -> bool:
        """Does the file hold every committed row, each a unit vector?"""
        return not self.missing and self.file_rows >= self.expected_rows and not len(self.bad_rows)

    @property
    def readable_rows(self) -> int:
        return min(self.expected_rows, self.file_rows)

    def row_ok(self, rows: np.ndarray) -> np.ndarray:
        """For each row index: is it on disk and a unit vector?"""
        ok = rows < self.readable_rows
        if len(self.bad_rows):
            ok &= ~np.isin(rows, self.bad_rows)
        return ok


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Which rows are finite unit vectors (the cheap integrity check of stored vectors).

    Summed in float32: its error over 2,048 dimensions is ~1e-4, far inside
    NORM_TOLERANCE, and it is 3x faster than float64 (what a search load pays)."""
    rows = np.asarray(vectors, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return np.isfinite(norms) & (np.abs(norms - 1.0) <= NORM_TOLERANCE)


def stored_name(option: str | None) -> str | None:
    """The ``models.storage`` name of a ``--storage`` value ('fp32' -> 'f32'); None for None,
    ValueError for anything else."""
    if option is None:
        return None
    try:
        return STORAGE_OPTIONS[option]
    except KeyError:
        raise ValueError(f"unknown vector storage {option!r}: use one of {', '.join(STORAGE_OPTIONS)}") from None


def check_storage(storage: str | None) -> None:
    """Raise ValueError unless ``storage`` is None or a ``models.storage`` name ('f32', 'f16')."""
    if storage is not None:
        storage_dtype(storage)


def storage_dtype(storage: str) -> np.dtype:
    """The on-disk dtype of ``storage`` ('f32' or 'f16'); ValueError for anything else."""
    try:
        return STORAGE_DTYPES[storage]
    except KeyError:
        raise ValueError(f"unknown vector storage {storage!r}: use one of "
                         f"{', '.join(STORAGE_DTYPES)}") from None


class VectorFile:
    """One model's vectors: ``rows`` x ``dim`` values (``storage`` 'f32' or 'f16'), appended in batches."""

    def __init__(self, path: Path, dim: int, storage: str = "f32") -> None:
        self.path = path
        self.dim = dim
        self.storage = storage
        self.dtype = storage_dtype(storage)

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    def file_rows(self) -> int | None:
        """Complete rows on disk, or None when the file does not exist."""
        try:
            return os.stat(self.path).st_size // self.row_bytes
        except FileNotFoundError:
            return None

    def append(self, committed_rows: int, vectors: np.ndarray) -> int:
        """Write ``vectors`` after the first ``committed_rows`` rows; return the first new row.

        Raises :class:`ShortVectorFile` when the file holds fewer than
        ``committed_rows`` rows: growing it would turn the lost rows into zeros.
        """
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        offset = committed_rows * self.row_bytes
        flags = os.O_RDWR
        if committed_rows == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags |= os.O_CREAT
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            raise ShortVectorFile(self.path, committed_rows, 0, missing=True) from None
        try:
            size = os.fstat(fd).st_size
            if size < offset:
                raise ShortVectorFile(self.path, committed_rows, size // self.row_bytes, missing=False)
            if size > offset:
                os.ftruncate(fd, offset)  # drop rows a killed run wrote but never committed
            os.lseek(fd, offset, os.SEEK_SET)
            data = np.ascontiguousarray(vectors, dtype=self.dtype).tobytes()
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        return committed_rows

    def read(self, rows: int) -> np.ndarray:
        """The first ``rows`` vectors, memory-mapped read-only, in the file's own dtype (an
        empty array for none).

        Raises :class:`ShortVectorFile` when the file is missing or shorter.
        """
        if rows == 0:
            return np.zeros((0, self.dim), dtype=self.dtype)
        on_disk = self.file_rows()
        if on_disk is None or on_disk < rows:
            raise ShortVectorFile(self.path, rows, on_disk or 0, missing=on_disk is None)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(rows, self.dim))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors at ``rows`` (indexes below :meth:`file_rows`), in that order, as float32.

        A search load reads most of the file, mostly in file order (photos are
        indexed in path order): runs of consecutive rows are read straight into
        place. Rows in any order are read sequentially in chunks and copied out; a
        few rows of a big file through a memory map. (Gathering from a fresh memory
        map, as before, faulted in every page: 3-5x slower.) Raises :class:`ShortVectorFile` when the
        file ends before the rows.
        """
        out = np.empty((len(rows), self.dim), dtype=DTYPE)
        if not len(rows):
            return out
        if self.dtype != DTYPE:  # read in the file's dtype, then widen
            out[:] = self._take_stored(rows)
            return out
        return self._take_into(out, rows)

    def _take_stored(self, rows: np.ndarray) -> np.ndarray:
        return self._take_into(np.empty((len(rows), self.dim), dtype=self.dtype), rows)

    def _take_into(self, out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        first, end = int(ordered[0]), int(ordered[-1]) + 1
        on_disk = self.file_rows()
        if on_disk is None or on_disk < end:
            raise ShortVectorFile(self.path, end, on_disk or 0, missing=on_disk is None)
        starts = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows
        if len(starts) * RUN_READ_RATIO < len(rows):  # mostly in file order: read each run in place
            bounds = [0, *starts.tolist(), len(rows)]
            with io.FileIO(self.path, "r") as f:
                for a, b in zip(bounds[:-1], bounds[1:]):
                    f.seek(int(rows[a]) * self.row_bytes)
                    _read_exactly(f, out[a:b].data.cast("B"), self.path, end)
            return out
        if len(rows) * SPARSE_READ_RATIO < end - first:
            matrix = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(end, self.dim))
            out[:] = matrix[rows]
            del matrix
            return out
        chunk = np.empty((min(TAKE_CHUNK_ROWS, end - first), self.dim), dtype=self.dtype)
        with io.FileIO(self.path, "r") as f:
            for start in range(first, end, TAKE_CHUNK_ROWS):
                stop = min(start + TAKE_CHUNK_ROWS, end)
                f.seek(start * self.row_bytes)
                _read_exactly(f, chunk[:stop - start].data.cast("B"), self.path, stop)
                a, b = np.searchsorted(ordered, [start, stop])
                out[order[a:b]] = chunk[ordered[a:b] - start]
        return out

    def check(self, rows: int, start: int = 0) -> VectorCheck:
        """Compare the file with the ``rows`` the catalog committed; check every readable row
        from ``start`` on (the rows before it were found sound by an earlier check).

        O((rows - start) x dim), streamed in chunks: one sequential read of that part.
        """
        on_disk = self.file_rows()
        readable = min(rows, on_disk or 0)
        bad: list[np.ndarray] = []
        if readable > start:
            matrix = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(readable, self.dim))
            for first in range(start, readable, CHECK_CHUNK_ROWS):
                ok = unit_rows(np.asarray(matrix[first:first + CHECK_CHUNK_ROWS]))
                bad.append(np.flatnonzero(~ok) + first)
            del matrix
        return VectorCheck(path=self.path, expected_rows=rows, file_rows=on_disk or 0,
                           missing=on_disk is None and rows > 0,
                           bad_rows=np.concatenate(bad) if bad else np.zeros(0, np.int64))


def _read_exactly(f: io.FileIO, buffer: memoryview, path: Path, rows: int) -> None:
    done = 0
    while done < len(buffer):
        got = f.readinto(buffer[done:])
        if not got:
            raise ShortVectorFile(path, rows, 0, missing=False)  # shrank while being read
        done += got
