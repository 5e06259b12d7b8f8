"""clipdex: zero-shot classification and semantic search for photo collections.

The public API: :class:`Index` (open, add folders, search), the result types,
the model registry and the error tree. Heavy dependencies (torch, open_clip)
load on first use.
"""

from clipdex.errors import (
    ClipdexError,
    DuplicatesError,
    EmptyIndex,
    FilterError,
    ImageDecodeError,
    IndexDamaged,
    IndexLocked,
    IndexNotFound,
    IndexStorageError,
    IndexVersionError,
    ModelError,
    ModelMismatch,
    ModelUnavailable,
    OutputError,
    PhotoFolderError,
    QueryError,
    UnknownModel,
)
from clipdex.index import Index, IndexCounts, IndexStatus
from clipdex.indexer import Failure, IndexReport, IndexSettings
from clipdex.models import ModelSpec, list_models, resolve_model
from clipdex.search import QueryTerm, SearchResult, parse_query
from clipdex.search.filters import SearchFilter

__all__ = [
    "ClipdexError",
    "DuplicatesError",
    "EmptyIndex",
    "Failure",
    "FilterError",
    "ImageDecodeError",
    "Index",
    "IndexCounts",
    "IndexDamaged",
    "IndexLocked",
    "IndexNotFound",
    "IndexReport",
    "IndexSettings",
    "IndexStatus",
    "IndexStorageError",
    "IndexVersionError",
    "ModelError",
    "ModelMismatch",
    "ModelSpec",
    "ModelUnavailable",
    "OutputError",
    "PhotoFolderError",
    "QueryError",
    "QueryTerm",
    "SearchFilter",
    "SearchResult",
    "UnknownModel",
    "list_models",
    "parse_query",
    "resolve_model",
]
