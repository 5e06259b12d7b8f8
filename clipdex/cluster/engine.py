"""The driver of ``clipdex index SOURCE --engine ray``.

1. List SOURCE (:mod:`clipdex.cluster.listing`) and diff it against the index
   as local indexing does (:func:`clipdex.indexer.plan_files`): only new,
   changed and retryable files are sent.
2. Adopt the shards an earlier run left in the output folder (a driver killed
   mid-run), so those files are not sent again.
3. Run a Ray Data pipeline over the rest: prepare in CPU tasks, encode in an
   actor pool, write shards (:mod:`clipdex.cluster.stages`). Ray retries the
   batches of a task or actor that dies; shards arrive as the run streams.
4. Adopt the new shards as they come (every :data:`ADOPT_EVERY_S` seconds and
   at the end) through :func:`clipdex.interchange.import_embeddings`, the code
   of ``clipdex import``; record the listing's problems, drop files gone from a
   folder or prefix, and bring the approximate search index up to date.

The index's writer lock is held from the diff to the end, as local indexing
holds it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.cluster import shards
from clipdex.cluster.stages import held_prefixes
from clipdex.errors import ClipdexError, ModelError, first_line
from clipdex.indexer import (
    Failure,
    IndexReport,
    IndexSettings,
    Progress,
    draft_of,
    plan_files,
    record_problems,
    remove_gone,
)
from clipdex.models import probe as probes
from clipdex.settings import worker_environment

if TYPE_CHECKING:
    import pyarrow as pa

    from clipdex.cluster.listing import Listing
    from clipdex.index import Index
    from clipdex.interchange import ImportReport
    from clipdex.models.encoder import Encoder
    from clipdex.search.base import BuildProgress

log = logging.getLogger(__name__)
_WORKER_ERROR = re.compile(r"clipdex\.errors\.\w+: (.+)")  # a clipdex error raised on a worker, in Ray's text

RAY_INSTALL = "pip install 'clipdex[ray]'"
ADOPT_EVERY_S = 30.0  # new shards are adopted into the index this often while a run streams
PREPARE_BATCH = 16  # files per call of the prepare stage (a CPU task decodes them one by one)
CPU_ENCODE_BATCH = 16  # images per forward pass on a CPU worker (ONNX Runtime's best, as locally)
GPU_ENCODE_BATCH = 256
MIN_SHARD_ROWS = 64  # a shard holds at least this many files (the last one of a run may hold fewer) ...
MAX_SHARD_ROWS = 10_000  # ... and at most this many (10 MB of float16 vectors at 512-d)
SHARDS_PER_RUN = 50  # ... aiming at this many shards in a small run: progress and resumption in steps of 2 %
DEFAULT_OUT = "ray-shards"  # the output folder inside the index when a local run is given none
BLOCKS_PER_CPU = 4  # input blocks per CPU of the cluster: decode tasks spread, and stragglers stay short
MAX_BLOCK_ROWS = 1024  # ... at most this many files a block (its crops: 150 MB at 224 px)
PREPARE_MEMORY = 256 << 20  # bytes a decode task reserves (a 24-megapixel photo decodes to 72 MB, reduced less)
# A shard writer mostly waits on the disk or the network: it holds no CPU, so that it never
# waits for the decode tasks to finish (which would hold every encoded batch in the object store).
WRITE_CPUS = 0


@dataclass
class RayOptions:
    """How a Ray run uses the cluster.

    ``address`` None starts Ray on this machine (local mode); 'auto' joins the cluster this
    machine belongs to; 'ray://host:10001' connects to a remote one through Ray Client.
    ``workers`` is the number of encoder actors (default: one per GPU of the cluster with
    ``gpus_per_worker``, else one); ``cpus_per_worker`` the CPUs an encoder actor holds on
    a CPU-only worker (its ONNX Runtime threads; default 1 for Ray's accounting, with as
    many threads as the machine has). ``out`` is where shards are written (a folder every
    worker can write and this machine can read, or an object-store URI); default a folder
    inside the index, for local mode only.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    out: str | None = None
    shard_rows: int | None = None  # files per shard (default: by the run's size, 64 to 10,000)


