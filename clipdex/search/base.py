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
descending, then row ascending.
"""

from __future__ import annotations

import abc
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
    removed: int  # rows added and then removed (masked)
    covered: int  # 1 + the highest row it was given: rows of the file it reflects
    bytes: int  # size on disk of what it saved (0 for exact search: it is the vector file)
    params: dict[str, Any] = field(default_factory=dict)  # nlist, nprobe, codes, ... as built
    built_at: float | None = None  # time.time() of the last build or update saved


class VectorIndex(abc.ABC):
    """Rows of one model's vector file, searchable by a query vector."""

    kind: str = ""

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
