"""The on-disk index (see :mod:`clipdex.store.catalog` for its layout)."""

from clipdex.store.catalog import (
    FileRecord,
    ModelRecord,
    NewFile,
    Searchable,
    Store,
    StoredPredictions,
    VectorDamage,
    VideoFrame,
    VideoSampling,
)

__all__ = ["FileRecord", "ModelRecord", "NewFile", "Searchable", "Store", "StoredPredictions", "VectorDamage",
           "VideoFrame", "VideoSampling"]
