"""The orchestrator: discover -> diff -> decode (workers) -> encode -> store.

Only this module knows the order of the stages. Decoding, EXIF handling and
preprocessing run in worker threads a few batches ahead of the forward pass,
so the model does not wait for the disk. Every batch is committed as soon as
it is encoded: a killed run keeps all finished batches and the next run
resumes after them.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from clipdex import discover
from clipdex.decode import (
    DEFAULT_MAX_MEGAPIXELS,
    ORIGINAL_SIZE,
    load_image,
    supported_extensions,
)
from clipdex.errors import ImageDecodeError, PhotoFolderError
from clipdex.store import ModelRecord, NewFile, Store

if TYPE_CHECKING:
    from clipdex.models.encoder import Encoder

LOOKAHEAD_BATCHES = 3  # batches decoded ahead of the one being encoded
CPU_BATCH = 16  # ONNX Runtime on 2-16 cores: 8-16 is fastest, larger batches only add latency
GPU_BATCH = 256
DRAFT_FACTOR = 2  # JPEGs decode reduced while both sides stay >= 2x the model's input


class Progress(Protocol):
    """What the indexer reports while it works (the CLI draws it as a bar)."""

    def start(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...


def default_workers() -> int:
    """One decoding thread per core this process may use (a GPU needs them all:
    ~4 ms of decoding per 512-px photo means 12+ cores for 3,000 img/s), at most 32."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(32, cores))


@dataclass
class IndexSettings:
    """Tunables of one indexing run."""

    batch_size: int | None = None  # None: 16 on the CPU (ONNX Runtime's best), 256 on a GPU
    workers: int = field(default_factory=default_workers)
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    retry_failed: bool = False
    reduced_decode: bool = True


@dataclass(frozen=True)
class Failure:
    """A file that was skipped, and why."""

    path: str
    reason: str


@dataclass
class IndexReport:
    """What one run did."""

    root: str
    model: str
    new: int = 0
    changed: int = 0
    reused: int = 0
    unchanged: int = 0
    removed: int = 0
    encoded: int = 0
    failed: list[Failure] = field(default_factory=list)
    indexed_total: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0


@dataclass
class _Prepared:
    """A file after the worker stage: hashed, and decoded unless its vector exists."""

    entry: discover.FileEntry
    content_hash: str | None = None
    pixels: Any = None  # the preprocessed tensor
    width: int | None = None
    height: int | None = None
    reason: str | None = None


def check_folder(root: str | os.PathLike[str]) -> str:
    """The folder's absolute path, or :class:`PhotoFolderError` if it is not one."""
    path = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(path):
        raise PhotoFolderError(path, "folder does not exist", "Check the path and try again.")
    if not os.path.isdir(path):
        raise PhotoFolderError(path, "is a file, not a folder",
                               "Pass the folder that holds your photos.")
    return path