@dataclass(frozen=True)
class _Job:
    """What every worker of a run is given: the model (its spec, preprocessing, device and
    precision), where shards go, the content the index holds, and the driver's probe vector."""

    spec_json: str
    preprocess: dict[str, Any]
    draft: int  # the least size JPEGs are decoded reduced to (clipdex.indexer.draft_of)
    device: str
    precision: str
    out: str
    held: np.ndarray
    probe: np.ndarray


@dataclass
class RayIndexReport(IndexReport):
    """What a Ray run did: :class:`IndexReport`'s counts, and the engine's own."""

    engine: str = "ray"
    source_kind: str = ""  # folder, list or prefix
    out: str = ""
    shards_written: int = 0
    resumed: int = 0  # files whose shards an earlier (killed) run wrote, adopted now
    workers: int = 0
    startup_seconds: float = 0.0  # from the pipeline's start to its first shard (Ray, actors, model loads)
    steady_images_per_second: float = 0.0  # files/s after the first shard (0: one shard only)


def require_ray() -> None:
    """:class:`ClipdexError` naming the extra unless Ray (with Ray Data) and pyarrow are installed."""
    from clipdex.models.optional import installed

    missing = [name for name in ("ray", "pyarrow") if not installed(name)]
    if missing:
        raise ClipdexError(f"--engine ray needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                           f"not installed. Install them with `{RAY_INSTALL}`, or index on this machine "
                           "without --engine.")


def index_on_ray(index: "Index", source: str, *, options: RayOptions | None = None,
                 settings: IndexSettings | None = None, progress: Progress | None = None,
                 search_progress: "BuildProgress | None" = None, allow_new_model: bool = False,
                 wait: bool = False, storage: str | None = None) -> RayIndexReport:
    """Index ``source`` (a folder, a list of paths or URIs, or an object-store prefix) on Ray.

    The same files are sent and the same vectors result as with :meth:`Index.add` on the
    same model and precision; see the module's docstring for the steps.
    """
    require_ray()
    from clipdex.cluster.listing import list_source

    options = options or RayOptions()
    settings = settings or IndexSettings()
    started = time.perf_counter()
    index.store.require_writable()
    source = _local_source(source)
    known_root = _normalised_root(source) in index.store.roots()
    listing = list_source(source, skip=(str(index.path),), allow_empty=known_root)
    spec = index.spec()
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    precision = _precision(index, device)
    from clipdex.index import vector_key

    key = vector_key(spec, precision)
    index._check_model(key, allow_new_model, spec.name)
    out = _output(index, options, key)
    query_encoder = _driver_encoder(index)
    cfg = query_encoder.preprocess_config
    if not cfg.supported:
        raise ModelError(f"{spec.name} preprocesses its photos in a way clipdex's decode tasks do not reproduce "
                         f"({cfg.resize_mode}, {cfg.interpolation}); index it without --engine ray.")
    _claim_output(out, spec.key, spec.name, query_encoder.dim, precision, listing.source)
    store = index.store
    report = RayIndexReport(root=listing.source if listing.kind == "list" else listing.root, model=key,
                            source_kind=listing.kind, out=out)
    store.acquire_lock(wait=wait)
    try:
        for root in listing.roots:
            store.add_root(root, kind="folder" if listing.kind == "folder" else "import")
        adopt = _Adopter(index, out, listing.roots, allow_new_model, storage)
        _drop_half_shards(out)
        before = adopt()  # an earlier run's shards: those files are not sent again
        report.resumed = before.imported + before.failed if before is not None else 0
        resumed_vectors, resumed_reused = adopt.vectors_added, adopt.reused
        record = store.get_model(key)
        if record is not None:
            index._probed(record, query_encoder)
        probe = probes.probe_vectors(query_encoder, [probes.IMAGE])  # every actor's model is checked against it
        known = _known_files(index, listing.roots)
        embedded = store.embedded_hashes(record) if record is not None else {}
        todo, _undated = plan_files(listing.files, known, embedded, settings, report)
        if todo:
            job = _Job(spec.to_json(), cfg.to_meta(), draft_of(cfg), device, precision, out,
                       held_prefixes(embedded), probe)
            written, report.encode_seconds = _run_pipeline(todo, job, options, settings, adopt, progress, report)
            report.shards_written = len(written)
            adopt()
            adopt.check_seen(written)
        else:
            adopt()
        record = store.get_model(key)
        if record is not None:
            index._probed(record, query_encoder)  # a model new to the index: its probe, as local indexing records
        _record_problems(index, listing, key, report)
        if listing.complete:
            report.removed = remove_gone(store, known, listing.files, listing.problems, listing.unreadable_dirs)
        for root in listing.roots:
            store.mark_root_indexed(root)
        _collect_failures(index, todo, report)
        report.reused = adopt.reused - resumed_reused
        report.encoded = adopt.vectors_added - resumed_vectors
        report.indexed_total = store.count_under(listing.roots)
        report.precision, report.precision_note = precision, _precision_note(index, device)
        index._refresh_search(search_progress)
    finally:
        store.release_lock()
        index._searchable = None
    if options.out is None:
        shutil.rmtree(out, ignore_errors=True)  # its shards are in the index now
        with contextlib.suppress(OSError):
            Path(out).parent.rmdir()  # (empty unless another model's run is under way)
    else:
        adopt.forget_mirror()
    report.seconds = time.perf_counter() - started
    report.failed.sort(key=lambda f: f.path)
    return report


