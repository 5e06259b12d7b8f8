"""One index used by many request threads at once, without one request waiting on another's work.

An :class:`~clipdex.Index` holds one SQLite connection and caches (the search
matrix, classifications), which are not safe to share between threads. The web
app therefore reaches the index in two ways:

* **the index itself, under a lock, for short steps only**: the cached search
  matrix, a stored vector, a classification, a correction. The slow parts of a
  search (encoding the text, decoding an uploaded image, ranking) run outside
  the lock, several at once, on the snapshot the lock handed out;
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

from clipdex.errors import EmptyIndex, QueryError
from clipdex.index import Index
from clipdex.search import QueryTerm, SearchResult, combine, rank
from clipdex.store import FileRecord, Searchable, Store
from clipdex.web.uploads import UPLOAD_NAME, upload_name

READERS = 8
UPLOAD_VECTORS = 32  # encoded uploads kept, so paging through their results encodes once


class IndexAccess:
    """Thread-safe searching and reading of one open index (see the module docstring)."""

    def __init__(self, index: Index, uploads: Path, readers: int = READERS) -> None:
        self.index = index
        self.uploads = uploads
        self.lock = threading.Lock()
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
        """Like :meth:`Index.search`, with encoding and ranking outside the lock.

        Image terms are photos of the index (their stored vectors) or uploads;
        no other file on the server is read.
        """
        texts = [t.value for t in terms if t.kind == "text"]
        images: dict[int, np.ndarray] = {}
        uploads: dict[int, str] = {}
        with self.lock:
            found = self._searchable()
            classification = self.index.classification(label[0]) if label else None
            encoder = self.index.encoder  # built once, under the lock
            for i, term in enumerate(terms):
                if term.kind != "image":
                    continue
                name = upload_name(term.value, self.uploads)
                if name is not None:
                    uploads[i] = name
                else:
                    images[i] = self.index.query_vector([QueryTerm("image", term.value)],
                                                        image_files=_no_other_files)
        for i, name in uploads.items():
            images[i] = self._upload_vector(name, terms[i].value, encoder.encode_pil)
        text_vectors = iter(encoder.encode_texts(texts) if texts else [])
        vectors = [images[i] if t.kind == "image" else next(text_vectors) for i, t in enumerate(terms)]
        allowed = None
        if classification is not None and label is not None:
            labels = dict(zip(classification.paths, classification.effective_labels()))
            allowed = np.array([label[1] in labels.get(p, ()) for p in found.paths], dtype=bool)
        return _ranked(found, combine(vectors, [t.weight for t in terms]), k, offset, allowed)

    def similar(self, file_id: int, k: int, offset: int = 0) -> tuple[FileRecord, list[SearchResult]]:
        """The photo ``file_id`` and the photos most like it, by its stored vector (no path involved)."""
        with self.lock:
            found = self._searchable()
            record = self.index.photo(file_id)
            rows = np.flatnonzero(found.ids == file_id)
            vector = (found.vectors[rows[0]] if rows.size else
                      self.index.store.vector_for_hash(self.index.model_record(), record.content_hash or ""))
        if vector is None:
            raise QueryError(f"more like photo #{file_id}",
                             f"{record.path} has no vector of this model yet; run `clipdex index` on its folder")
        return record, _ranked(found, combine([vector], [1.0]), k, offset, None)

    def _searchable(self) -> Searchable:
        found = self.index.searchable()
        if not found.paths:
            raise EmptyIndex(self.index.path, self.index.model_record().key)
        return found

    def _upload_vector(self, name: str, term: str, encode: Callable[[list], np.ndarray]) -> np.ndarray:
        path = self.uploads / name
        if not UPLOAD_NAME.match(name) or not path.is_file():
            raise QueryError(f"@{term}", "that upload is not on this server (uploads are named "
                                         "upload:<hash>.<ext>); upload the photo again")
        with self.lock:
            cached = self._upload_vectors.get(name)
        if cached is not None:
            return cached
        from clipdex.decode import open_image_file

        image = open_image_file(str(path))
        vector = np.asarray(encode([image])[0], dtype=np.float32)
        with self.lock:
            self._upload_vectors[name] = vector
            while len(self._upload_vectors) > UPLOAD_VECTORS:
                self._upload_vectors.popitem(last=False)
        return vector


def _no_other_files(path: str) -> bool:
    return False


def _ranked(found: Searchable, query_vector: np.ndarray, k: int, offset: int,
            allowed: np.ndarray | None) -> list[SearchResult]:
    rows, scores = rank(query_vector, found.vectors, k, offset, allowed)
    return [SearchResult(rank=offset + i + 1, score=float(s), path=found.paths[r], file_id=int(found.ids[r]))
            for i, (r, s) in enumerate(zip(rows, scores))]