class Indexer:
    """Brings one model's vectors in an index up to date with a photo folder."""

    def __init__(self, encoder: "Encoder", store: Store, settings: IndexSettings | None = None) -> None:
        self.encoder = encoder
        self.store = store
        self.settings = settings or IndexSettings()

    @staticmethod
    def scan(root: str | os.PathLike[str]) -> discover.Walk:
        """Walk ``root``; raise :class:`PhotoFolderError` if it is missing or holds no images."""
        folder = check_folder(root)
        walk = discover.walk(folder, supported_extensions())
        if not walk.files and not walk.problems:
            raise PhotoFolderError(
                folder, "contains no images",
                f"clipdex indexes {', '.join(e.lstrip('.') for e in supported_extensions())} "
                "files in the folder and its subfolders.")
        return walk

    def run(self, root: str | os.PathLike[str] | discover.Walk, model: ModelRecord,
            progress: Progress | None = None) -> IndexReport:
        """Index ``root`` (a folder, or the result of :meth:`scan`) with ``model``."""
        started = time.perf_counter()
        walk = root if isinstance(root, discover.Walk) else self.scan(root)
        folder = walk.root
        self.store.add_root(folder)
        report = IndexReport(root=folder, model=model.key)
        known = self.store.files_under(folder)
        embedded = self.store.embedded_hashes(model)

        todo: list[discover.FileEntry] = []
        for entry in walk.files:
            record = known.get(entry.path)
            same_stat = record is not None and (record.size, record.mtime_ns) == (entry.size, entry.mtime_ns)
            if same_stat and record is not None:
                if record.status == "ok" and record.content_hash in embedded:
                    report.unchanged += 1
                    continue
                if record.status == "failed" and not self.settings.retry_failed:
                    report.unchanged += 1
                    report.failed.append(Failure(entry.path, record.reason or "failed"))
                    continue
            if record is None:
                report.new += 1
            elif not same_stat:
                report.changed += 1
            else:
                report.new += 1  # known, but new to this model (or retried)
            todo.append(entry)

        if todo:
            self.encoder.load()  # before the clock starts: the rate is the pipeline's, not start-up's
        if progress:
            progress.start(len(todo))
        encode_started = time.perf_counter()
        model = self._process(todo, model, embedded, report, progress)
        report.encode_seconds = time.perf_counter() - encode_started

        problems = [NewFile(path=p.path, size=0, mtime_ns=0, reason=p.reason) for p in walk.problems]
        if problems:
            self.store.commit_batch(model, np.zeros((0, model.dim), np.float32), [], problems)
            report.failed.extend(Failure(p.path, p.reason) for p in walk.problems)

        # Deletions only after a complete walk, and never under a folder we could not read.
        seen = {f.path for f in walk.files} | {p.path for p in walk.problems}
        blind = tuple(d.rstrip(os.sep) + os.sep for d in walk.unreadable_dirs)
        gone = [p for p in known if p not in seen and not (blind and p.startswith(blind))]
        if gone:
            self.store.remove_files(gone)
        report.removed = len(gone)
        self.store.mark_root_indexed(folder)
        report.indexed_total = sum(1 for f in self.store.files_under(folder).values() if f.status == "ok")
        report.seconds = time.perf_counter() - started
        report.failed.sort(key=lambda f: f.path)
        return report

    # -- the pipeline ---------------------------------------------------------
    def _process(self, todo: list[discover.FileEntry], model: ModelRecord,
                 embedded: dict[str, int], report: IndexReport,
                 progress: Progress | None) -> ModelRecord:
        if not todo:
            return model
        batch_size = self.settings.batch_size or (GPU_BATCH if self.encoder.device != "cpu" else CPU_BATCH)
        window = batch_size * LOOKAHEAD_BATCHES
        draft = self.encoder.image_size * DRAFT_FACTOR if self.settings.reduced_decode else None
        pending: list[_Prepared] = []
        to_encode = 0
        with ThreadPoolExecutor(max_workers=self.settings.workers,
                                thread_name_prefix="clipdex-decode") as pool:
            in_flight: deque[Future[_Prepared]] = deque()
            entries = iter(todo)
            for entry in entries:
                in_flight.append(pool.submit(self._prepare, entry, embedded, draft))
                if len(in_flight) >= window:
                    break
            while in_flight:
                item = in_flight.popleft().result()
                nxt = next(entries, None)
                if nxt is not None:
                    in_flight.append(pool.submit(self._prepare, nxt, embedded, draft))
                pending.append(item)
                if item.pixels is not None:
                    to_encode += 1
                if to_encode >= batch_size:
                    model = self._flush(pending, model, embedded, report, progress)
                    pending, to_encode = [], 0
            if pending:
                model = self._flush(pending, model, embedded, report, progress)
        return model

    def _prepare(self, entry: discover.FileEntry, embedded: dict[str, int],
                 draft: int | None) -> _Prepared:
        """Worker: read, hash, and (unless a vector exists) decode and preprocess."""
        try:
            with open(entry.path, "rb") as f:
                data = f.read()
        except OSError as e:
            return _Prepared(entry, reason=f"cannot be read ({e.strerror or e})")
        content_hash = hashlib.sha256(data).hexdigest()
        if content_hash in embedded:
            return _Prepared(entry, content_hash=content_hash)
        try:
            image = load_image(data, entry.path, max_megapixels=self.settings.max_megapixels,
                               draft_size=draft)
            pixels = self.encoder.preprocess(image)
        except ImageDecodeError as e:
            return _Prepared(entry, content_hash=content_hash, reason=e.reason)
        except Exception as e:  # noqa: BLE001  (a decoder bug must not take the batch down)
            return _Prepared(entry, content_hash=content_hash,
                             reason=f"could not be decoded ({type(e).__name__}: {e})")
        width, height = image.info.get(ORIGINAL_SIZE, image.size)
        return _Prepared(entry, content_hash=content_hash, pixels=pixels, width=width, height=height)

    def _flush(self, items: list[_Prepared], model: ModelRecord, embedded: dict[str, int],
               report: IndexReport, progress: Progress | None) -> ModelRecord:
        batch_hashes: list[str] = []
        batch_pixels = []
        files: list[NewFile] = []
        for item in items:
            e = item.entry
            if item.reason:
                files.append(NewFile(e.path, e.size, e.mtime_ns, item.content_hash, reason=item.reason))
                report.failed.append(Failure(e.path, item.reason))
                continue
            assert item.content_hash is not None
            if item.content_hash in embedded or item.content_hash in batch_hashes:
                width, height = item.width, item.height
                if width is None:
                    width, height = self.store.size_of_hash(item.content_hash)
                files.append(NewFile(e.path, e.size, e.mtime_ns, item.content_hash, width, height))
                report.reused += 1
                continue
            batch_hashes.append(item.content_hash)
            batch_pixels.append(item.pixels)
            files.append(NewFile(e.path, e.size, e.mtime_ns, item.content_hash, item.width, item.height))
        vectors = (self.encoder.encode_images(np.stack(batch_pixels)) if batch_pixels
                   else np.zeros((0, model.dim), np.float32))
        first_row = model.rows
        model = self.store.commit_batch(model, vectors, batch_hashes, files)
        for i, h in enumerate(batch_hashes):
            embedded[h] = first_row + i
        report.encoded += len(batch_hashes)
        if progress:
            progress.advance(len(items))
        return model