def _local_source(source: str) -> str:
    """A ``file://`` URI of this machine as its path: the folder (or list) it names is local, and
    indexed under the same names as ``clipdex index /that/folder`` (not twice, as two roots)."""
    from urllib.parse import unquote, urlsplit

    if not source.lower().startswith("file:"):
        return source
    parts = urlsplit(source)
    if parts.netloc not in ("", "localhost") or parts.query:
        return source
    return unquote(parts.path, errors="surrogateescape") or "/"


def _normalised_root(source: str) -> str:
    """``source`` as the index records a root: a folder's display path, a URI normalised."""
    from clipdex.cluster.listing import is_uri, normalise_uri
    from clipdex.discover import display_path

    if is_uri(source):
        return normalise_uri(source).split("?", 1)[0].rstrip("/")  # (roots keep no ?options)
    return display_path(os.path.abspath(os.path.expanduser(source)))


def _precision(index: "Index", device: str) -> str:
    """The precision the workers compute in: the one asked for, else (auto) fp32 on CPU
    workers and fp16 on GPU workers. Auto does not measure here: the workers' processors
    are not this machine's."""
    from clipdex.index import _default_precision, _precision_source
    from clipdex.models.precision import AUTO

    asked = index.precision or _default_precision()
    if asked == AUTO:
        return "fp16" if device == "cuda" else "fp32"
    if asked == "int8":
        raise ClipdexError(f"{_precision_source(index.precision, asked)}: --engine ray computes fp32, fp16 or bf16 "
                           "vectors; int8 vectors (a set of their own) are computed by local indexing. Run without "
                           "--engine ray, or ask for fp32.")
    return asked


def _precision_note(index: "Index", device: str) -> str:
    from clipdex.index import _default_precision, _precision_source
    from clipdex.models.precision import AUTO

    asked = index.precision or _default_precision()
    if asked != AUTO:
        return f"asked for ({_precision_source(index.precision, asked)})"
    return f"auto on Ray: {'fp16 on GPU workers' if device == 'cuda' else 'fp32 on CPU workers'}"


def _output(index: "Index", options: RayOptions, key: str) -> str:
    """Where the shards go: ``--out``, else (local mode only) a folder inside the index."""
    if options.out:
        return options.out if "://" in options.out else os.path.abspath(os.path.expanduser(options.out))
    if options.address:
        raise ClipdexError(f"--address {options.address}: pass --out, a folder every worker can write and this "
                           "machine can read (a shared file system) or a bucket (s3://…, gs://…): the workers "
                           "write their shards there.")
    from clipdex.models.onnx_export import cache_slug

    return str(index.path / DEFAULT_OUT / cache_slug(key))


