"""The orchestrator: discover -> diff -> decode (workers) -> encode -> store.

Only this module knows the order of the stages. Decoding, EXIF handling and
preprocessing run in worker threads a few batches ahead of the forward pass,
so the model does not wait for the disk. Every batch is committed as soon as
it is encoded: a killed run keeps all finished batches and the next run
resumes after them.

With a CUDA encoder, JPEGs are decoded on the GPU instead
(:mod:`clipdex.models.gpu_decode`): the workers only read, hash and check each
JPEG's header, and each batch's JPEGs are decoded, turned upright, resized and
cropped on the GPU in one call just before encoding. Other formats, CMYK JPEGs
and files the GPU decoder rejects are decoded by Pillow as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

import numpy as np

from clipdex import discover
from clipdex.decode import (
    DEFAULT_MAX_MEGAPIXELS,
    ORIGINAL_SIZE,
    TAKEN_AT,
    ImageTooLarge,
    ImageUnreadable,
    check_image,
    load_image,
    read_jpeg_header,
    read_taken_at,
    supported_extensions,
)
from clipdex.errors import ImageDecodeError, PhotoFolderError, VideoError
from clipdex.models.preprocess import PreprocessConfig
from clipdex.settings import gpu_decode_setting
from clipdex.store import FileRecord, ModelRecord, NewFile, Store
from clipdex.store.catalog import TAKEN_EXIF, TAKEN_MTIME, TAKEN_NO_EXIF, SampledVideo, VideoFrame, VideoSampling
from clipdex.video import (
    DEFAULT_INTERVAL,
    MAX_INTERVAL,
    MIN_INTERVAL,
    VIDEO_EXTENSIONS,
    format_time,
    frame_hash,
    is_video,
)

if TYPE_CHECKING:
    from clipdex.models.encoder import Encoder
    from clipdex.models.gpu_decode import JpegDecoder, JpegJob
    from clipdex.video_sampling import VideoInfo

LOOKAHEAD_BATCHES = 3  # batches decoded ahead of the one being encoded
CPU_BATCH = 16  # ONNX Runtime on 2-16 cores: 8-16 is fastest, larger batches only add latency
GPU_BATCH = 256
DRAFT_FACTOR = 2  # JPEGs decode reduced while both sides stay >= 2x the model's input
WHOLE_READ_BYTES = 32 << 20  # files up to this size are read once (hash, then decode from memory)
HASH_CHUNK = 1 << 20  # larger ones are hashed in chunks and decoded from the file
RETRY_HINT = "failed on an earlier run; use --retry-failed to try again"
VIDEO_THREADS_EACH = 2  # cores one video's sampling keeps busy (libav decodes on threads of its own)
VIDEO_IDLE_S = 1.0  # no frame for this long: the videos sampled to their end are recorded without a full batch


def draft_size(encoder: "Encoder") -> int:
    """The least size JPEGs may be decoded reduced to for ``encoder`` (:func:`draft_of` its
    preprocessing)."""
    return draft_of(encoder.preprocess_config)


def draft_of(cfg: PreprocessConfig) -> int:
    """The least size JPEGs may be decoded reduced to for a model preprocessing as ``cfg`` does:
    both sides stay at least :data:`DRAFT_FACTOR` times the side its transform resizes to
    (before its crop)."""
    return DRAFT_FACTOR * cfg.shorter_side
DATE_BATCH = 1_000  # EXIF dates of photos indexed before are committed this many at a time
# JPEGs decoded on the device wait as their files' bytes (a 24-megapixel photo is 5-10 MB,
# not 150 KB of pixels): a batch is encoded once it holds this many, and the workers read
# at most this much further ahead.
DEVICE_BATCH_BYTES = 512 << 20
DEVICE_LOOKAHEAD_BYTES = 1 << 30

log = logging.getLogger(__name__)


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


GpuDecode = bool | Literal["force"]


@dataclass
class IndexSettings:
    """Tunables of one indexing run."""

    batch_size: int | None = None  # None: 16 on the CPU (ONNX Runtime's best), 256 on a GPU
    workers: int = field(default_factory=default_workers)
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    retry_failed: bool = False
    reduced_decode: bool = True
    # JPEGs decoded on the encoder's device when it is CUDA (True), never (False), or on
    # whatever device it is, the CPU included ("force": the GPU stage, testable anywhere).
    gpu_decode: GpuDecode = field(default_factory=gpu_decode_setting)
    videos: bool = True  # index the videos of the folder too (--no-video: photos only)
    video_interval: float = DEFAULT_INTERVAL  # seconds between sampled frames within a scene

    def __post_init__(self) -> None:
        if not MIN_INTERVAL <= self.video_interval <= MAX_INTERVAL:  # nan fails too
            raise ValueError(f"video_interval must be {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds, "
                             f"not {self.video_interval!r}")


@dataclass(frozen=True)
class Failure:
    """A file that was skipped, and why.

    ``kind`` says when it is tried again: 'transient' (the file could not be
    read) on every run, 'limit' (over --max-megapixels) once the limit is
    raised, 'permanent' (the file itself is bad) only with --retry-failed.
    """

    path: str
    reason: str
    kind: str = "permanent"


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
    retried: int = 0  # files that had failed before and were tried again
    failed: list[Failure] = field(default_factory=list)
    indexed_total: int = 0  # files (photos and videos) indexed under the folder, after the run
    videos_total: int = 0  # the videos among them
    dated: int = 0  # unchanged photos, indexed before EXIF dates were read, given their EXIF date
    seconds: float = 0.0
    encode_seconds: float = 0.0
    precision: str = ""  # what new vectors were computed in (fp32, bf16, int8, fp16)
    precision_note: str = ""  # how it was chosen: --precision auto's reason, or "asked for"
    device_decoded: int = 0  # JPEGs decoded on the encoder's device (the GPU), not by Pillow
    partial: list[Failure] = field(default_factory=list)  # videos indexed up to a cut or damage, and why
    videos: int = 0  # videos sampled in this run (a moved or copied one is counted in ``reused``)
    frames: int = 0  # the moments kept of them (frames with a vector)
    video_seconds: float = 0.0  # their length, in seconds of video
    video_wall_seconds: float = 0.0  # wall time of the video stage (sampling, encoding, storing)

    @property
    def video_realtime(self) -> float:
        """Seconds of video indexed per second of this run's video stage (0 when none)."""
        return self.video_seconds / self.video_wall_seconds if self.video_wall_seconds > 0 else 0.0

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0


