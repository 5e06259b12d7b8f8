"""The vector-index interface every search backend implements.

A vector index holds rows of one model's vector file, each named by its row
number in that file (the vector file is append-only, so a row number names one
vector for as long as the file lives; compaction renumbers rows, and a new
generation of the file gets a new index). It answers one question: which of
its rows are most similar to a query vector (cosine; rows and queries are unit
vectors), best first, optionally among ``allowed`` rows only.

Rows are never paths: the catalog maps the rows a search returns to photos
(:mod:`clipdex.search.engine`). Two backends implement it, and one contract
test suite (``tests/unit/test_vector_index.py``) holds both to it:

- :class:`clipdex.search.exact.ExactIndex`: every row scored, over the
  memory-mapped vector file (nothing copied whole);
- :class:`clipdex.search.ann.IvfIndex`: faiss IVF lists navigated
  approximately, then the candidates re-ranked exactly from the vector file.

The order of equal scores is total and the same on every call: score
descending, then row ascending; a row whose score is not a number (a damaged
vector) ranks after every other, as :func:`clipdex.search.query.rank` does.

Each backend has its own ``load`` classmethod (what it needs besides the file
differs: the matrix for exact search, a row reader for IVF); a file that cannot
be used raises :class:`VectorIndexUnusable`, which the engine answers by
rebuilding or by searching exactly.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# How a backend reads float32 vectors of rows it is asked about (re-ranking, building):
# given row numbers, their vectors in that order, shape (len(rows), dim), float32.
RowReader = Callable[[np.ndarray], np.ndarray]

# (done, total) as a build or an update goes; the CLI draws it as a bar.
BuildProgress = Callable[[int, int], None]


class VectorIndexUnusable(Exception):
    """A saved vector index cannot be used: missing, truncated, corrupt, or of another kind.

    Not a user error: the engine catches it and rebuilds the index (or searches
    exactly meanwhile). ``path`` is the file, ``reason`` says what is wrong.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"the vector index {path} cannot be used: {reason}; it will be rebuilt "
                         "(`clipdex index` rebuilds it, search is exact meanwhile)")


@dataclass(frozen=True)
class Hits:
    """Rows of the vector file and their cosine scores, best first."""

    rows: np.ndarray  # int64
    scores: np.ndarray  # float32, same length

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def empty(cls) -> "Hits":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32))


@dataclass(frozen=True)
class VectorIndexStats:
    """What a vector index holds, for ``clipdex status`` and the bench."""

    kind: str  # "exact" or "ivf"
    rows: int  # rows it can return (added, not removed)
    removed: int  # rows below ``covered`` it does not return (removed, or never given)
    covered: int  # 1 + the highest row it was given: rows of the file it reflects
    bytes: int  # size on disk of what it saved (0 for exact search: it is the vector file)
    params: dict[str, Any] = field(default_factory=dict)  # nlist, nprobe, codes, ... as built
    built_at: float | None = None  # time.time() of the last build or update saved


class VectorIndex(abc.ABC):
    """Rows of one model's vector file, searchable by a query vector.

    ``meta`` is the caller's: a JSON-serialisable dict (the engine records the
    model, the file's generation and fingerprint in it) that ``save`` writes with
    the index and ``load`` gives back, so a stale index can be told from a fresh one.
    """

    kind: str = ""
    meta: dict[str, Any]

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """The dimension of its vectors."""

    @abc.abstractmethod
    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (unit float32, shape (n, dim)) under the row numbers ``rows``.

        A row added again replaces its vector; a removed row added again is back.
        """

    @abc.abstractmethod
    def held(self) -> np.ndarray:
        """The rows it can return, sorted (int64)."""

    @abc.abstractmethod
    def remove(self, rows: np.ndarray) -> None:
        """Never return ``rows`` again (rows it does not hold are ignored)."""

    @abc.abstractmethod
    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, *,
               text: bool = False) -> Hits:
        """The ``k`` rows most similar to ``query`` (a unit vector), best first.

        ``allowed`` (sorted, unique int64 row numbers) limits the search to those
        rows; when at least ``k`` allowed rows are held, ``k`` are returned.
        ``text`` says the query came from text: it sits across CLIP's modality gap
        from the images, and an approximate index searches it more broadly to keep
        its recall. Exact backends ignore it. Scores are exact cosines.
        """

    def neighbours(self, queries: np.ndarray, k: int,
                   allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows most similar to each of ``queries`` (unit vectors, shape (m, dim)), in one call.

        Returns ``(rows, scores)``, both of shape (m, k): row ``i`` holds query ``i``'s best
        rows, score descending then row ascending, padded with row -1 and score -inf when
        fewer than ``k`` rows are held (or ``allowed``). Scores are exact cosines. Finding
        near-duplicates asks this of every photo (:mod:`clipdex.duplicates`): a backend
        answers a batch with matrix products or one faiss call, never a Python call per
        query. Where the k-th best score is tied, which of the tied rows is kept may differ
        from :meth:`search` (the order of those returned is the same). This default asks
        :meth:`search` once per query: correct for any backend, fast for none.
        """
        q = check_queries(queries, self.dim, k)
        rows, scores = empty_neighbours(len(q), k)
        for i, query in enumerate(q):
            hits = self.search(query, k, allowed)
            rows[i, :len(hits)] = hits.rows
            scores[i, :len(hits)] = hits.scores
        return rows, scores

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically (a reader sees the old one or the new one)."""

    @abc.abstractmethod
    def stats(self) -> VectorIndexStats:
        """What it holds."""

    def __len__(self) -> int:
        return self.stats().rows


def check_query(query: np.ndarray, dim: int, k: int) -> np.ndarray:
    """``query`` as a float32 vector of ``dim``; ValueError for a wrong shape or ``k < 1``."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.shape[0] != dim:
        raise ValueError(f"the query has {q.shape[0]} dimensions, the index {dim}")
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    return q


