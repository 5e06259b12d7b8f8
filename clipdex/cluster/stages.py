"""What Ray's workers run: prepare (CPU tasks), encode (an actor pool), write shards.

Each stage takes and returns a batch as Ray Data hands it over with
``batch_format="numpy"``: a dict of equally long numpy arrays, one per column.
The functions are plain Python, importable and testable without Ray; the
engine (:mod:`clipdex.cluster.engine`) wires them into a pipeline.

Preparing is local indexing's own: the file is read once and hashed (a large
one is checked as an image first, then hashed in chunks and decoded from the
file), decoded upright by Pillow within the megapixel limit, reduced while both
sides stay twice the model's input, and resized and cropped to 8-bit pixels
(:func:`clipdex.indexer.decode_for_model`, :func:`clipdex.models.preprocess.fit`):
a quarter of float32's bytes through Ray's object store. The actor normalises
and encodes them (in the exported graph, or on the GPU). A file that cannot be
prepared is a row with a reason (:func:`clipdex.indexer.failure_of`), whose
pixels and vector are zeros.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

import numpy as np

from clipdex.cluster import shards
from clipdex.decode import check_image, read_taken_at
from clipdex.indexer import HASH_CHUNK, WHOLE_READ_BYTES, decode_for_model, failure_of
from clipdex.models.preprocess import PreprocessConfig, fit

if TYPE_CHECKING:
    from clipdex.models.encoder import Encoder

Batch = dict[str, np.ndarray]

# The columns of the rows the driver sends (one per file to encode): path is the catalog's
# (a display path or a URI), fs_path what is opened, raw_path a local path's exact bytes
# where they are not UTF-8 (else empty), size and mtime_ns the listing's.
INPUT_COLUMNS = ("path", "fs_path", "raw_path", "size", "mtime_ns")
_HEX = re.compile(r"[0-9a-f]{64}")


def held_prefixes(hashes: Iterable[str]) -> np.ndarray:
    """The sorted first 64 bits of the real content hashes (sha256, hex) among ``hashes``: what
    the decode tasks look a file's hash up in (8 bytes a vector: 800 MB at 100 million). A
    prefix found that is not the file's (one in ~10^11 at 100 million) costs nothing: the index,
    adopting the row, finds the full hash missing and the file is sent again."""
    prefixes = [int(h[:16], 16) for h in hashes if len(h) == 64 and _HEX.fullmatch(h)]
    return np.unique(np.array(prefixes, dtype=np.uint64))


def _is_held(held: np.ndarray | None, sha256: str) -> bool:
    if held is None or not len(held):
        return False
    prefix = np.uint64(int(sha256[:16], 16))
    at = int(np.searchsorted(held, prefix))
    return at < len(held) and held[at] == prefix


def prepare_batch(batch: Batch, *, preprocess: dict[str, Any], max_megapixels: float,
                  draft: int | None, held: np.ndarray | None = None) -> Batch:
    """CPU task: read, hash, decode and preprocess a batch of files.

    A file whose content hash the index holds a vector of (``held``:
    :func:`held_prefixes`) is not decoded, as local indexing does not decode
    it: its row says 'reused', with its EXIF date read from the header.
    ``preprocess`` is the model's :meth:`PreprocessConfig.to_meta`. Returns the
    batch with sha256, pixels (N, S, S, 3) uint8, upright width and height (-1
    unknown), taken_at, taken_source, and per row its status and, for a failure,
    error_message, failure_kind and failure_limit (NaN where none); a text column
    holds "" where it has no value.
    """
    cfg = PreprocessConfig.from_meta(preprocess)
    n = len(batch["path"])
    side = cfg.image_size
    pixels = np.zeros((n, side, side, 3), np.uint8)
    # Text columns hold "" where a value is missing: a column of None alone would reach Arrow
    # as nulls of no type, which Ray cannot concatenate with a block's strings.
    out: dict[str, list[str]] = {name: [""] * n for name in (
        "sha256", "taken_at", "taken_source", "status", "error_message", "failure_kind")}
    sizes = np.asarray(batch["size"], np.int64).copy()
    mtimes = np.asarray(batch["mtime_ns"], np.int64).copy()
    widths = np.full(n, -1, np.int32)
    heights = np.full(n, -1, np.int32)
    limits = np.full(n, np.nan, np.float64)
    for i in range(n):
        raw = batch["raw_path"][i]
        target = os.fsdecode(bytes(raw)) if raw is not None and len(raw) else str(batch["fs_path"][i])
        name = str(batch["path"][i])
        try:
            with _open(target) as (f, size, mtime_ns):
                sizes[i], mtimes[i] = size, (mtime_ns if mtime_ns is not None else mtimes[i])
                source: BinaryIO | bytes
                if size <= WHOLE_READ_BYTES:
                    data = f.read()
                    out["sha256"][i] = hashlib.sha256(data).hexdigest()
                    source = data
                else:  # a large file: an image within the limit first, then hashed in chunks
                    check_image(f, name, max_megapixels=max_megapixels)  # type: ignore[arg-type]
                    f.seek(0)
                    out["sha256"][i] = _hash_stream(f)
                    f.seek(0)
                    source = cast(BinaryIO, f)
                if _is_held(held, out["sha256"][i]):  # moved, renamed, a copy: its vector exists
                    taken = read_taken_at(io.BytesIO(source) if isinstance(source, bytes) else source, name)
                    out["taken_at"][i] = taken or ""
                    out["taken_source"][i] = "exif" if taken else "mtime-no-exif"
                    out["status"][i] = shards.STATUS_REUSED
                    continue
                crop, widths[i], heights[i], taken = decode_for_model(
                    source, name, lambda image: fit(image, cfg), max_megapixels=max_megapixels, draft=draft)
            pixels[i] = crop
            out["taken_at"][i] = taken or ""
            out["taken_source"][i] = "exif" if taken else "mtime-no-exif"
            out["status"][i] = shards.STATUS_OK
        except Exception as e:  # noqa: BLE001  (one bad file is a row with a reason, never the job's end)
            reason, kind, limit = failure_of(e, max_megapixels)
            out["status"][i], out["error_message"][i], out["failure_kind"][i] = shards.STATUS_FAILED, reason, kind
            limits[i] = np.nan if limit is None else limit
    result = {k: batch[k] for k in ("path", "raw_path")}
    result.update({k: np.array(v, dtype=object) for k, v in out.items()})  # (str: no fixed width)
    result.update(size=sizes, mtime_ns=mtimes, width=widths, height=heights, failure_limit=limits, pixels=pixels)
    return result


@contextlib.contextmanager
def _open(target: str) -> Iterator[tuple[IO[bytes], int, int | None]]:
    """(file, size, mtime_ns) of a local path or a URI; the local file's own fstat, as local
    indexing takes it (it may have changed since the listing). A URI's file system that this
    worker cannot reach raises :class:`OSError`: a transient failure, tried again next run."""
    from clipdex.cluster.listing import open_stream

    with open_stream(target) as f:  # (a URI's is pyarrow's random-access file: it knows its size)
        if "://" not in target:
            st = os.fstat(f.fileno())
            yield f, st.st_size, st.st_mtime_ns
        else:
            yield f, int(f.size()), None  # type: ignore[attr-defined]


def _hash_stream(f: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


class EncodeActor:
    """Actor: one model load, then vectors for every batch of prepared files.

    ``spec_json`` is :meth:`ModelSpec.to_json`; ``device`` 'cpu' (ONNX Runtime,
    ``threads`` of it: the CPUs Ray gives the actor) or 'cuda' (torch, the GPU
    Ray gives it); ``precision`` a concrete one (fp32, fp16, bf16, int8).
    ``env`` sets clipdex's variables (CLIPDEX_HOME: where exports are cached) in
    the actor's process before the model is built.
    """

    def __init__(self, spec_json: str, device: str, precision: str, threads: int | None = None,
                 env: dict[str, str] | None = None, probe: np.ndarray | None = None) -> None:
        from clipdex.models.factory import make_encoder
        from clipdex.models.spec import ModelSpec

        os.environ.update(env or {})
        encoder = make_encoder(ModelSpec.from_json(spec_json), device=device, precision=precision)
        if threads and hasattr(encoder, "threads"):
            encoder.threads = threads
        encoder.load()
        if probe is not None:
            _check_probe(encoder, probe)
        self.encoder: Encoder = encoder

    def __call__(self, batch: Batch) -> Batch:
        ok = np.asarray(batch["status"] == shards.STATUS_OK)
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.encode_images(np.ascontiguousarray(batch["pixels"][ok]))
        result = {k: v for k, v in batch.items() if k != "pixels"}
        result["vector"] = vectors
        return result


def _check_probe(encoder: "Encoder", probe: np.ndarray) -> None:
    """:class:`ModelError` unless this worker's model gives the driver's vector for clipdex's
    probe image (:mod:`clipdex.models.probe`): a node whose weights file at the same path holds
    other weights would otherwise write vectors the index cannot compare with its own."""
    from clipdex.errors import ModelError
    from clipdex.models import probe as probes

    fresh = probes.probe_vectors(encoder, [probes.IMAGE])
    cosine = probes.min_cosine(probe, fresh)
    if cosine < probes.MIN_PROBE_COSINE:
        import socket

        raise ModelError(f"the model on Ray worker {socket.gethostname()} is not the driver's: its vector for "
                         f"clipdex's probe image agrees with the driver's only to cosine {cosine:.4f}. Give every "
                         f"node the same weights ({encoder.spec.name}) at the same path, or the same hub cache.")


def write_batch(batch: Batch, *, out: str, run: int) -> Batch:
    """Task: write a batch of encoded files as one shard of ``out`` (numbered for ``run`` and
    its files: Ray's retry of the batch writes the same shard); returns one row that says
    which shard and how many files."""
    import pyarrow as pa

    n = len(batch["path"])
    raw = [bytes(r) if r is not None and len(r) else None for r in batch["raw_path"]]
    limits = np.asarray(batch["failure_limit"], np.float64)
    def text(name: str) -> list[str | None]:
        return [str(v) or None for v in batch[name]]

    columns = {
        "image_path": [str(p) for p in batch["path"]],
        "raw_path": raw,
        "sha256": text("sha256"),
        "size": np.asarray(batch["size"], np.int64),
        "mtime": pa.array(np.asarray(batch["mtime_ns"], np.int64), pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
        "width": [int(w) if w >= 0 else None for w in batch["width"]],
        "height": [int(h) if h >= 0 else None for h in batch["height"]],
        "taken_at": text("taken_at"),
        "taken_source": text("taken_source"),
        "status": text("status"),
        "error_message": text("error_message"),
        "failure_kind": text("failure_kind"),
        "failure_limit": [None if np.isnan(v) else float(v) for v in limits],
    }
    table = pa.Table.from_pydict(columns, schema=shards.schema())
    _, metadata_name = shards.write_shard(out, np.asarray(batch["vector"]), table, run=run)
    return {"shard": np.array([metadata_name]), "files": np.array([n])}
