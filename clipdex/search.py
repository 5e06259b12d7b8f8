"""Queries -> ranked photos.

A query is arithmetic on embeddings: each term (a text or an image) becomes a
normalised vector, the terms are added with their weights, the sum is
normalised again, and photos are ranked by cosine similarity to it.

Query syntax (the CLI and the web page share it)::

    dog in the snow                  one text term
    beach -people                    minus a term ("-" glued to a word, or alone)
    beach -"people walking"          quote a term of several words
    "red car" + night                several terms added
    2*snow + dog  /  0.5*@dog.jpg    a weight before "*"
    @photos/dog.jpg                  an image: a file, or a photo of the index
                                     (its path, file name or stem, e.g. @abc123)
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clipdex.errors import QueryError

MAX_QUERY_CHARS = 2000
WEIGHT = re.compile(r"^(?P<w>\d+(?:\.\d+)?|\.\d+)\*(?P<rest>.*)$")


@dataclass(frozen=True)
class QueryTerm:
    """One term of a query: a text or an image (``@path``) with a signed weight."""

    kind: str  # "text" or "image"
    value: str
    weight: float = 1.0


@dataclass(frozen=True)
class SearchResult:
    """One ranked photo."""

    rank: int
    score: float
    path: str
    file_id: int


def parse_query(query: str) -> list[QueryTerm]:
    """Split a query string into weighted terms (see the module docstring)."""
    text = query.strip()
    if not text:
        raise QueryError(query, "the query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(query[:40] + "…", f"the query is longer than {MAX_QUERY_CHARS} characters")
    try:
        tokens = shlex.split(text, posix=True)
    except ValueError as e:
        raise QueryError(query, f"{e} (a quote is not closed)") from None

    terms: list[QueryTerm] = []
    words: list[str] = []
    sign = 1.0
    weight = 1.0
    dangling = False  # an operator or weight waits for its term

    def close() -> None:
        nonlocal words, sign, weight, dangling
        if words:
            value = " ".join(words)
            if value.startswith("@"):
                if len(words) > 1:
                    raise QueryError(query, f"an image term takes one path; quote paths with spaces: {value!r}")
                if len(value) == 1:
                    raise QueryError(query, "'@' must be followed by an image path or photo name")
                terms.append(QueryTerm("image", value[1:], sign * weight))
            else:
                terms.append(QueryTerm("text", value, sign * weight))
        elif dangling:
            raise QueryError(query, "an operator or weight is not followed by a term")
        words, sign, weight, dangling = [], 1.0, 1.0, False

    for raw in tokens:
        if raw in ("+", "-"):
            close()
            sign, dangling = (-1.0 if raw == "-" else 1.0), True
            continue
        token = raw
        if token[0] in "+-" and len(token) > 1:
            close()
            sign, token = (-1.0 if token[0] == "-" else 1.0), token[1:]
        match = WEIGHT.match(token)
        if match:
            if words:
                close()
            weight, dangling = float(match["w"]), True
            token = match["rest"]
            if not token:
                continue
        words.append(token)
    close()
    if not any(t.weight > 0 for t in terms):
        raise QueryError(query, "the query needs at least one positive term")
    return terms


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit vectors, normalised: the query vector."""
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float32))
    for vector, weight in zip(vectors, weights):
        total += weight * np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(total))
    if norm == 0.0:
        raise QueryError("", "the terms cancel each other out")
    return total / norm


def rank(query_vector: np.ndarray, vectors: np.ndarray, k: int, offset: int = 0,
         allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores of the best ``k`` rows after ``offset``.

    Ties are broken by row order (rows are sorted by path), so results are
    deterministic. ``allowed`` is an optional boolean mask of rows to consider.
    """
    if len(vectors) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = vectors @ query_vector.astype(np.float32)
    candidates = np.arange(len(scores))
    if allowed is not None:
        candidates = candidates[allowed]
        scores_c = scores[allowed]
    else:
        scores_c = scores
    want = min(len(candidates), offset + k)
    if want <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if want < len(candidates):
        top = np.argpartition(-scores_c, want - 1)[:want]
    else:
        top = np.arange(len(candidates))
    order = top[np.lexsort((candidates[top], -scores_c[top]))][offset:offset + k]
    return candidates[order], scores_c[order]