def _driver_encoder(index: "Index") -> "Encoder":
    """The model on this machine: its preprocessing tells the decode tasks what to do, and
    its probe checks (or records) the model's identity in the index."""
    from clipdex.models.factory import make_encoder

    encoder = make_encoder(index.spec(), device="cpu", precision="fp32", for_queries=True)
    encoder.load()
    return encoder


def _claim_output(out: str, key: str, name: str, dim: int, precision: str, source: str) -> None:
    """Write the output folder's manifest, or refuse a folder that holds the shards of another
    model, precision or source (their files would be recorded as this run's)."""
    import pyarrow.fs as pafs

    fs, base = shards.filesystem(out)
    try:
        kind = fs.get_file_info(base).type
        if kind == pafs.FileType.File:
            raise ClipdexError(f"--out {out} is a file, not a folder: pass a folder (or a bucket prefix) for the "
                               "shards.")
        found = shards.read_manifest(out)
        if found is None:
            shards.write_manifest(out, shards.manifest(key, name, dim, precision, source))
            return
    except OSError as e:
        raise ClipdexError(f"--out {out} cannot be used ({first_line(e)}). Pass a folder this machine and every "
                           "worker can write (a shared mount, or a bucket they have credentials for).") from e
    if found is not None:
        model: dict[str, Any] = found["model"] if isinstance(found.get("model"), dict) else {}
        if model.get("key") != key:
            raise ClipdexError(f"{out} holds shards of {model.get('name')} ({model.get('key')}), not of {name} "
                               f"({key}). Pass another --out, or the model that wrote them.")
        if model.get("precision") != precision:
            raise ClipdexError(f"{out} holds {name} vectors computed in {model.get('precision')}, not {precision}. "
                               f"Pass another --out, or --precision {model.get('precision')}.")
        if found.get("source") != source:
            raise ClipdexError(f"{out} holds the shards of another SOURCE ({found.get('source')}), not of {source}. "
                               "Pass another --out for this one (`clipdex import` adopts each folder).")


def _known_files(index: "Index", roots: Sequence[str]) -> dict[str, Any]:
    """The photos the index holds under ``roots``: videos (indexed locally; the cluster lists
    photos only: :func:`clipdex.cluster.listing.list_source`) are left out, so a cluster run never
    takes them for deleted files."""
    from clipdex.video import is_video

    known: dict[str, Any] = {}
    for root in roots:
        known.update((path, record) for path, record in index.store.files_under(root).items()
                     if not is_video(path))
    return known


def _shard_rows(files: int, options: RayOptions) -> int:
    if options.shard_rows:
        return options.shard_rows
    return max(MIN_SHARD_ROWS, min(MAX_SHARD_ROWS, math.ceil(files / SHARDS_PER_RUN)))


def _todo_table(todo: Sequence[Any]) -> "pa.Table":
    import pyarrow as pa

    return pa.table({
        "path": pa.array([e.path for e in todo], pa.string()),
        "fs_path": pa.array([e.path if e.raw_path is not None else e.fs_path for e in todo], pa.string()),
        "raw_path": pa.array([e.raw_path or b"" for e in todo], pa.binary()),
        "size": pa.array([e.size for e in todo], pa.int64()),
        "mtime_ns": pa.array([e.mtime_ns for e in todo], pa.int64()),
    })


