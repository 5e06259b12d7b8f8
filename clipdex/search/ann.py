"""Approximate search for large collections: a faiss IVF index, re-ranked exactly.

The rows are clustered into ``nlist`` inverted lists around k-means centroids,
each row stored with compressed codes (8-bit scalar quantisation by default, a
quarter of float32). A query visits the ``nprobe`` lists whose centroids are
nearest and scores their rows by the codes; the best ``pool`` of them are then
re-scored exactly, from float32 vectors read through a :data:`RowReader` (the
memory-mapped vector file), so the scores returned are exact cosines and the
order is the exact order, ties by row.

Text queries sit across CLIP's modality gap (cosine ~0.3 to their best photo,
against ~0.9 for a photo's neighbours): the nearest centroids are a weaker
guide for them, so they probe more lists (``nprobe_text``).

A filtered search (``allowed``) passes a bitmap of the allowed rows to faiss;
when few rows are allowed they are scored exactly instead, and a filtered
search that finds fewer than ``k`` rows while ``k`` are held falls back to
exact scoring of the allowed rows: it always returns ``k`` when ``k`` exist.

On disk an index is the faiss file followed by a trailer (which rows it holds,
its parameters, the caller's ``meta``, a length and a magic word), written
atomically. ``load`` memory-maps the faiss codes: opening is instant at a
million rows and only the lists a query visits are read. A change (``add``,
``remove``) first reads the index into memory: a mapped index is read-only.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

from clipdex.fileio import replacing
from clipdex.search.base import (
    BuildProgress,
    Hits,
    RowReader,
    VectorIndex,
    VectorIndexStats,
    VectorIndexUnusable,
    best_per_query,
    check_queries,
    check_query,
    check_rows,
    empty_neighbours,
    flush_to_disk,
    merge_neighbours,
    top_hits,
)

# Fewer rows than this and the engine searches exactly (IvfIndex.build refuses with
# automatic parameters): exact search of 50k rows takes ~12 ms on 2 cores (200k: ~45 ms).
MIN_ROWS = 50_000
MIN_POINTS_PER_LIST = 39  # faiss's own floor for k-means: fewer and the centroids are noise
NLIST_MIN, NLIST_MAX = 64, 65_536
BUILD_CHUNK_ROWS = 65_536  # rows read and added at a time (128 MB at dim 512)
EXACT_CHUNK_ROWS = 16_384  # rows read at a time when scoring exactly through the reader
# An allowed set this small is scored exactly (its vectors read through the reader)
# rather than through the lists, where its members are thinly spread. At 1M rows (text
# queries, 2-core EPYC under load): 10k rows exactly 16 ms with a reader over one
# long-lived memory map (92 ms through VectorFile.take, which maps the file per call);
# 20k rows through the lists, bitmap-filtered, 6-40 ms.
EXACT_ALLOWED_ROWS = 10_000
# A filtered search probes more lists the fewer rows are allowed (up to this factor),
# since the allowed rows nearest the query may lie in lists further away.
FILTER_NPROBE_BOOST = 4.0

# faiss's SWIG wrapper, untyped: the types mypy infers for it are wrong (keyword
# arguments of SearchParametersIVF, the IO classes).
faiss: Any = _faiss

# faiss's parallel mode: 0 splits a batch by query (one query runs on one core), 1
# splits a query's lists across the cores. One text query at 1M (nprobe 256) on the
# idle 2-core bench machine: p50 2.8-3.5 ms with mode 1 against 4.8-6.2 ms with mode 0
# (p99 3.4-4.8 against 6.5-18). Under load (other processes on both cores) mode 1 was
# 2.5x slower (OpenMP threads wait for a busy core); a person searching waits on one
# query at a time, so 1 it is.
PARALLEL_MODE = 1

# neighbours(): queries sent to faiss at once, and re-ranked together (their candidates'
# vectors gathered: 256 x 100 x 512 float32 = 52 MB).
NEIGHBOUR_QUERIES = 256
# Candidates re-ranked per query: a photo's k nearest photos (cosine ~0.86 and up) are ranked by the
# codes nearly as exactly as by the vectors, so 2k (at least this many) suffice where a search's
# pool is POOL (bench/duplicates_scale.py: planted copies' recall 1.000 at 100k).
NEIGHBOUR_POOL = 32

MAGIC = b"CLPDXIVF"
VERSION = 1
_TRAILER = struct.Struct("<QQQ8s")  # faiss bytes, bitmap bytes, json bytes, magic


# The defaults, from bench/ann_params.py on CLIP-like vectors of bench/synthetic.py (2-core
# AMD EPYC, other work on it: load average ~4; recall@10 against exact search, 100 queries
# of each kind; the table is in the README):
# - the share of lists probed decides recall. Image-like queries need 1/64 of the lists
#   (200k, IVF2048: nprobe 32 -> 0.993; 1M, IVF4096: nprobe 64 -> 0.995, p50 3.3 ms, p99 8.5);
#   text-like ones, across the modality gap, 4x more: 1/16 (200k: nprobe 128 -> 0.961;
#   1M: nprobe 256 -> 0.980, p50 7.0 ms, p99 12.1 ms; 1/32 gave 0.909 and 0.941).
# - SQ8 codes re-ranked exactly recall as much as Flat codes at a quarter of the size;
#   PQ64 is 5.6x smaller again but recalls less and trains 3x longer. A pool of 50
#   recalled as much as 100: the lists a query misses, not the codes, lose its rows.
# - navigating a text query by the mean text-to-image gap (lists chosen for q + gap,
#   codes scored with q) lost recall: 0.579 against 0.795 at nprobe 16 of 1,024.
PROBE_SHARE_IMAGE = 1 / 64
PROBE_SHARE_TEXT = 1 / 16
POOL = 100
# k-means sample per list: faiss warns below 39; 40 keeps training at 1M (4,096 lists,
# 164k points) at 128 s on 2 cores under load, the whole build at 222 s.
TRAIN_PER_LIST = 40


@dataclass(frozen=True)
class IvfParams:
    """How an IVF index is built and searched. ``None`` fields are worked out from the rows.

    ``codes`` is a faiss encoding: "SQ8" (8 bits a dimension), "SQ4", "Flat"
    (float32) or "PQ<m>" (m bytes a vector). ``pool`` candidates from the lists
    are re-ranked exactly; ``train_per_list`` bounds the k-means sample.
    """

    nlist: int | None = None
    codes: str = "SQ8"
    nprobe: int | None = None
    nprobe_text: int | None = None
    pool: int = POOL
    train_per_list: int = TRAIN_PER_LIST

    def resolved(self, rows: int) -> "IvfParams":
        """These parameters with every ``None`` worked out for an index of ``rows`` rows."""
        nlist = self.nlist or auto_nlist(rows)
        nprobe = self.nprobe or max(1, round(nlist * PROBE_SHARE_IMAGE))
        nprobe_text = self.nprobe_text or max(1, round(nlist * PROBE_SHARE_TEXT))
        return replace(self, nlist=nlist, nprobe=min(nprobe, nlist), nprobe_text=min(nprobe_text, nlist))


def auto_nlist(rows: int) -> int:
    """Lists for ``rows`` rows: ~4 sqrt(rows), a power of two (2,048 at 200k, 4,096 at 1M)."""
    target = 4 * math.sqrt(max(rows, 1))
    return int(min(NLIST_MAX, max(NLIST_MIN, 2 ** round(math.log2(target)))))


class _ModeGate:
    """Who may search the faiss index in which parallel mode: any number of searches at once in
    :data:`PARALLEL_MODE` (one person's query split over its lists), or one batch of
    :meth:`IvfIndex.neighbours` alone in mode 0 (split by query). faiss keeps the mode on the index,
    not per call; without the gate a near-duplicate batch running beside a search would run it in the
    wrong mode, and two batches would reset each other's (20k queries: 141 s instead of 3 s). A
    search waits at most one batch of :data:`NEIGHBOUR_QUERIES`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._searching = 0
        self._batch = False

    @contextmanager
    def search(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._batch)
            self._searching += 1
        try:
            yield
        finally:
            with self._cond:
                self._searching -= 1
                self._cond.notify_all()

    @contextmanager
    def batch(self, ivf: Any) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._batch and not self._searching)
            self._batch = True
        ivf.parallel_mode = 0
        try:
            yield
        finally:
            ivf.parallel_mode = PARALLEL_MODE
            with self._cond:
                self._batch = False
                self._cond.notify_all()