@dataclass
class _Prepared:
    """A file after the worker stage: hashed, and decoded unless its vector exists."""

    entry: discover.FileEntry
    size: int
    mtime_ns: int
    content_hash: str | None = None
    pixels: Any = None  # the preprocessed tensor
    jpeg: "JpegJob | None" = None  # a JPEG left for the device to decode (pixels come later)
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    kind: str | None = None  # how a failure is retried (clipdex.store.catalog.FAILURE_KINDS)
    limit: float | None = None  # the --max-megapixels a 'limit' failure was judged by
    taken_at: str | None = None  # its EXIF date, when it has one


@dataclass
class _VideoItem:
    """What a video worker hands the encoder: a frame (its key, and pixels unless its vector
    exists), a video sampled to its end or failed (``kind`` "video"), or the worker's end."""

    kind: Literal["frame", "video", "end"]
    frame_hash: str | None = None
    pixels: Any = None
    entry: discover.FileEntry | None = None
    size: int = 0
    mtime_ns: int = 0
    content_hash: str | None = None
    info: "VideoInfo | None" = None
    sampling: VideoSampling | None = None
    frames: list[VideoFrame] = field(default_factory=list)
    reused: bool = False  # its frames came from a video of the same content, sampled before
    note: str | None = None  # why only the moments before a cut or damage were indexed
    reason: str | None = None
    failure_kind: str | None = None
    limit: float | None = None


class _Stopped(Exception):
    """The run is being interrupted: a worker drops the file it is reading."""


def record_problems(store: Store, model: ModelRecord, problems: Sequence[discover.Problem],
                    report: IndexReport) -> None:
    """Record the entries a walk or listing found unusable (a broken link, a file gone) as
    failed files of ``model``, and in ``report``."""
    if problems:
        store.commit_batch(model, np.zeros((0, model.dim), np.float32), [],
                           [NewFile(path=p.path, size=0, mtime_ns=0, reason=p.reason, raw_path=p.raw_path,
                                    failure_kind=p.kind) for p in problems])
        report.failed.extend(Failure(p.path, p.reason, p.kind) for p in problems)


def remove_gone(store: Store, known: Iterable[str], files: Sequence[discover.FileEntry],
                problems: Sequence[discover.Problem], unreadable_dirs: Sequence[str]) -> int:
    """Drop the files the index holds under a root (``known``) that a complete walk or listing
    no longer found, never under a folder it could not read; returns how many."""
    seen = {f.path for f in files} | {p.path for p in problems}
    blind = tuple(d.rstrip(os.sep) + os.sep for d in unreadable_dirs)
    gone = [p for p in known if p not in seen and not (blind and p.startswith(blind))]
    if gone:
        store.remove_files(gone)
    return len(gone)


def failure_of(error: Exception, max_megapixels: float) -> tuple[str, str, float | None]:
    """(reason, kind, limit) of a file that could not be prepared: why it is skipped, and
    when it is tried again (see :class:`Failure`); ``limit`` is the --max-megapixels a
    'limit' failure was judged by (None for the other kinds)."""
    if isinstance(error, ImageTooLarge):
        return error.reason, "limit", max_megapixels
    if isinstance(error, ImageUnreadable):
        return error.reason, "transient", None
    if isinstance(error, ImageDecodeError):
        return error.reason, "permanent", None
    if isinstance(error, _Stopped):
        return "indexing was interrupted", "transient", None
    if isinstance(error, OSError):  # reading or hashing it
        return f"cannot be read ({error.strerror or error})", "transient", None
    return f"could not be decoded ({type(error).__name__}: {error})", "permanent", None