def _run_pipeline(todo: Sequence[Any], job: _Job, options: RayOptions, settings: IndexSettings,
                  adopt: "_Adopter", progress: Progress | None, report: RayIndexReport) -> tuple[list[str], float]:
    """Stream ``todo`` through Ray: prepare, encode, write. Returns (the shards written, as their
    metadata files' names, and the seconds it took). ``job.held``
    (:func:`clipdex.cluster.stages.held_prefixes`) goes to every decode task once, through the
    object store: a file whose content the index holds is not decoded."""
    import ray
    import ray.data

    from clipdex.cluster.stages import EncodeActor, prepare_batch, write_batch

    _start_ray(options)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan and stats: the driver's bar says enough
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver draws its own bar, of files
    context.verbose_stats_logs = False
    workers = options.workers or _default_workers(options)
    _check_resources(options, workers)
    report.workers = workers
    if progress:
        progress.start(len(todo))
    shard_rows = _shard_rows(len(todo), options)
    table = _todo_table(todo)
    block = _block_rows(len(todo))
    draft = job.draft if settings.reduced_decode else None
    encode_batch = settings.batch_size or (GPU_ENCODE_BATCH if job.device == "cuda" else CPU_ENCODE_BATCH)
    threads = int(options.cpus_per_worker) if options.cpus_per_worker else None
    env = worker_environment() if not options.address else {}
    run = int(time.time())
    ds: Any = ray.data.from_arrow([table.slice(i, block) for i in range(0, len(todo), block)])
    # The memory a decode task holds keeps Ray from fusing it into the encoder actors (which
    # would then decode too, one file at a time, while the model waits).
    ds = ds.map_batches(prepare_batch, batch_size=PREPARE_BATCH, batch_format="numpy", num_cpus=1,
                        memory=PREPARE_MEMORY,
                        fn_kwargs={"preprocess": job.preprocess, "max_megapixels": settings.max_megapixels,
                                   "draft": draft, "held": job.held})
    ds = ds.map_batches(EncodeActor, batch_size=encode_batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=workers),
                        num_gpus=options.gpus_per_worker or None, num_cpus=options.cpus_per_worker or 1,
                        fn_constructor_kwargs={"spec_json": job.spec_json, "device": job.device,
                                               "precision": job.precision, "threads": threads, "env": env,
                                               "probe": job.probe})
    ds = ds.map_batches(write_batch, batch_size=shard_rows, batch_format="numpy", num_cpus=WRITE_CPUS,
                        fn_kwargs={"out": job.out, "run": run})
    started = time.perf_counter()
    written: list[str] = []
    first_files = files = 0
    last_adopt = time.monotonic()
    try:
        for summary in _summaries(ds):
            files += int(summary["files"])
            if not written:
                report.startup_seconds = time.perf_counter() - started
                first_files = files
            written.append(str(summary["shard"]))
            if progress:
                progress.advance(int(summary["files"]))
            if time.monotonic() - last_adopt >= ADOPT_EVERY_S:
                adopt()
                last_adopt = time.monotonic()
    except KeyboardInterrupt:
        adopt()  # the shards written so far join the index now (Ctrl-C again to leave them for the next run)
        raise
    except Exception as e:  # Ray wraps what failed on a worker in its own exceptions
        adopt()  # what was written is kept: the next run sends only the rest
        raise _pipeline_error(e, job.out) from e
    seconds = time.perf_counter() - started
    if len(written) > 1 and seconds > report.startup_seconds:
        report.steady_images_per_second = (files - first_files) / (seconds - report.startup_seconds)
    return written, seconds


