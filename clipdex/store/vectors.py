"""Append-only float32 vector files that search memory-maps.

A file holds rows of ``dim`` little-endian float32 values and nothing else.
How many rows are valid is recorded in the catalog, not in the file: rows past
that count are the leftovers of a killed run and are overwritten by the next
append. Appends are flushed and fsync'ed before the catalog commits them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DTYPE = np.dtype("<f4")


class VectorFile:
    """One model's vectors: ``rows`` x ``dim`` float32, appended in batches."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim

    def append(self, committed_rows: int, vectors: np.ndarray) -> int:
        """Write ``vectors`` after the first ``committed_rows`` rows; return the first new row."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            offset = committed_rows * self.dim * DTYPE.itemsize
            os.ftruncate(fd, offset)  # drop rows a killed run wrote but never committed
            os.lseek(fd, offset, os.SEEK_SET)
            data = np.ascontiguousarray(vectors, dtype=DTYPE).tobytes()
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        return committed_rows

    def read(self, rows: int) -> np.ndarray:
        """The first ``rows`` vectors, memory-mapped read-only (an empty array for none)."""
        if rows == 0 or not self.path.exists():
            return np.zeros((0, self.dim), dtype=DTYPE)
        return np.memmap(self.path, dtype=DTYPE, mode="r", shape=(rows, self.dim))
