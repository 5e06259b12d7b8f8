"""Queries -> ranked photos.

A query is arithmetic on embeddings: each term (a text or an image) becomes a
normalised vector, the terms are added with their weights, the sum is
normalised again, and photos are ranked by cosine similarity to it.

Query syntax (the CLI and the web page share it)::

    dog in the snow                  one text term
    beach -people                    minus a word ("-" glued to it: that word only)
    beach -"people walking"          quote a glued term of several words
    beach - people walking           "-" alone: minus everything up to the next + or -
    -people beach                    a query may start with a minus term
    "red car" + night                several terms added
    2*snow + dog  /  0.5*@dog.jpg    a weight before "*" (at most 100)
    @photos/dog.jpg                  an image: a file, or a photo of the index
                                     (its path, file name or stem, e.g. @abc123)
    @caf\\xe9.jpg                     a name as clipdex shows it: backslashes are kept
                                     as typed (a name that is not UTF-8 shows \\xNN)
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clipdex.errors import QueryError, shorten

MAX_QUERY_CHARS = 2000
# A term's weight: larger ones only drown the other terms, and huge ones overflow float32.
MAX_WEIGHT = 100.0
MIN_WEIGHT = 0.001  # below it a term does nothing but hide a typo (0*snow, 1e-300*snow)
# A sum of terms shorter than this is taken as cancelled out (its direction is noise).
MIN_QUERY_NORM = 1e-6
WEIGHT = re.compile(r"^(?P<w>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\*(?P<rest>.*)$")


@dataclass(frozen=True)
class QueryTerm:
    """One term of a query: a text or an image (``@path``) with a signed weight."""

    kind: str  # "text" or "image"
    value: str
    weight: float = 1.0


@dataclass(frozen=True)
class SearchResult:
    """One ranked photo, or one moment of a video (``t`` set: ``path`` is the video's)."""

    rank: int
    score: float
    path: str
    file_id: int  # the photo's id, or the frame's (a moment)
    t: float | None = None  # a moment: seconds from the video's start
    video_id: int | None = None  # a moment: the video's id (what the web app plays)

    @property
    def image_path(self) -> str:
        """The path readers of an image take: the photo's, or the frame's
        (``video.mp4#t=83.500``, decoded from the video: :mod:`clipdex.video`)."""
        if self.t is None:
            return self.path
        from clipdex.video import frame_path

        return frame_path(self.path, self.t)


def split_query(text: str) -> list[str]:
    """The words of a query: split at spaces, quotes group words (and are removed).

    Like ``shlex.split`` but a backslash is an ordinary character, so the name
    clipdex shows for a file that is not UTF-8 (``caf\\xe9.jpg``) or a Windows
    path reaches the query as typed. Raises ``ValueError`` for a quote that is
    not closed.
    """
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # "#1 photo" is words, not a comment
    lexer.escape = ""
    return list(lexer)


def parse_query(query: str) -> list[QueryTerm]:
    """Split a query string into weighted terms (see the module docstring)."""
    text = query.strip()
    if not text:
        raise QueryError(query, "the query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(shorten(query, 40), f"the query is longer than {MAX_QUERY_CHARS} characters")
    try:
        tokens = split_query(text)
    except ValueError as e:
        raise QueryError(query, f"{e} (a quote is not closed)") from None

    terms: list[QueryTerm] = []
    words: list[str] = []
    sign = 1.0
    weight = 1.0
    dangling = False  # an operator or weight waits for its term
    glued = False  # a sign glued to a token ("-people") applies to that token only

    def close() -> None:
        nonlocal words, sign, weight, dangling, glued
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
        words, sign, weight, dangling, glued = [], 1.0, 1.0, False, False

    for raw in tokens:
        if raw in ("+", "-"):
            close()
            sign, dangling = (-1.0 if raw == "-" else 1.0), True
            continue
        token = raw
        if token[0] in "+-" and len(token) > 1:
            close()
            sign, token, glued = (-1.0 if token[0] == "-" else 1.0), token[1:], True
        match = WEIGHT.match(token)
        if match:
            if words:
                close()
            weight, dangling = float(match["w"]), True
            _check_weight(weight, query)
            token = match["rest"]
            if not token:
                continue
        words.append(token)
        if glued:
            close()
    close()
    if not any(t.weight > 0 for t in terms):
        raise QueryError(query, "the query needs at least one positive term")
    return terms


def _check_weight(weight: float, query: str) -> None:
    if not (math.isfinite(weight) and MIN_WEIGHT <= abs(weight) <= MAX_WEIGHT):
        raise QueryError(query, f"the weight {weight:g} is out of range: weights go up to {MAX_WEIGHT:g}, "
                                f"from {MIN_WEIGHT:g} (write 2*snow or 0.5*snow, not 1e20*snow)")


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit vectors, normalised: the query vector.

    Raises :class:`QueryError` for a weight that is not finite or above
    ``MAX_WEIGHT``, for a vector that is not finite, and for terms that
    cancel each other out; the result is always a finite unit vector.
    """
    if not vectors:
        raise QueryError("", "the query has no terms")
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float32))
    with np.errstate(over="ignore", invalid="ignore"):  # checked below: overflow is an error
        for vector, weight in zip(vectors, weights, strict=True):
            _check_weight(float(weight), "")
            v = np.asarray(vector, dtype=np.float32)
            if not np.isfinite(v).all():
                raise QueryError("", "a term's vector is not finite (the model returned NaN or infinity)")
            total += np.float32(weight) * v
        norm = float(np.linalg.norm(total)) if np.isfinite(total).all() else math.inf
    if not math.isfinite(norm):
        raise QueryError("", "the weighted sum of the terms is not finite")
    if norm < MIN_QUERY_NORM:
        raise QueryError("", "the terms cancel each other out (e.g. 'dog - dog'): give the query "
                             "a term that is not taken away again")
    return total / np.float32(norm)


def rank(query_vector: np.ndarray, vectors: np.ndarray, k: int, offset: int = 0,
         allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores of the best ``k`` rows after ``offset``.

    The order is total: score descending, then row ascending (rows are sorted
    by path), so equal scores (copies of one photo) keep one order on every
    page and paging neither repeats nor skips a row. O(n) in the rows plus a
    sort of ``offset + k`` of them. ``allowed`` is an optional boolean mask of
    rows to consider. Raises :class:`QueryError` for ``k < 1`` or ``offset < 0``.
    """
    if k < 1:
        raise QueryError("", f"the number of results must be at least 1 (got {k})")
    if offset < 0:
        raise QueryError("", f"the offset must be 0 or more (got {offset})")
    if len(vectors) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = vectors @ query_vector.astype(np.float32)
    if allowed is not None:
        candidates = np.flatnonzero(allowed)
        scores_c = scores[candidates]
    else:
        candidates = np.arange(len(scores))
        scores_c = scores
    if np.isnan(scores_c).any():  # a damaged vector ranks last, never in the middle
        scores_c = np.where(np.isnan(scores_c), -np.inf, scores_c)
    want = min(len(candidates), offset + k)
    if want <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if want < len(candidates):
        # The want-th best score is the threshold; of the rows tied with it, the
        # first rows (lowest index) are taken, so the page boundary never splits
        # a tie arbitrarily.
        threshold = scores_c[np.argpartition(-scores_c, want - 1)[want - 1]]
        above = np.flatnonzero(scores_c > threshold)
        tied = np.flatnonzero(scores_c == threshold)[:want - len(above)]
        top = np.concatenate([above, tied])
    else:
        top = np.arange(len(candidates))
    order = top[np.lexsort((top, -scores_c[top]))][offset:offset + k]
    return candidates[order], scores_c[order]
