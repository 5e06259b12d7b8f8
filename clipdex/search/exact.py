"""Exact search: every row scored, over the memory-mapped vector file.

The matrix is rows 0..n-1 of a model's vector file, memory-mapped (float32, or
float16 for a file stored in half precision). It is never copied whole: a
float32 ``matrix @ query`` reads the mapping in place (BLAS streams it: ~34 ms
at 1M x 512 on a 2-core EPYC), float16 is converted a chunk at a time, and when
few rows are ``allowed`` only those are gathered and scored.

Rows added after the matrix (or added again over a row of it) are held in
memory; removed rows are masked. That state is small, and is all ``save``
writes: the matrix is the vector file itself.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from clipdex.fileio import replacing
from clipdex.search.base import (
    Hits,
    VectorIndex,
    VectorIndexStats,
    VectorIndexUnusable,
    check_queries,
    check_query,
    check_rows,
    empty_neighbours,
    flush_to_disk,
    merge_hits,
    merge_neighbours,
    top_hits,
)

# Rows converted from float16 (or gathered) at a time: 16 MB of float32 at dim 512.
CHUNK_ROWS = 8_192
# Score only the allowed rows (gathered) when they are fewer than 1/GATHER_RATIO of the
# matrix; above that one sequential pass over all rows, masked, is cheaper than gathering.
GATHER_RATIO = 16
# A NaN score (a damaged vector) ranks after every real row but before masked ones.
_DAMAGED = np.float32(np.finfo(np.float32).min)
# neighbours(): queries scored at a time against a block of rows (a (queries x rows) float32
# score block of 32 MB: 512 x 16,384), then merged into each query's running best.
NEIGHBOUR_QUERIES = 512
NEIGHBOUR_ROWS = 16_384
FORMAT = "clipdex-exact-index"
VERSION = 1


class ExactIndex(VectorIndex):
    """Exact cosine search over ``matrix`` (rows 0..n-1, float32 or float16) plus rows added in memory.

    ``matrix`` may be None (no rows yet). It is read, never written.
    """

    kind = "exact"

    def __init__(self, matrix: np.ndarray | None, dim: int, meta: dict[str, Any] | None = None) -> None:
        if matrix is None:
            matrix = np.zeros((0, dim), dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise ValueError(f"expected a matrix of shape (n, {dim}), got {matrix.shape}")
        if matrix.dtype not in (np.float32, np.float16):
            raise ValueError(f"the matrix must be float32 or float16, not {matrix.dtype}")
        self._matrix = matrix
        self._dim = dim
        self._base = len(matrix)
        # Rows of the matrix not to return from it: removed, or added again (then in _extra).
        self._hidden = np.zeros(self._base, dtype=bool)
        self._n_hidden = 0
        self._extra: dict[int, np.ndarray] = {}
        self._extra_cache: tuple[np.ndarray, np.ndarray] | None = None
        self.meta = dict(meta or {})

    @property
    def dim(self) -> int:
        return self._dim

    # -- changes -------------------------------------------------------------

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        r = check_rows(rows, vectors, self._dim)
        vectors = np.asarray(vectors, dtype=np.float32)
        self._hide(r[r < self._base])
        for row, vector in zip(r.tolist(), vectors):
            self._extra[row] = vector.copy()
        self._extra_cache = None

    def held(self) -> np.ndarray:
        base = np.flatnonzero(~self._hidden).astype(np.int64)
        extra = np.fromiter(self._extra, dtype=np.int64, count=len(self._extra))
        return np.union1d(base, extra)

    def remove(self, rows: np.ndarray) -> None:
        r = check_rows(rows)
        self._hide(r[r < self._base])
        for row in r.tolist():
            self._extra.pop(row, None)
        self._extra_cache = None

    def _hide(self, rows: np.ndarray) -> None:
        if len(rows):
            self._hidden[rows] = True
            self._n_hidden = int(np.count_nonzero(self._hidden))

    # -- search --------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, *,
               text: bool = False) -> Hits:
        q = check_query(query, self._dim, k)
        parts = []
        if self._base:
            parts.append(self._search_matrix(q, k, allowed))
        if self._extra:
            rows, vectors = self._extra_arrays()
            if allowed is not None:
                keep = np.isin(rows, allowed)
                rows, vectors = rows[keep], vectors[keep]
            parts.append(top_hits(vectors @ q, k, rows))
        return merge_hits(parts, k)

    def _search_matrix(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> Hits:
        n = self._base
        keep: np.ndarray | None
        if allowed is not None:
            rows = np.asarray(allowed, dtype=np.int64)
            rows = rows[:np.searchsorted(rows, n)]
            if self._n_hidden:
                rows = rows[~self._hidden[rows]]
            if not len(rows):
                return Hits.empty()
            if len(rows) * GATHER_RATIO < n:
                return top_hits(self._score_rows(rows, q), k, rows)
            scores = self._score_all(q)
            keep = np.zeros(n, dtype=bool)
            keep[rows] = True
            eligible = len(rows)
        else:
            scores = self._score_all(q)
            keep = ~self._hidden if self._n_hidden else None
            eligible = n - self._n_hidden
        if not eligible:
            return Hits.empty()
        # Masked rows go to -inf, damaged ones just above: the best `eligible` never
        # reach a masked row, and a damaged row still ranks last among the rest.
        if np.isnan(scores.min()):
            scores[np.isnan(scores)] = _DAMAGED
        if keep is not None:
            scores[~keep] = -np.inf
        hits = top_hits(scores, min(k, eligible))
        damaged = hits.scores == _DAMAGED
        if damaged.any():
            hits = Hits(hits.rows, np.where(damaged, np.float32(-np.inf), hits.scores))
        return hits

    def neighbours(self, queries: np.ndarray, k: int,
                   allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every query's ``k`` best rows, by blocks of matrix products (see :meth:`VectorIndex.neighbours`):
        ``NEIGHBOUR_QUERIES`` queries against ``NEIGHBOUR_ROWS`` rows at a time, the rows read from the
        memory map in place where no row is masked, gathered where some are."""
        q = check_queries(queries, self._dim, k)
        best = empty_neighbours(len(q), k)
        base = np.arange(self._base, dtype=np.int64) if allowed is None else \
            np.asarray(allowed, dtype=np.int64)[:np.searchsorted(allowed, self._base)]
        whole = allowed is None and not self._n_hidden  # contiguous slices of the map, nothing gathered
        if not whole and self._n_hidden:
            base = base[~self._hidden[base]]
        extra_rows, extra_vectors = self._extra_arrays()
        if allowed is not None and len(extra_rows):
            keep = np.isin(extra_rows, allowed)
            extra_rows, extra_vectors = extra_rows[keep], extra_vectors[keep]
        for start in range(0, len(q), NEIGHBOUR_QUERIES):
            chunk = q[start:start + NEIGHBOUR_QUERIES]
            found = empty_neighbours(len(chunk), k)
            for at in range(0, len(base), NEIGHBOUR_ROWS):
                rows = base[at:at + NEIGHBOUR_ROWS]
                block = (self._matrix[at:at + len(rows)] if whole else self._matrix[rows])
                scores = chunk @ np.asarray(block, dtype=np.float32).T  # (queries, rows), C order for the partition
                found = merge_neighbours(found, rows, scores, k)
            if len(extra_rows):
                found = merge_neighbours(found, extra_rows, chunk @ extra_vectors.T, k)
            best[0][start:start + len(chunk)], best[1][start:start + len(chunk)] = found
        return best

    def _score_all(self, q: np.ndarray) -> np.ndarray:
        """Cosines of every row of the matrix (a fresh array the caller may change)."""
        m = self._matrix
        if m.dtype == np.float32:
            return np.asarray(np.dot(m, q), dtype=np.float32)
        scores = np.empty(self._base, dtype=np.float32)
        for start in range(0, self._base, CHUNK_ROWS):
            chunk = np.asarray(m[start:start + CHUNK_ROWS], dtype=np.float32)
            scores[start:start + len(chunk)] = chunk @ q
        return scores

    def _score_rows(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Cosines of the matrix's ``rows`` only (gathered a chunk at a time)."""
        scores = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = np.asarray(self._matrix[rows[start:start + CHUNK_ROWS]], dtype=np.float32)
            scores[start:start + len(chunk)] = chunk @ q
        return scores

    def _extra_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._extra_cache is None:
            rows = np.array(sorted(self._extra), dtype=np.int64)
            vectors = (np.stack([self._extra[r] for r in rows.tolist()]) if len(rows)
                       else np.zeros((0, self._dim), np.float32))
            self._extra_cache = rows, vectors
        return self._extra_cache

    # -- state ---------------------------------------------------------------

    def stats(self) -> VectorIndexStats:
        rows = self._base - self._n_hidden + len(self._extra)
        covered = max(self._base, max(self._extra, default=-1) + 1)
        return VectorIndexStats(kind=self.kind, rows=rows, removed=covered - rows, covered=covered, bytes=0,
                                params={"dtype": str(self._matrix.dtype)})

    def save(self, path: Path) -> None:
        """Write what it holds besides the matrix (masked rows, rows added, meta), atomically."""
        extra_rows, extra_vectors = self._extra_arrays()
        header = {"format": FORMAT, "version": VERSION, "dim": self._dim, "base": self._base, "meta": self.meta}
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                     hidden=np.flatnonzero(self._hidden).astype(np.int64),
                     extra_rows=extra_rows, extra_vectors=extra_vectors)
            flush_to_disk(f)

    @classmethod
    def load(cls, path: Path, matrix: np.ndarray | None, dim: int) -> "ExactIndex":
        """The index saved at ``path``, over ``matrix`` (the vector file's rows, as when it was saved).

        Raises :class:`VectorIndexUnusable` for a missing, truncated or corrupt
        file, another dimension, or a matrix shorter than the one it was saved with.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode())
                hidden, extra_rows = data["hidden"], data["extra_rows"]
                extra_vectors = data["extra_vectors"]
        except FileNotFoundError:
            raise VectorIndexUnusable(path, "the file is missing") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise VectorIndexUnusable(path, f"the file is truncated or corrupt ({e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise VectorIndexUnusable(path, "it is not an exact index")
        if header.get("version") != VERSION or header.get("dim") != dim:
            raise VectorIndexUnusable(path, f"it was saved as version {header.get('version')} of "
                                            f"dimension {header.get('dim')}, expected {VERSION} and {dim}")
        index = cls(matrix, dim, meta=header.get("meta") or {})
        if index._base < int(header.get("base", 0)):
            raise VectorIndexUnusable(path, f"it was saved over {header.get('base')} rows, "
                                            f"the matrix holds {index._base}")
        if extra_vectors.shape != (len(extra_rows), dim) or (len(hidden) and hidden.max() >= index._base):
            raise VectorIndexUnusable(path, "its rows do not match (corrupt)")
        index._hide(hidden.astype(np.int64))
        index._extra = {int(r): v for r, v in zip(extra_rows.tolist(), extra_vectors.astype(np.float32))}
        return index