def decode_for_model(source: BinaryIO | bytes, name: str, preprocess: Callable[[Any], Any], *,
                     max_megapixels: float, draft: int | None) -> tuple[Any, int, int, str | None]:
    """(pixels, width, height, taken_at) of one image file: decoded by Pillow (upright, within
    the megapixel limit, reduced while both sides stay >= ``draft``), then ``preprocess``ed
    (the model's resize and crop); width and height are the file's upright size. Raises what
    :func:`clipdex.decode.load_image` raises (:func:`failure_of` says what it means)."""
    image = load_image(source, name, max_megapixels=max_megapixels, draft_size=draft)
    width, height = image.info.get(ORIGINAL_SIZE, image.size)
    return preprocess(image), int(width), int(height), image.info.get(TAKEN_AT)


def check_folder(root: str | os.PathLike[str]) -> str:
    """The folder's absolute path, or :class:`PhotoFolderError` if it is not one."""
    path = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(path):
        raise PhotoFolderError(discover.display_path(path), "folder does not exist",
                               "Check the path and try again.")
    if not os.path.isdir(path):
        raise PhotoFolderError(discover.display_path(path), "is a file, not a folder",
                               "Pass the folder that holds your photos.")
    return path


def _retry(kind: str | None, judged_by: float | None, limit: float) -> bool:
    """Whether a file that failed (and has not changed since) is worth another try."""
    if kind == "transient":
        return True
    if kind == "limit":
        return judged_by is None or limit > judged_by
    return False  # permanent: only with --retry-failed


def plan_files(files: Iterable[discover.FileEntry], known: Mapping[str, FileRecord],
               embedded: Container[str], settings: IndexSettings,
               report: IndexReport, sampled: Container[str] = frozenset(),
               ) -> tuple[list[discover.FileEntry], list[discover.FileEntry]]:
    """The diff of a run: (files to encode, unchanged files whose EXIF date was never read).

    A file is unchanged when its size and mtime are the ones recorded and its vector
    exists (a video: its content is in ``sampled``, the videos whose frames all have a
    vector, sampled at this run's interval), or it failed before and trying again cannot
    help (see :func:`_retry`);
    ``report`` counts new, changed, retried and unchanged files, and the failures kept.
    The local pipeline and the Ray engine (:mod:`clipdex.cluster`) both start here.
    """
    limit = settings.max_megapixels
    todo: list[discover.FileEntry] = []
    undated: list[discover.FileEntry] = []  # unchanged, but their EXIF was never read
    for entry in files:
        record = known.get(entry.path)
        same_stat = record is not None and (record.size, record.mtime_ns) == (entry.size, entry.mtime_ns)
        if same_stat and record is not None:
            video = is_video(entry.path)
            if record.status == "ok" and record.content_hash in (sampled if video else embedded):
                report.unchanged += 1
                if record.taken_source == TAKEN_MTIME and not video:
                    undated.append(entry)
                continue
            if record.status == "failed" and not (
                    settings.retry_failed
                    or _retry(record.failure_kind, record.failure_limit, limit)):
                report.unchanged += 1
                kind = record.failure_kind or "permanent"
                reason = record.reason or "failed"
                if kind == "permanent":
                    reason = f"{reason} ({RETRY_HINT})"
                report.failed.append(Failure(entry.path, reason, kind))
                continue
        if record is None:
            report.new += 1
        elif not same_stat:
            report.changed += 1
        elif record.status == "failed":
            report.retried += 1
        else:
            report.new += 1  # known, but new to this model
        todo.append(entry)
    return todo, undated


