"""Search: queries (:mod:`.query`), and the vector indexes that rank photos by them.

A vector index answers "which rows of a model's vector file are nearest this
query vector" behind one interface (:class:`.base.VectorIndex`): exact search
over the memory-mapped vector file (:mod:`.exact`), and an approximate one for
large collections (:mod:`.ann`). The catalog is asked for paths only for the
rows a search returns (:mod:`.engine`).
"""

from clipdex.search.query import (
    MAX_QUERY_CHARS,
    MAX_WEIGHT,
    MIN_QUERY_NORM,
    MIN_WEIGHT,
    QueryTerm,
    SearchResult,
    combine,
    parse_query,
    rank,
    split_query,
)

__all__ = ["MAX_QUERY_CHARS", "MAX_WEIGHT", "MIN_QUERY_NORM", "MIN_WEIGHT", "QueryTerm", "SearchResult",
           "combine", "parse_query", "rank", "split_query"]