def _block_rows(files: int) -> int:
    """Files per input block: a decode task takes one block, so blocks are what spreads decoding
    over the cluster's CPUs (a few per CPU), and what the driver builds for the run (not one
    per file at 100 million)."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(PREPARE_BATCH, min(MAX_BLOCK_ROWS, math.ceil(files / (BLOCKS_PER_CPU * cpus))))


def _check_resources(options: RayOptions, workers: int) -> None:
    """:class:`ClipdexError` when the encoder actors ask for more than the cluster has (Ray would
    wait for it forever), leaving no CPU for decoding."""
    import ray

    have = ray.cluster_resources()
    gpus, cpus = float(have.get("GPU", 0)), float(have.get("CPU", 0))
    if options.gpus_per_worker and workers * options.gpus_per_worker > gpus:
        raise ClipdexError(f"{workers} encoder actor(s) × {options.gpus_per_worker:g} GPU need "
                           f"{workers * options.gpus_per_worker:g} GPUs; the Ray cluster has {gpus:g}. Pass fewer "
                           "--workers, a smaller --gpus-per-worker, or 0 to encode on CPU workers.")
    actor_cpus = workers * (options.cpus_per_worker or 1)
    if actor_cpus + 1 > cpus:
        raise ClipdexError(f"{workers} encoder actor(s) × {options.cpus_per_worker or 1:g} CPU leave none of the "
                           f"cluster's {cpus:g} CPUs for decoding. Pass fewer --workers or --cpus-per-worker.")


def _pipeline_error(error: Exception, out: str) -> ClipdexError:
    """What a failed pipeline says: the worker's own error where Ray wrapped one (a model
    that cannot be built there, an output folder it cannot write), and that nothing is lost."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and all(cause is not c for c in chain):  # Ray keeps the worker's as .cause
        chain.append(cause)
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    own = [c for c in chain if not type(c).__module__.startswith("ray")]
    texts = "\n".join(str(c) for c in chain)
    found = [m.group(1) for m in _WORKER_ERROR.finditer(texts)]
    if own and isinstance(own[-1], ClipdexError):
        reason = str(own[-1])
    elif found:
        reason = found[-1]
    elif own:
        reason = f"{type(own[-1]).__name__}: {own[-1]}"
    else:
        reason = next((line.strip() for line in texts.splitlines() if line.strip()), type(error).__name__)
    if own and isinstance(own[-1], OSError) and not isinstance(own[-1], ClipdexError):
        reason += f" (writing shards to {out}? it must be a folder or bucket every worker can write)"
    return ClipdexError(f"the Ray pipeline stopped: {reason} The shards written to {out} before it stopped are in "
                        "the index; run the same command again to encode the rest.")


def _summaries(ds: Any) -> Iterator[dict[str, Any]]:
    """The writer's rows (one per shard), as they arrive."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for i in range(len(batch["shard"])):
            yield {k: v[i] for k, v in batch.items()}


def _start_ray(options: RayOptions) -> None:
    """Join the cluster ``options.address`` names, or start Ray on this machine (once per process)."""
    import ray

    if ray.is_initialized():
        return
    try:  # "local": a Ray of this run's own, never one RAY_ADDRESS or `ray start` left running
        ray.init(address=options.address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=True)
    except ConnectionError as e:
        raise ClipdexError(f"cannot reach the Ray cluster at {options.address} ({e}). Start it first (`ray start "
                           "--head` on its head node, `ray up cluster.yaml`, or KubeRay), or leave --address out "
                           "to run Ray on this machine.") from None
    except (ValueError, RuntimeError) as e:  # e.g. ray:// without Ray Client, a version mismatch
        raise ClipdexError(f"cannot start Ray with --address {options.address or '(none: this machine)'}: "
                           f"{first_line(e)}. `{RAY_INSTALL}` brings Ray Data and Ray Client; the cluster must run "
                           "the same Ray and Python versions.") from None


def _default_workers(options: RayOptions) -> int:
    """One encoder actor per GPU of the cluster (as many as ``gpus_per_worker`` allows), else one."""
    import ray

    if options.gpus_per_worker > 0:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        return max(1, int(gpus // options.gpus_per_worker))
    return 1


class _Adopter:
    """Adopts the output folder's finished shards into the index (``clipdex import``'s code),
    from a local copy where the folder is remote. Called repeatedly; each call imports only
    the shards not imported before.

    A remote folder's copies are deleted once a run ends well (the index holds their vectors);
    a ledger beside them names the shards adopted, so later runs do not copy them again."""

    def __init__(self, index: "Index", out: str, roots: Sequence[str], allow_new_model: bool,
                 storage: str | None) -> None:
        self.index = index
        self.out = out
        self.roots = list(roots)
        self.allow_new_model = allow_new_model
        self.storage = storage
        self.remote = not shards.is_local(out)
        self.local = str(index.path / DEFAULT_OUT / "mirror" / _slug(out)) if self.remote else shards.local_path(out)
        self.ledger = Path(self.local + ".adopted")
        self.reused = 0
        self.vectors_added = 0

    def __call__(self) -> "ImportReport | None":
        from clipdex.interchange import import_embeddings

        if self.remote:
            self._mirror()
        if not any(Path(self.local, shards.METADATA_DIR).glob("*.parquet")):
            return None
        report = import_embeddings(self.index, self.local, allow_new_model=True, roots=self.roots,
                                   refresh=False, lock=False, partial=True, storage=self.storage)
        self.reused += report.reused
        self.vectors_added += report.vectors_added
        if report.imported:
            log.debug("adopted %d files from %d shards of %s", report.imported, report.shards_imported, self.out)
        return report

    def check_seen(self, written: Sequence[str]) -> None:
        """:class:`ClipdexError` unless every shard the workers wrote reached this machine: an
        --out that is a folder on each node's own disk loses the other nodes' shards."""
        missing = [name for name in written if not Path(self.local, name).is_file()
                   and name.rsplit("/", 1)[-1] not in self._adopted()]
        if missing:
            raise ClipdexError(f"{len(missing)} of the {len(written)} shards the workers wrote are not in {self.out} "
                               f"as this machine sees it (e.g. {missing[0]}): --out must be a folder every node "
                               "shares with this one (NFS, a cluster file system) or a bucket (s3://…, gs://…). The "
                               "shards that arrived are in the index; run again with such an --out for the rest.")

    def forget_mirror(self) -> None:
        """After a run that ended well: the remote folder's local copies go, their names stay."""
        if not self.remote or not Path(self.local).is_dir():
            return
        names = sorted({p.name for p in Path(self.local, shards.METADATA_DIR).glob("*.parquet")} | self._adopted())
        self.ledger.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
        shutil.rmtree(self.local, ignore_errors=True)

    def _adopted(self) -> set[str]:
        try:
            return set(self.ledger.read_text(encoding="utf-8").split())
        except FileNotFoundError:
            return set()

    def _mirror(self) -> None:
        """Copy the remote folder's finished shards not copied (or adopted) yet, metadata last: a
        shard is complete here once its metadata is."""
        import pyarrow.fs as pafs

        fs, base = shards.filesystem(self.out)
        here = pafs.LocalFileSystem()
        for sub in (shards.EMBEDDINGS_DIR, shards.METADATA_DIR):
            Path(self.local, sub).mkdir(parents=True, exist_ok=True)
        adopted = self._adopted()
        for number in shards.written(self.out):
            metadata_name = shards.shard_names(number)[1]
            if metadata_name.rsplit("/", 1)[-1] in adopted or Path(self.local, metadata_name).exists():
                continue
            for name in shards.shard_names(number):
                target = Path(self.local, name)
                pafs.copy_files(f"{base}/{name}", f"{target}.part", source_filesystem=fs,
                                destination_filesystem=here)
                os.replace(f"{target}.part", target)
        manifest = shards.read_manifest(self.out)
        if manifest is not None:
            shards.write_manifest(self.local, manifest)