class Indexer:
    """Brings one model's vectors in an index up to date with a photo folder."""

    def __init__(self, encoder: "Encoder", store: Store, settings: IndexSettings | None = None) -> None:
        self.encoder = encoder
        self.store = store
        self.settings = settings or IndexSettings()
        self._stop = threading.Event()
        self._device_decoder: JpegDecoder | None = None  # set per run, when JPEGs go to the device

    @staticmethod
    def scan(root: str | os.PathLike[str], allow_empty: bool = False,
             skip: tuple[str | os.PathLike[str], ...] = (), videos: bool = True) -> discover.Walk:
        """Walk ``root`` for photos (and videos, unless ``videos`` is False), leaving out the
        folders in ``skip`` and every clipdex index folder.

        Raises :class:`PhotoFolderError` if it is missing, is itself an index, or
        holds nothing to index; with ``allow_empty`` (a folder the index already has,
        emptied since) an empty walk is valid and :meth:`run` removes its photos.
        """
        folder = check_folder(root)
        extensions = supported_extensions() + (VIDEO_EXTENSIONS if videos else ())
        walk = discover.walk(folder, extensions, skip=skip)
        if walk.skipped_dirs and walk.skipped_dirs[0] == walk.display_root:
            raise PhotoFolderError(walk.display_root, "is a clipdex index, not a photo folder",
                                   "Pass the folder that holds your photos.")
        if not walk.files and not walk.problems and not allow_empty:
            kinds = "images or videos" if videos else "images"
            raise PhotoFolderError(
                walk.display_root, f"contains no {kinds}",
                f"clipdex indexes {', '.join(e.lstrip('.') for e in extensions)} "
                "files in the folder and its subfolders.")
        return walk

    def run(self, root: str | os.PathLike[str] | discover.Walk, model: ModelRecord,
            progress: Progress | None = None) -> IndexReport:
        """Index ``root`` (a folder, or the result of :meth:`scan`) with ``model``.

        Files that failed before are tried again when that may now succeed: after
        a read error always, after the megapixel limit once it is raised, otherwise
        only with ``retry_failed``. Ctrl-C stops within about a second and keeps
        every batch already committed.
        """
        started = time.perf_counter()
        if isinstance(root, discover.Walk):
            walk = self._without_own_index(root)
        else:
            known_root = discover.display_path(check_folder(root)) in self.store.roots()
            walk = self.scan(root, allow_empty=known_root, skip=(self.store.path,), videos=self.settings.videos)
        folder = walk.display_root
        self.store.add_root(folder)
        report = IndexReport(root=folder, model=model.key)
        known = self.store.files_under(folder)
        if not self.settings.videos:  # --no-video: the videos indexed before stay as they are
            known = {path: record for path, record in known.items() if not is_video(path)}
        embedded = self.store.embedded_hashes(model)
        sampled = self.store.sampled_videos(model, self.settings.video_interval) if self.settings.videos else {}

        todo, undated = plan_files(walk.files, known, embedded, self.settings, report, sampled)
        videos = [entry for entry in todo if is_video(entry.path)]
        if videos:
            todo = [entry for entry in todo if not is_video(entry.path)]
        if todo or videos:
            self.encoder.load()  # before the clock starts: the rate is the pipeline's, not start-up's
        if progress:  # the photos to encode, the videos, then the photos whose EXIF date is read
            progress.start(len(todo) + len(videos) + len(undated))
        encode_started = time.perf_counter()
        model = self._process(todo, model, embedded, report, progress)
        model = self._process_videos(videos, model, embedded, sampled, report, progress)
        report.encode_seconds = time.perf_counter() - encode_started
        report.dated = self._date_undated(undated, progress)

        record_problems(self.store, model, walk.problems, report)
        # Deletions only after a complete walk, and never under a folder we could not read.
        report.removed = remove_gone(self.store, known, walk.files, walk.problems, walk.unreadable_dirs)
        self.store.mark_root_indexed(folder)
        report.indexed_total = self.store.count_under([folder])
        report.videos_total = self.store.count_videos_under([folder])
        report.seconds = time.perf_counter() - started
        report.failed.sort(key=lambda f: f.path)
        return report

    def _without_own_index(self, walk: discover.Walk) -> discover.Walk:
        """``walk`` less anything inside this index's own folder (an index kept inside the
        photo folder must not index its own thumbnails and uploads)."""
        own = discover.folder_identity(str(self.store.path))
        if own is None or own in walk.skip:
            return walk
        own_real = os.path.realpath(self.store.path)
        inside: dict[str, bool] = {}

        def outside(fs_path: str) -> bool:
            parent = os.path.dirname(fs_path)
            if parent not in inside:
                real = os.path.realpath(parent)
                inside[parent] = real == own_real or real.startswith(own_real + os.sep)
            return not inside[parent]

        files = [f for f in walk.files if outside(f.fs_path)]
        problems = [p for p in walk.problems if outside(p.fs_path or p.path)]
        if len(files) == len(walk.files) and len(problems) == len(walk.problems):
            return walk
        return discover.Walk(root=walk.root, files=files, problems=problems,
                             unreadable_dirs=walk.unreadable_dirs,
                             skipped_dirs=[*walk.skipped_dirs, discover.display_path(own_real)],
                             skip=walk.skip | {own})

    def _date_undated(self, entries: list[discover.FileEntry], progress: Progress | None = None) -> int:
        """Read the EXIF date of unchanged photos indexed before dates were read, or imported
        (once: each is then 'exif' or 'mtime-no-exif'). Only the header is read, in the
        decoding threads, and committed every DATE_BATCH photos, each batch then counted by
        ``progress``: a killed or interrupted (Ctrl-C) run keeps what it read, and the next
        reads the rest. Minutes at a million photos: said in the log first. Returns how many
        had an EXIF date."""
        if not entries:
            return 0
        log.info("reading the EXIF dates of %s photos indexed before (once)", f"{len(entries):,}")
        found = 0
        pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="clipdex-dates")
        try:
            for start in range(0, len(entries), DATE_BATCH):
                chunk = entries[start:start + DATE_BATCH]
                read = [(e.path, date) for e, (opened, date) in zip(chunk, pool.map(_header_date, chunk))
                        if opened]
                self.store.set_taken_dates(read)
                found += sum(1 for _, date in read if date)
                if progress:
                    progress.advance(len(chunk))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return found

    # -- the pipeline ---------------------------------------------------------
    def _process(self, todo: list[discover.FileEntry], model: ModelRecord,
                 embedded: dict[str, int], report: IndexReport,
                 progress: Progress | None) -> ModelRecord:
        if not todo:
            return model
        batch_size = self.settings.batch_size or (GPU_BATCH if self.encoder.device != "cpu" else CPU_BATCH)
        window = batch_size * LOOKAHEAD_BATCHES
        draft = draft_size(self.encoder) if self.settings.reduced_decode else None
        self._device_decoder = self._make_device_decoder()
        # JPEGs for the device wait as file bytes: bound those too, not only the count.
        byte_budget = DEVICE_LOOKAHEAD_BYTES if self._device_decoder else None
        pending: list[_Prepared] = []
        to_encode = pending_bytes = 0
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="clipdex-decode")
        try:
            in_flight: deque[tuple[Future[_Prepared], int]] = deque()
            queued_bytes = 0
            entries = iter(todo)
            while True:
                while len(in_flight) < window and (byte_budget is None or queued_bytes < byte_budget):
                    entry = next(entries, None)
                    if entry is None:
                        break
                    in_flight.append((pool.submit(self._prepare, entry, embedded, draft), entry.size))
                    queued_bytes += entry.size
                if not in_flight:
                    break
                future, size = in_flight.popleft()
                queued_bytes -= size
                item = future.result()
                pending.append(item)
                if item.pixels is not None or item.jpeg is not None:
                    to_encode += 1
                if item.jpeg is not None:
                    pending_bytes += len(item.jpeg.data)
                if to_encode >= batch_size or pending_bytes >= DEVICE_BATCH_BYTES:
                    model = self._flush(pending, model, embedded, report, progress)
                    pending, to_encode, pending_bytes = [], 0, 0
            if pending:
                model = self._flush(pending, model, embedded, report, progress)
        except BaseException:
            # Ctrl-C (or a failed commit): drop the queued files, tell the running workers
            # to let go of theirs, and do not wait for them. Committed batches stay.
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return model

    # -- videos -----------------------------------------------------------------
    def _process_videos(self, entries: list[discover.FileEntry], model: ModelRecord, embedded: dict[str, int],
                        sampled: Mapping[str, SampledVideo], report: IndexReport,
                        progress: Progress | None) -> ModelRecord:
        """Sample, encode and record ``entries`` (videos), each as its kept frames.

        Worker threads hash each video and sample its frames (:mod:`clipdex.video_sampling`),
        preprocessed for the model, a few batches ahead of the encoder; frames of several
        videos share batches. A frame whose vector exists (an earlier run killed midway, or
        a copy of the video) is not encoded again, and a video whose content was sampled
        before with all its vectors (a copy, a move) is not decoded at all. A video is
        recorded (:meth:`Store.commit_video`) once all its frames' vectors are committed:
        a kill loses at most the video being sampled, never the index's consistency.
        """
        if not entries:
            return model
        started = time.perf_counter()
        batch_size = self.settings.batch_size or (GPU_BATCH if self.encoder.device != "cpu" else CPU_BATCH)
        draft = draft_size(self.encoder) if self.settings.reduced_decode else None
        results: queue.Queue[_VideoItem] = queue.Queue(maxsize=batch_size * LOOKAHEAD_BATCHES)
        todo: queue.SimpleQueue[discover.FileEntry | None] = queue.SimpleQueue()
        workers = max(1, min(len(entries), self.settings.workers // VIDEO_THREADS_EACH))
        for entry in entries:
            todo.put(entry)
        for _ in range(workers):
            todo.put(None)
        self._stop.clear()
        threads = [threading.Thread(target=self._video_worker, args=(todo, results, embedded, sampled, draft),
                                    name=f"clipdex-video-{n}", daemon=True) for n in range(workers)]
        for thread in threads:
            thread.start()
        hashes: list[str] = []  # frames waiting for the encoder
        pixels: list[Any] = []
        finished: list[_VideoItem] = []  # videos whose frames are all in this batch or before
        running = workers
        try:
            while running:
                try:
                    item: _VideoItem | None = results.get(timeout=VIDEO_IDLE_S)
                except queue.Empty:  # sampling is slow (a long static stretch): do not keep finished videos
                    item = None
                if item is None:
                    pass
                elif item.kind == "frame":
                    assert item.frame_hash is not None
                    if item.pixels is not None and item.frame_hash not in embedded \
                            and item.frame_hash not in hashes:
                        hashes.append(item.frame_hash)
                        pixels.append(item.pixels)
                elif item.kind == "end":
                    running -= 1
                else:
                    finished.append(item)
                if len(pixels) >= batch_size or (finished and (not pixels or item is None)) \
                        or (not running and (pixels or finished)):
                    model = self._flush_frames(hashes, pixels, model, embedded, report)
                    hashes, pixels = [], []
                    for video in finished:
                        self._record_video(video, report, progress)
                    finished = []
        except BaseException:
            self._stop.set()  # the workers let go of their videos within a second
            raise
        finally:
            self._stop.set()
            for thread in threads:
                while thread.is_alive():  # a worker blocked on a full queue: make room until it sees the stop
                    with contextlib.suppress(queue.Empty):
                        results.get_nowait()
                    thread.join(timeout=0.05)
        report.video_wall_seconds += time.perf_counter() - started
        return model

    def _video_worker(self, todo: "queue.SimpleQueue[discover.FileEntry | None]", results: "queue.Queue[_VideoItem]",
                      embedded: dict[str, int], sampled: Mapping[str, SampledVideo], draft: int | None) -> None:
        """Worker thread: the next video's hash and frames, into ``results``; an ``end`` item last."""
        try:
            while not self._stop.is_set():
                entry = todo.get()
                if entry is None:
                    break
                self._sample_video(entry, results, embedded, sampled, draft)
        finally:
            self._put(results, _VideoItem("end"), force=True)

    def _put(self, results: "queue.Queue[_VideoItem]", item: "_VideoItem", force: bool = False) -> None:
        """Put ``item`` into the bounded queue; raise :class:`_Stopped` once the run stops (unless ``force``)."""
        while True:
            if self._stop.is_set() and not force:
                raise _Stopped
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                if force and self._stop.is_set():
                    return

    def _sample_video(self, entry: discover.FileEntry, results: "queue.Queue[_VideoItem]",
                      embedded: dict[str, int], sampled: Mapping[str, SampledVideo], draft: int | None) -> None:
        """Hash, probe and sample one video into ``results``: its frames, then the video itself (done or
        failed). Frames whose vector exists are passed without pixels."""
        from clipdex.video_sampling import probe, sample

        done = _VideoItem("video", entry=entry, size=entry.size, mtime_ns=entry.mtime_ns)
        try:
            with open(entry.fs_path, "rb") as f:
                st = os.fstat(f.fileno())
                done.size, done.mtime_ns = st.st_size, st.st_mtime_ns
                done.content_hash = self._hash_file(f)
            limit = self.settings.max_megapixels
            info = probe(entry.fs_path, max_megapixels=limit)
            done.info = info
            known = sampled.get(done.content_hash)
            if known is not None:  # the same content, sampled before with every vector: no decoding
                done.frames, done.sampling, done.reused = list(known.frames), known.sampling, True
                self._put(results, done)
                return
            interval = self.settings.video_interval
            for frame in sample(entry.fs_path, interval=interval, min_side=draft, stop=self._stop,
                                max_megapixels=limit):
                key = frame_hash(done.content_hash, frame.t)
                done.frames.append(VideoFrame(round(frame.t, 3), key, frame.scene))
                image = None if key in embedded else self.encoder.preprocess(frame.image)
                self._put(results, _VideoItem("frame", frame_hash=key, pixels=image))
            if not done.frames:
                raise ImageDecodeError(entry.path, "holds no frame that could be decoded")
            done.sampling = VideoSampling(duration=info.duration, interval=interval, codec=info.codec, fps=info.fps)
        except _Stopped:
            return
        except VideoError as e:
            if self._stop.is_set():
                return
            if done.frames and done.info is not None:
                # Cut short or damaged after some moments: those are indexed, and the video is
                # reported as partly indexed (not tried again until the file changes).
                done.note = e.reason
                done.sampling = VideoSampling(duration=done.info.duration, interval=self.settings.video_interval,
                                              codec=done.info.codec, fps=done.info.fps)
            else:
                done.reason, done.failure_kind, done.limit = failure_of(e, self.settings.max_megapixels)
        except Exception as e:  # noqa: BLE001  (one bad video is a failure row, never the run's end)
            if self._stop.is_set():
                return
            done.reason, done.failure_kind, done.limit = failure_of(e, self.settings.max_megapixels)
            done.frames = []
        try:
            self._put(results, done)
        except _Stopped:  # the run stops: the video is not recorded, and is sampled again next time
            pass

    def _flush_frames(self, hashes: list[str], pixels: list[Any], model: ModelRecord, embedded: dict[str, int],
                      report: IndexReport) -> ModelRecord:
        """Encode and commit a batch of frames (vectors and embeddings; their rows come with their video)."""
        if not hashes:
            return model
        vectors = self.encoder.encode_images(self._stack(pixels))
        first_row = model.rows
        model = self.store.commit_batch(model, vectors, hashes, [], precision=getattr(self.encoder, "precision", None))
        for i, h in enumerate(hashes):
            embedded[h] = first_row + i
        report.encoded += len(hashes)
        return model

    def _record_video(self, video: "_VideoItem", report: IndexReport, progress: Progress | None) -> None:
        """Record a video whose frames' vectors are all committed (or its failure)."""
        entry = video.entry
        assert entry is not None
        info = video.info
        if video.reason:
            row = NewFile(entry.path, video.size, video.mtime_ns, video.content_hash, reason=video.reason,
                          raw_path=entry.raw_path, failure_kind=video.failure_kind or "permanent",
                          failure_limit=video.limit)
            report.failed.append(Failure(entry.path, video.reason, video.failure_kind or "permanent"))
        else:
            assert info is not None and video.sampling is not None
            row = NewFile(entry.path, video.size, video.mtime_ns, video.content_hash, info.width, info.height,
                          raw_path=entry.raw_path, taken_at=info.taken_at,
                          taken_source=TAKEN_EXIF if info.taken_at else TAKEN_NO_EXIF)
            if video.note:
                report.partial.append(Failure(entry.path, f"{video.note}; its {len(video.frames)} moments "
                                              f"up to {format_time(video.frames[-1].t)} are indexed", "permanent"))
            if video.reused:  # moved, renamed or copied: its frames' vectors taken, nothing decoded
                report.reused += 1
            else:
                report.videos += 1
                report.frames += len(video.frames)
                report.video_seconds += video.sampling.duration
        self.store.commit_video(row, video.frames, None if video.reason else video.sampling)
        if progress:
            progress.advance(1)

    def _make_device_decoder(self) -> "JpegDecoder | None":
        """The decoder that takes JPEGs to the encoder's device, when the settings and the
        encoder allow it: a CUDA device (any device with gpu_decode="force"), and a
        preprocessing it reproduces (else Pillow does every file, as on the CPU)."""
        mode = self.settings.gpu_decode
        device = str(getattr(self.encoder, "device", "") or "")
        if not mode or not device or (mode != "force" and not device.startswith("cuda")):
            return None
        cfg = getattr(self.encoder, "preprocess_config", None)
        from clipdex.models.gpu_decode import JpegDecoder, supported

        if not isinstance(cfg, PreprocessConfig) or not supported(cfg):
            log.info("JPEGs are decoded on the CPU: the model's preprocessing (%s) has no device version", cfg)
            return None
        return JpegDecoder(cfg, device)

    def _prepare(self, entry: discover.FileEntry, embedded: dict[str, int],
                 draft: int | None) -> _Prepared:
        """Worker: hash, and (unless a vector exists) check the header, decode and preprocess.

        A file of up to WHOLE_READ_BYTES is read once. A larger one is read only
        after its header says it is an image within the megapixel limit, then
        hashed in chunks and decoded from disk: memory per worker is bounded by
        the image's own size, not the file's. With a device decoder, a JPEG it can
        decode is only header-checked here (size, limit, orientation, date): its
        bytes go to the device with the batch.
        """
        limit = self.settings.max_megapixels
        try:
            with open(entry.fs_path, "rb") as f:
                st = os.fstat(f.fileno())  # the stat of what is read (it may have changed since the walk)
                item = _Prepared(entry, size=st.st_size, mtime_ns=st.st_mtime_ns)
                try:
                    source: BinaryIO
                    if st.st_size <= WHOLE_READ_BYTES:
                        # Read once and hash; a file whose vector exists (moved, renamed,
                        # a copy) needs no decoding, and load_image checks the header itself.
                        data = f.read()
                        item.content_hash = hashlib.sha256(data).hexdigest()
                        source = io.BytesIO(data)
                    else:
                        # A large file is hashed only once its header says it is an image
                        # within the limit: a 6 GB file named .jpg costs a few reads.
                        check_image(f, entry.path, max_megapixels=limit)
                        f.seek(0)
                        item.content_hash = self._hash_file(f)
                        f.seek(0)
                        source = f
                    if item.content_hash in embedded:
                        # No decoding: its date comes from the EXIF in the header alone.
                        item.taken_at = read_taken_at(source, entry.path)
                        return item
                    if self._device_decoder is not None and isinstance(source, io.BytesIO):
                        header = read_jpeg_header(source, entry.path, max_megapixels=limit)
                        if header is not None:
                            from clipdex.models.gpu_decode import JpegJob

                            # A bytearray: the decoder wraps it as a tensor without a copy.
                            item.jpeg = JpegJob(bytearray(data), header.width,
                                                header.height, header.orientation)
                            item.width, item.height = header.upright_size
                            item.taken_at = header.taken_at
                            return item
                        source.seek(0)
                    item.pixels, item.width, item.height, item.taken_at = decode_for_model(
                        source, entry.path, self.encoder.preprocess, max_megapixels=limit, draft=draft)
                    return item
                except Exception as e:  # noqa: BLE001  (a decoder bug must not take the batch down)
                    self._record_failure(item, e)
                item.pixels = None
                return item
        except OSError as e:  # opening it: gone since the walk, permissions, a NAS hiccup
            return _Prepared(entry, size=entry.size, mtime_ns=entry.mtime_ns,
                             reason=f"cannot be read ({e.strerror or e})", kind="transient")

    def _record_failure(self, item: _Prepared, error: Exception) -> None:
        """Why ``item`` is skipped, and when it is tried again (see :class:`Failure`)."""
        item.reason, item.kind, item.limit = failure_of(error, self.settings.max_megapixels)

    def _hash_file(self, f: io.BufferedReader) -> str:
        """SHA-256 of an open file, read in HASH_CHUNK pieces (and dropped on Ctrl-C)."""
        digest = hashlib.sha256()
        buffer = bytearray(HASH_CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            if self._stop.is_set():
                raise _Stopped
            digest.update(view[:n])
        return digest.hexdigest()

    def _flush(self, items: list[_Prepared], model: ModelRecord, embedded: dict[str, int],
               report: IndexReport, progress: Progress | None) -> ModelRecord:
        report.device_decoded += self._decode_jpegs(items, embedded)
        batch_hashes: list[str] = []
        batch_set: set[str] = set()  # the same hashes, for membership tests
        batch_pixels = []
        files: list[NewFile] = []
        sizes = self.store.sizes_of_hashes(  # photos reused without decoding: their recorded size
            i.content_hash for i in items if not i.reason and i.width is None and i.content_hash in embedded)
        for item in items:
            e = item.entry
            if item.reason:
                files.append(NewFile(e.path, item.size, item.mtime_ns, item.content_hash,
                                     reason=item.reason, raw_path=e.raw_path,
                                     failure_kind=item.kind or "permanent", failure_limit=item.limit))
                report.failed.append(Failure(e.path, item.reason, item.kind or "permanent"))
                continue
            assert item.content_hash is not None
            if item.content_hash in embedded or item.content_hash in batch_set:
                width, height = item.width, item.height
                if width is None:
                    width, height = sizes.get(item.content_hash, (None, None))
                files.append(NewFile(e.path, item.size, item.mtime_ns, item.content_hash, width, height,
                                     raw_path=e.raw_path, taken_at=item.taken_at,
                                     taken_source=TAKEN_EXIF if item.taken_at else TAKEN_NO_EXIF))
                report.reused += 1
                continue
            batch_hashes.append(item.content_hash)
            batch_set.add(item.content_hash)
            batch_pixels.append(item.pixels)
            files.append(NewFile(e.path, item.size, item.mtime_ns, item.content_hash, item.width,
                                 item.height, raw_path=e.raw_path, taken_at=item.taken_at,
                                     taken_source=TAKEN_EXIF if item.taken_at else TAKEN_NO_EXIF))
        vectors = (self.encoder.encode_images(self._stack(batch_pixels)) if batch_pixels
                   else np.zeros((0, model.dim), np.float32))
        first_row = model.rows
        model = self.store.commit_batch(model, vectors, batch_hashes, files,
                                        precision=getattr(self.encoder, "precision", None))
        for i, h in enumerate(batch_hashes):
            embedded[h] = first_row + i
        report.encoded += len(batch_hashes)
        if progress:
            progress.advance(len(items))
        return model

    def _decode_jpegs(self, items: list[_Prepared], embedded: dict[str, int]) -> int:
        """Decode the batch's JPEGs left for the device, in one call, into their items'
        pixels (rows of one device tensor); returns how many the device decoded.

        A file the device rejects is decoded by Pillow here; one Pillow rejects too
        becomes the item's failure. A copy of a file (same hash) shares its result.
        A failure of the device stage as a whole (a driver error) is logged and the
        run goes on with Pillow for every file."""
        waiting = [i for i in items if i.jpeg is not None and not i.reason]
        if not waiting:
            return 0
        first: dict[str | None, _Prepared] = {}
        for item in waiting:
            if item.content_hash not in embedded:
                first.setdefault(item.content_hash, item)
        unique = list(first.values())
        rejected: dict[int, str] = {}
        decoded = 0
        decoder = self._device_decoder
        if unique and decoder is not None:
            try:
                pixels, rejected = decoder.decode([i.jpeg for i in unique if i.jpeg is not None])
            except Exception as e:  # noqa: BLE001  (the GPU stage failing costs speed, never the run)
                log.warning("decoding JPEGs on %s failed (%s: %s); Pillow decodes them for the rest "
                            "of this run", decoder.device, type(e).__name__, e)
                self._device_decoder = None
                rejected = {n: "device decoding failed" for n in range(len(unique))}
            else:
                for n, item in enumerate(unique):
                    if n not in rejected:
                        item.pixels = pixels[n]
                        decoded += 1
        elif unique:
            rejected = {n: "device decoding is off" for n in range(len(unique))}
        for n, reason in rejected.items():
            self._decode_on_cpu(unique[n], reason)
        for item in waiting:
            source = first.get(item.content_hash)
            if source is not None and source is not item:
                item.pixels, item.reason = source.pixels, source.reason
                item.kind, item.limit = source.kind, source.limit
            item.jpeg = None
        return decoded

    def _decode_on_cpu(self, item: _Prepared, device_reason: str) -> None:
        """A JPEG the device did not decode, decoded by Pillow as the workers would have."""
        assert item.jpeg is not None
        log.debug("%s: decoded by Pillow (the device decoder said: %s)", item.entry.path, device_reason)
        draft = draft_size(self.encoder) if self.settings.reduced_decode else None
        try:
            image = load_image(bytes(item.jpeg.data), item.entry.path,
                               max_megapixels=self.settings.max_megapixels, draft_size=draft)
            item.pixels = self.encoder.preprocess(image)
        except Exception as e:  # noqa: BLE001  (one bad file is a failure row, never the batch's end)
            self._record_failure(item, e)
            item.pixels = None

    def _stack(self, pixels: list[Any]) -> Any:
        """One batch for the encoder from its items' pixels: numpy arrays (decoded by
        Pillow) and rows of a device tensor (decoded on the device). An encoder that takes
        device tensors (``device_tensors``: the torch runtimes) gets it as it is; another
        (ONNX on the CPU, gpu_decode="force") gets numpy."""
        if not any(type(p).__module__.startswith("torch") for p in pixels):
            return np.stack(pixels)
        import torch

        device = next(p.device for p in pixels if isinstance(p, torch.Tensor))
        batch = torch.stack([p if isinstance(p, torch.Tensor) else torch.tensor(p, device=device)
                             for p in pixels])
        if getattr(self.encoder, "device_tensors", False):
            return batch
        return batch.cpu().numpy()


def _header_date(entry: discover.FileEntry) -> tuple[bool, str | None]:
    """(opened, EXIF date or None) of a file, reading its header only. One that cannot be
    opened stays undated and is tried again on the next run."""
    try:
        with open(entry.fs_path, "rb") as f:
            return True, read_taken_at(f, entry.path)
    except OSError:
        return False, None