class IvfIndex(VectorIndex):
    """A faiss IVF index of rows of a vector file, re-ranked exactly through ``reader``.

    Made by :meth:`build` or :meth:`load`, not directly.
    """

    kind = "ivf"

    def __init__(self, index: Any, reader: RowReader, params: IvfParams, present: np.ndarray, *,
                 meta: dict[str, Any] | None = None, built_at: float | None = None,
                 mapped: Path | None = None, file_bytes: int = 0) -> None:
        self._index = index
        self._ivf = faiss.extract_index_ivf(index)
        self._ivf.parallel_mode = PARALLEL_MODE
        self._gate = _ModeGate()  # searches share the index's parallel mode; a neighbours batch sets its own
        self._reader = reader
        self.params = params
        self._present = present  # bool per row below covered: does the index hold it?
        self._rows = int(np.count_nonzero(present))
        self._mapped = mapped  # the file the codes are memory-mapped from (read-only), if any
        self._file_bytes = file_bytes
        self.meta = dict(meta or {})
        self.built_at = built_at

    @property
    def dim(self) -> int:
        return int(self._index.d)

    # -- building ------------------------------------------------------------

    @classmethod
    def build(cls, reader: RowReader, n_rows: int, dim: int, *, params: IvfParams | None = None,
              progress: BuildProgress | None = None, exclude: np.ndarray | None = None,
              meta: dict[str, Any] | None = None, seed: int = 0,
              trained: "IvfIndex | None" = None) -> "IvfIndex":
        """Train on a sample of rows 0..n_rows-1 (less ``exclude``) and add them all, in chunks.

        ``progress(done, total)`` is called as rows are added. Raises ValueError
        when there are too few rows for the lists (below :data:`MIN_ROWS` with
        automatic parameters): search those exactly. ``trained``: an index of the
        same vectors (before a compaction renumbered them) whose lists and codes are
        reused instead of training again (k-means is most of a build: 128 of 221 s
        at 1M), when its list count still suits the rows.
        """
        present = np.ones(n_rows, dtype=bool)
        if exclude is not None and len(exclude):
            ex = check_rows(exclude)
            present[ex[ex < n_rows]] = False
        held = int(np.count_nonzero(present))
        given = params or IvfParams()
        if given.nlist is None and held < MIN_ROWS:
            raise ValueError(f"{held} rows are too few for an IVF index (it takes {MIN_ROWS}); search exactly")
        p = given.resolved(held)
        assert p.nlist is not None
        nlist: int = p.nlist
        if held < p.nlist * MIN_POINTS_PER_LIST:
            raise ValueError(f"{held} rows are too few for {p.nlist} lists "
                             f"(it takes {p.nlist * MIN_POINTS_PER_LIST}); search exactly or use fewer lists")
        if trained is not None and trained.dim == dim and trained.params.codes == p.codes and (
                given.nlist in (None, trained.params.nlist)
                and held >= (trained.params.nlist or 0) * MIN_POINTS_PER_LIST
                and (given.nlist is not None or abs(math.log2((trained.params.nlist or 1) / p.nlist)) <= 1)):
            trained._writable()  # a memory-mapped index is read into memory first (cloned in place it crashes)
            index = faiss.clone_index(trained._index)
            index.reset()  # the lists and code books stay; every vector goes
            p = replace(p, nlist=trained.params.nlist)
            p = replace(p, nprobe=given.nprobe or trained.params.nprobe,
                        nprobe_text=given.nprobe_text or trained.params.nprobe_text)
        else:
            index = faiss.index_factory(dim, f"IVF{p.nlist},{p.codes}", faiss.METRIC_INNER_PRODUCT)
            rows = np.flatnonzero(present)
            rng = np.random.default_rng(seed)
            wanted = nlist * p.train_per_list
            sample = rows if held <= wanted else np.sort(rng.choice(rows, size=wanted, replace=False))
            index.train(_read(reader, sample, dim))
        if progress:
            progress(0, n_rows)
        for start in range(0, n_rows, BUILD_CHUNK_ROWS):
            stop = min(start + BUILD_CHUNK_ROWS, n_rows)
            chunk = start + np.flatnonzero(present[start:stop])
            if len(chunk):
                index.add_with_ids(_read(reader, chunk, dim), chunk)
            if progress:
                progress(stop, n_rows)
        return cls(index, reader, p, present, meta=meta, built_at=time.time())

    # -- changes -------------------------------------------------------------

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        r = check_rows(rows, vectors, self.dim)
        if not len(r):
            return
        if len(np.unique(r)) != len(r):
            raise ValueError("a row is given twice in one add")
        self._writable()
        self._grow(int(r.max()) + 1)
        held = r[self._present[r]]
        if len(held):  # added again: the new vector replaces the old one
            self._index.remove_ids(faiss.IDSelectorBatch(held))
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), r)
        self._present[r] = True
        self._rows = int(np.count_nonzero(self._present))

    def held(self) -> np.ndarray:
        return np.flatnonzero(self._present).astype(np.int64)

    def remove(self, rows: np.ndarray) -> None:
        r = check_rows(rows)
        r = r[r < len(self._present)]
        r = np.unique(r[self._present[r]])
        if not len(r):
            return
        self._writable()
        self._index.remove_ids(faiss.IDSelectorBatch(r))
        self._present[r] = False
        self._rows = int(np.count_nonzero(self._present))

    def _grow(self, covered: int) -> None:
        if covered > len(self._present):
            grown = np.zeros(covered, dtype=bool)
            grown[:len(self._present)] = self._present
            self._present = grown

    def _writable(self) -> None:
        """Read a memory-mapped index into memory before changing it (the mapping is read-only)."""
        if self._mapped is not None:
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
            self._ivf = faiss.extract_index_ivf(self._index)
            self._ivf.parallel_mode = PARALLEL_MODE
            self._mapped = None

    # -- search --------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, *,
               text: bool = False) -> Hits:
        q = check_query(query, self.dim, k)
        if not self._rows:
            return Hits.empty()
        nprobe = self.params.nprobe_text if text else self.params.nprobe
        assert nprobe is not None
        if allowed is None:
            want = min(k, self._rows)
            hits = self._search_lists(q, k, nprobe, None)
            if len(hits) < want:  # the probed lists held too few rows (a tiny index)
                hits = self._search_exact(q, k, np.flatnonzero(self._present))
            return hits
        rows = np.asarray(allowed, dtype=np.int64)
        rows = rows[:np.searchsorted(rows, len(self._present))]
        rows = rows[self._present[rows]]
        if len(rows) <= max(k, EXACT_ALLOWED_ROWS):
            return self._search_exact(q, k, rows)
        share = len(rows) / self._rows
        nprobe = min(self._ivf.nlist, math.ceil(nprobe * min(FILTER_NPROBE_BOOST, 1 / math.sqrt(share))))
        bitmap = np.zeros(len(self._present), dtype=bool)
        bitmap[rows] = True
        hits = self._search_lists(q, k, nprobe, bitmap)
        if len(hits) < min(k, len(rows)):
            hits = self._search_exact(q, k, rows)
        return hits

    def neighbours(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, *,
                   nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every query's ``k`` best rows (see :meth:`VectorIndex.neighbours`): faiss searches a batch of
        queries in one call (its threads split the batch), the candidates are re-ranked exactly from the
        vector file. Queries probe ``nprobe`` lists (default: the image queries' ``params.nprobe``; a
        near-duplicate search, whose neighbours lie in the query's own list, asks for fewer); ``allowed``
        is a bitmap, or scored exactly when it holds at most :data:`EXACT_ALLOWED_ROWS` rows."""
        q = check_queries(queries, self.dim, k)
        best = empty_neighbours(len(q), k)
        if not self._rows:
            return best
        nprobe = min(self._ivf.nlist, max(1, nprobe)) if nprobe is not None else self.params.nprobe
        assert nprobe is not None
        bitmap = None
        if allowed is not None:
            rows = np.asarray(allowed, dtype=np.int64)
            rows = rows[:np.searchsorted(rows, len(self._present))]
            rows = rows[self._present[rows]]
            if len(rows) <= max(k, EXACT_ALLOWED_ROWS):
                for at in range(0, len(rows), EXACT_CHUNK_ROWS):
                    chunk_rows = rows[at:at + EXACT_CHUNK_ROWS]
                    best = merge_neighbours(best, chunk_rows, q @ self._read(chunk_rows).T, k)
                return best
            share = len(rows) / self._rows
            nprobe = min(self._ivf.nlist, math.ceil(nprobe * min(FILTER_NPROBE_BOOST, 1 / math.sqrt(share))))
            bitmap = np.zeros(len(self._present), dtype=bool)
            bitmap[rows] = True
        bits = np.packbits(bitmap, bitorder="little") if bitmap is not None else None  # held while faiss reads it
        if bitmap is not None and bits is not None:
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bits))
            search_params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        else:
            search_params = faiss.SearchParametersIVF(nprobe=nprobe)
        pool = max(2 * k, NEIGHBOUR_POOL)
        for start in range(0, len(q), NEIGHBOUR_QUERIES):
            chunk = q[start:start + NEIGHBOUR_QUERIES]
            # A batch is split by query (mode 0), not a query by its lists (PARALLEL_MODE, for one person's
            # search): 20k queries at nprobe 4 took 141 s in mode 1 under load, 3 s in mode 0. The mode is
            # the index's: the gate keeps searches (and other batches) out while it is 0.
            with self._gate.batch(self._ivf):
                _, ids = self._index.search(chunk, pool, params=search_params)
            ids = np.asarray(ids, dtype=np.int64)
            wanted = np.unique(ids[ids >= 0])
            if not len(wanted):
                continue
            vectors = self._read(wanted)
            where = np.searchsorted(wanted, np.where(ids >= 0, ids, wanted[0]))
            scores = np.einsum("md,mpd->mp", chunk, vectors[where])
            found = best_per_query(ids, scores, k)
            best[0][start:start + len(chunk)], best[1][start:start + len(chunk)] = found
        return best

    def _search_lists(self, q: np.ndarray, k: int, nprobe: int, bitmap: np.ndarray | None) -> Hits:
        """Candidates from the ``nprobe`` nearest lists, re-ranked exactly."""
        if bitmap is not None:
            bits = np.packbits(bitmap, bitorder="little")  # held by this frame while faiss reads it
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bits))
            search_params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        else:
            search_params = faiss.SearchParametersIVF(nprobe=nprobe)
        with self._gate.search():
            _, ids = self._index.search(q[None, :], max(k, self.params.pool), params=search_params)
        return self._rerank(q, k, ids[0])

    def _rerank(self, q: np.ndarray, k: int, ids: np.ndarray) -> Hits:
        """The best ``k`` of faiss's candidate ``ids`` (-1: none), scored exactly."""
        candidates = np.sort(ids[ids >= 0])
        if not len(candidates):
            return Hits.empty()
        return top_hits(self._read(candidates) @ q, k, candidates)

    def _search_exact(self, q: np.ndarray, k: int, rows: np.ndarray) -> Hits:
        """The best ``k`` of ``rows`` scored exactly, reading their vectors a chunk at a time."""
        if not len(rows):
            return Hits.empty()
        scores = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), EXACT_CHUNK_ROWS):
            chunk = rows[start:start + EXACT_CHUNK_ROWS]
            scores[start:start + len(chunk)] = self._read(chunk) @ q
        return top_hits(scores, k, rows)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        return _read(self._reader, rows, self.dim)

    # -- state ---------------------------------------------------------------

    def stats(self) -> VectorIndexStats:
        covered = len(self._present)
        return VectorIndexStats(kind=self.kind, rows=self._rows, removed=covered - self._rows, covered=covered,
                                bytes=self._file_bytes, params=asdict(self.params), built_at=self.built_at)

    def save(self, path: Path) -> None:
        """Write the index and its trailer to ``path`` atomically (temporary file, fsync, rename)."""
        bitmap = np.packbits(self._present, bitorder="little").tobytes()
        built_at = self.built_at if self.built_at is not None else time.time()
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as f:
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(f.write))
            faiss_bytes = f.tell()
            header = {"format": "clipdex-ivf-index", "version": VERSION, "dim": self.dim,
                      "covered": len(self._present), "rows": self._rows, "ntotal": int(self._index.ntotal),
                      "params": asdict(self.params), "built_at": built_at, "meta": self.meta}
            info = json.dumps(header).encode()
            f.write(bitmap)
            f.write(info)
            f.write(_TRAILER.pack(faiss_bytes, len(bitmap), len(info), MAGIC))
            flush_to_disk(f)
            size = f.tell()
        self.built_at = built_at
        self._file_bytes = size

    @classmethod
    def load(cls, path: Path, reader: RowReader, *, mmap: bool = True) -> "IvfIndex":
        """The index saved at ``path``, re-ranking through ``reader``.

        With ``mmap`` the codes stay in the file and are paged in as lists are
        visited (instant to open, little resident memory). Raises
        :class:`VectorIndexUnusable` for a missing, truncated or corrupt file.
        """
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < _TRAILER.size:
                    raise VectorIndexUnusable(path, f"the file is truncated ({size} bytes)")
                f.seek(size - _TRAILER.size)
                faiss_bytes, bitmap_bytes, info_bytes, magic = _TRAILER.unpack(f.read(_TRAILER.size))
                if magic != MAGIC:
                    raise VectorIndexUnusable(path, "it is not a clipdex IVF index, or it is truncated")
                if faiss_bytes + bitmap_bytes + info_bytes + _TRAILER.size != size:
                    raise VectorIndexUnusable(path, "its parts do not add up to its size (corrupt)")
                f.seek(faiss_bytes)
                bitmap = np.frombuffer(f.read(bitmap_bytes), dtype=np.uint8)
                header = json.loads(f.read(info_bytes).decode())
        except FileNotFoundError:
            raise VectorIndexUnusable(path, "the file is missing") from None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise VectorIndexUnusable(path, f"it cannot be read ({e})") from None
        if not isinstance(header, dict) or header.get("format") != "clipdex-ivf-index":
            raise VectorIndexUnusable(path, "its header is not a clipdex IVF index's")
        if header.get("version") != VERSION:
            raise VectorIndexUnusable(path, f"it is version {header.get('version')}, this clipdex reads {VERSION}")
        try:
            covered = int(header["covered"])
            present = np.unpackbits(bitmap, count=covered, bitorder="little").astype(bool)
            params = IvfParams(**header["params"])
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0)
            faiss.extract_index_ivf(index)
        except (KeyError, TypeError, ValueError, RuntimeError, MemoryError) as e:
            raise VectorIndexUnusable(path, f"it is corrupt ({str(e).splitlines()[0][:200]})") from None
        rows = int(np.count_nonzero(present))
        if int(index.ntotal) != rows or int(header.get("ntotal", -1)) != rows or index.d != header.get("dim"):
            raise VectorIndexUnusable(path, f"it holds {index.ntotal} vectors of dimension {index.d}, its header "
                                            f"says {rows} of {header.get('dim')} (corrupt)")
        return cls(index, reader, params, present, meta=header.get("meta") or {}, built_at=header.get("built_at"),
                   mapped=path if mmap else None, file_bytes=size)


def _read(reader: RowReader, rows: np.ndarray, dim: int) -> np.ndarray:
    """``reader(rows)`` checked to be float32 of shape (len(rows), dim), C-contiguous for faiss."""
    vectors = np.ascontiguousarray(reader(rows), dtype=np.float32)
    if vectors.shape != (len(rows), dim):
        raise ValueError(f"the row reader gave shape {vectors.shape} for {len(rows)} rows of dimension {dim}")
    return vectors