def _drop_half_shards(out: str) -> None:
    """Delete the vector files without metadata that a writer killed between its two renames
    left: their files are sent again (the index does not hold them), into a shard of their own."""
    fs, _ = shards.filesystem(out)
    finished = shards.written(out)
    for number, path in shards.written(out, vectors=True).items():
        if number not in finished:
            log.info("removing %s: half a shard (its writer was killed before its metadata was written)", path)
            fs.delete_file(path)


def _slug(uri: str) -> str:
    import hashlib

    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def _record_problems(index: "Index", listing: "Listing", key: str, report: RayIndexReport) -> None:
    """The listing's entries that cannot be indexed (gone, unreadable) as failed files (in the
    report only while the index holds no vector of the model: nothing to record them under)."""
    record = index.store.get_model(key)
    if record is None:
        report.failed.extend(Failure(p.path, p.reason, p.kind) for p in listing.problems)
        return
    record_problems(index.store, record, listing.problems, report)


def _collect_failures(index: "Index", todo: Sequence[Any], report: RayIndexReport) -> None:
    """The files of this run that failed (their rows in the shards), with their reasons."""
    sent = {e.path for e in todo}
    if not sent:
        return
    report.failed.extend(Failure(f.path, f.reason or "failed", f.failure_kind or "permanent")
                         for f in index.store.failures() if f.path in sent)


__all__ = ["RayIndexReport", "RayOptions", "index_on_ray", "require_ray"]
