"""One index used by many request threads at once, without one request waiting on another's work.

An :class:`~clipdex.Index` holds one SQLite connection and caches (the search
matrix, classifications), which are not safe to share between threads. The web
app therefore reaches the index in two ways:

* **the index itself, under its lock, for short steps only**: a classification,
  a correction. :meth:`Index.search` and :meth:`Index.similar` take the lock
  for their catalog reads only; the slow parts of a search (encoding the text,
  decoding an uploaded image, ranking) run outside it, several at once;
* **readers**: a few extra connections to the same catalog (WAL lets them read
  while the index writes), for photo pages, thumbnails and status. A thumbnail
  never waits for a search.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from clipdex.errors import QueryError
from clipdex.index import Index
from clipdex.search import QueryTerm, SearchResult
from clipdex.store import FileRecord, Store
from clipdex.web.uploads import UPLOAD_NAME, upload_name

READERS = 8
UPLOAD_VECTORS = 32  # encoded uploads kept, so paging through their results encodes once


class IndexAccess:
    """Thread-safe searching and reading of one open index (see the module docstring)."""

    def __init__(self, index: Index, uploads: Path, readers: int = READERS) -> None:
        self.index = index
        self.uploads = uploads
        self.lock = index.lock  # the index's own: its SQLite steps take it too
        self._uploads_lock = threading.Lock()
        self._idle: queue.LifoQueue[Index] = queue.LifoQueue()
        self._readers: list[Index] = []
        self._max_readers = max(1, readers)
        self._open_lock = threading.Lock()
        self._upload_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._closed = False

    # -- the index, one short step at a time ----------------------------------
    @contextmanager
    def locked(self) -> Iterator[Index]:
        """The index itself, for a short step (no encoding, no decoding)."""
        with self.lock:
            yield self.index

    @contextmanager
    def reader(self) -> Iterator[Index]:
        """An index on a connection of its own, borrowed from a small pool."""
        try:
            reader = self._idle.get_nowait()
        except queue.Empty:
            reader = self._open_reader()
        try:
            yield reader
        finally:
            self._idle.put(reader)

    def _open_reader(self) -> Index:
        with self._open_lock:
            if len(self._readers) < self._max_readers and not self._closed:
                index = self.index
                reader = Index(Store.open(index.path), index.requested, index.device, index.precision)
                self._readers.append(reader)
                return reader
        return self._idle.get()  # all are lent: wait for one

    def close(self) -> None:
        """Close the readers (the index itself belongs to the caller)."""
        with self._open_lock:
            self._closed = True
            for reader in self._readers:
                reader.close()
            self._readers.clear()

    # -- searching ------------------------------------------------------------
    def search(self, terms: list[QueryTerm], k: int, offset: int = 0,
               label: tuple[str, str] | None = None) -> list[SearchResult]:
        """:meth:`Index.search` (encoding and ranking outside the index's lock).

        Image terms are uploads or photos of the index (their stored vectors);
        no other file on the server is read.
        """
        return self.index.search(terms, k, offset=offset, label=label, image_files=_no_other_files,
                                 image_vector=self._upload_or_none)

    def similar(self, file_id: int, k: int, offset: int = 0) -> tuple[FileRecord, list[SearchResult]]:
        """The photo ``file_id`` and the photos most like it, by its stored vector (no path involved)."""
        return self.index.similar(file_id, k, offset=offset)

    def _upload_or_none(self, term: str) -> np.ndarray | None:
        name = upload_name(term, self.uploads)
        if name is None:
            return None
        with self.lock:
            encoder = self.index.encoder  # built once, under the lock
        return self._upload_vector(name, term, encoder.encode_pil)

    def _upload_vector(self, name: str, term: str, encode: Callable[[list], np.ndarray]) -> np.ndarray:
        path = self.uploads / name
        if not UPLOAD_NAME.match(name) or not path.is_file():
            raise QueryError(f"@{term}", "that upload is not on this server (uploads are named "
                                         "upload:<hash>.<ext>); upload the photo again")
        with self._uploads_lock:
            cached = self._upload_vectors.get(name)
        if cached is not None:
            return cached
        from clipdex.decode import open_image_file

        image = open_image_file(str(path))
        vector = np.asarray(encode([image])[0], dtype=np.float32)
        with self._uploads_lock:
            self._upload_vectors[name] = vector
            while len(self._upload_vectors) > UPLOAD_VECTORS:
                self._upload_vectors.popitem(last=False)
        return vector


def _no_other_files(path: str) -> bool:
    return False
