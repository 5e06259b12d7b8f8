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

What every search page shows beside its results (photo and folder counts) is
read once per change of the catalog, not on every request (:meth:`IndexAccess.counts`).
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
from clipdex.index import Index, IndexCounts
from clipdex.search import QueryTerm, SearchResult
from clipdex.search.filters import SearchFilter
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
        self._counts: dict[int, tuple[object, IndexCounts]] = {}  # by reader: its catalog stamp, counts
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
            self._counts.clear()

    def counts(self) -> IndexCounts:
        """:meth:`Index.counts`, read again only when the catalog changed or a folder came or went.

        Counting the files is a pass over the whole files table (0.6-1.1 s at a
        million photos on a 2-core AMD EPYC; 0.02 ms from here once read); the
        search page shows the count on every request, so each reader keeps its
        last answer with the catalog stamp it was read at (a stamp is per
        connection: one cache per reader).
        """
        with self.reader() as reader:
            stamp = (reader.store.stamp(), tuple(reader.store.missing_roots()))
            cached = self._counts.get(id(reader))
            if cached is not None and cached[0] == stamp:
                return cached[1]
            counts = reader.counts()
            self._counts[id(reader)] = (stamp, counts)
            return counts

    # -- searching ------------------------------------------------------------
    def search(self, terms: list[QueryTerm], k: int, offset: int = 0,
               filters: SearchFilter | None = None, per_video: int | None = None) -> list[SearchResult]:
        """:meth:`Index.search` (encoding and ranking outside the index's lock), keeping only
        photos that pass ``filters``.

        Image terms are uploads or photos of the index (their stored vectors);
        no other file on the server is read.
        """
        return self.index.search(terms, k, offset=offset, filters=filters or None, per_video=per_video,
                                 image_files=_no_other_files, image_vector=self._upload_or_none)

    def similar(self, file_id: int, k: int, offset: int = 0,
                filters: SearchFilter | None = None) -> tuple[FileRecord, list[SearchResult]]:
        """The photo ``file_id`` and the photos most like it that pass ``filters``, by its stored
        vector (no path involved)."""
        return self.index.similar(file_id, k, offset=offset, filters=filters or None)

    def moments(self, video_id: int, terms: list[QueryTerm] | None, limit: int) -> list[SearchResult]:
        """:meth:`Index.moments`: the video's frames scored against ``terms`` (uploads and photos
        of the index, as :meth:`search` resolves them; no other file on the server is read)."""
        return self.index.moments(video_id, terms, limit=limit, image_files=_no_other_files,
                                  image_vector=self._upload_or_none)

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