def check_queries(queries: np.ndarray, dim: int, k: int) -> np.ndarray:
    """``queries`` as a C-contiguous float32 matrix (m, ``dim``); ValueError for a wrong shape or ``k < 1``."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"expected queries of shape (m, {dim}), got {q.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    return q


def empty_neighbours(m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of shape (m, k) holding nothing yet: rows -1, scores -inf."""
    return np.full((m, k), -1, dtype=np.int64), np.full((m, k), -np.inf, dtype=np.float32)


# merge_neighbours: the candidates a query has no k of yet are cut by a partition of this many
# columns first; the rest of a block then only adds the scores above each query's k-th best.
FIRST_COLUMNS = 1024
# A damaged vector's NaN score ranks after every real row but before padding (-inf).
_NAN_RANK = np.float32(np.finfo(np.float32).min)


def best_per_query(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each line's best ``k`` of candidate ``rows`` (m, c) by ``scores`` (m, c): score descending,
    row ascending, padded with -1/-inf (a row -1 is no candidate). A NaN score (a damaged vector)
    ranks last among real rows and comes back as -inf, as in :func:`top_hits`."""
    m, c = scores.shape
    scores = np.where(rows < 0, np.float32(-np.inf), np.nan_to_num(scores, nan=_NAN_RANK, posinf=np.inf,
                                                                    neginf=-np.inf)).astype(np.float32)
    if c > k:  # the k best of each line, in no order yet
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        rows, scores = np.take_along_axis(rows, keep, axis=1), np.take_along_axis(scores, keep, axis=1)
    order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores), axis=-1)
    rows, scores = np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)
    scores = np.where(scores == _NAN_RANK, np.float32(-np.inf), scores)
    if scores.shape[1] < k:
        pad_rows, pad_scores = empty_neighbours(m, k - scores.shape[1])
        rows, scores = np.hstack([rows, pad_rows]), np.hstack([scores, pad_scores])
    return rows, scores.astype(np.float32)


def merge_neighbours(best: tuple[np.ndarray, np.ndarray], rows: np.ndarray, scores: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """``best`` (rows, scores of shape (m, k)) merged with more candidates over other rows: ``rows``
    of shape (m, c), or one row list (c,) that every query scored (``scores`` (m, c)), cut to each
    query's best ``k`` before anything of size (m, c) is copied."""
    if rows.ndim == 1:
        kth = best[1][:, k - 1]  # each query's k-th best so far (-inf: fewer than k yet)
        first = max(4 * k, FIRST_COLUMNS)
        if len(rows) > 2 * first and not np.isfinite(kth).all():  # a few columns first set the bar
            best = merge_neighbours(best, rows[:first], scores[:, :first], k)
            return merge_neighbours(best, rows[first:], scores[:, first:], k)
        if len(rows) > k and np.isfinite(kth).all():
            # Only scores above a query's k-th best can enter (a NaN never does: it ranks below
            # every real score): far fewer than the block once each query has k.
            above = scores > kth[:, None]
            counts = above.sum(axis=1)
            widest = int(counts.max()) if len(counts) else 0
            if widest <= max(k, len(rows) // 8):
                at, col = np.nonzero(above)  # row-major: grouped by query
                starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
                slot = np.arange(len(at)) - starts[at]
                more_rows, more_scores = empty_neighbours(len(scores), max(1, widest))
                more_rows[at, slot] = rows[col]
                more_scores[at, slot] = scores[at, col]
                return best_per_query(np.hstack([best[0], more_rows]), np.hstack([best[1], more_scores]), k)
        if len(rows) > k:
            if np.isnan(scores.min()):  # min propagates NaN: one pass, nothing copied
                scores = np.where(np.isnan(scores), _NAN_RANK, scores)
            picked = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            rows, scores = rows[picked], np.take_along_axis(scores, picked, axis=1)
        else:
            rows = np.broadcast_to(rows, scores.shape)
    return best_per_query(np.hstack([best[0], rows]), np.hstack([best[1], scores]), k)


# Above this many scores, top_hits first keeps only the rows above a threshold estimated
# from a sample: one comparison pass (~0.5 ms at 1M) instead of a partition (12-24 ms).
PREFILTER_ROWS = 65_536
PREFILTER_SAMPLE = 4_096


def top_hits(scores: np.ndarray, k: int, rows: np.ndarray | None = None) -> Hits:
    """The best ``k`` of ``rows`` (default: 0..len(scores)-1) by ``scores``.

    Score descending, then row ascending. A NaN score (a damaged vector) ranks
    after every number and is returned as -inf, as :func:`clipdex.search.query.rank`
    does. O(n) plus a sort of ``k``: the ``k``-th best score is found by
    partition, then the rows above it and the lowest rows tied with it are
    taken, so equal scores never split arbitrarily.
    """
    n = len(scores)
    want = min(k, n)
    if want <= 0:
        return Hits.empty()
    scores = np.asarray(scores, dtype=np.float32)
    if np.isnan(scores.min()):  # min propagates NaN: one pass, nothing allocated
        scores = np.where(np.isnan(scores), np.float32(-np.inf), scores)
    if n >= PREFILTER_ROWS:
        picked = _above_estimate(scores, want)
        if picked is not None:
            return top_hits(scores[picked], want, picked if rows is None else rows[picked])
    if want < n:
        threshold = scores[np.argpartition(scores, n - want)[n - want]]
        above = np.flatnonzero(scores > threshold)
        tied = np.flatnonzero(scores == threshold)
        if len(tied) > want - len(above):  # the lowest rows among the tied
            if rows is not None:
                tied = tied[np.argsort(rows[tied], kind="stable")]
            tied = tied[:want - len(above)]
        top = np.concatenate([above, tied])
    else:
        top = np.arange(n)
    top_rows = top if rows is None else rows[top]
    order = np.lexsort((top_rows, -scores[top]))
    return Hits(np.asarray(top_rows[order], dtype=np.int64), scores[top[order]])


def _above_estimate(scores: np.ndarray, want: int) -> np.ndarray | None:
    """Indexes of every score at or above a threshold that a sample puts above the ``want``-th best.

    Every row tied with the ``want``-th best is among them, so the order of ties
    is kept. None when the estimate keeps fewer than ``want`` rows or too many to
    help (a quarter of them): the caller partitions all of them instead.
    """
    n = len(scores)
    sample = scores[::max(1, n // PREFILTER_SAMPLE)]
    # ~2x want rows expected above the m-th best of the sample
    m = min(len(sample), max(1, -(-2 * want * len(sample) // n)))
    threshold = np.partition(sample, len(sample) - m)[len(sample) - m]
    if threshold == -np.inf:
        return None
    picked = np.flatnonzero(scores >= threshold)
    return picked if want <= len(picked) <= n // 4 else None


def merge_hits(parts: list[Hits], k: int) -> Hits:
    """The best ``k`` of several :class:`Hits` over disjoint rows, in the same order."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Hits.empty()
    if len(parts) == 1:
        return Hits(parts[0].rows[:k], parts[0].scores[:k])
    return top_hits(np.concatenate([p.scores for p in parts]), k, np.concatenate([p.rows for p in parts]))


def check_rows(rows: np.ndarray, vectors: np.ndarray | None = None, dim: int = 0) -> np.ndarray:
    """``rows`` as int64 row numbers (>= 0), and ``vectors`` checked to match them: ValueError if not."""
    r = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(r) and int(r.min()) < 0:
        raise ValueError(f"row numbers are 0 or more (got {int(r.min())})")
    if vectors is not None and (vectors.ndim != 2 or vectors.shape != (len(r), dim)):
        raise ValueError(f"expected vectors of shape ({len(r)}, {dim}) for {len(r)} rows, got {vectors.shape}")
    return r


def flush_to_disk(f: Any) -> None:
    """Flush ``f`` to the disk before it is renamed into place (a crash leaves the old file or the new)."""
    f.flush()
    os.fsync(f.fileno())
