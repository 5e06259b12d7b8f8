"""The public face of an index: open it, add folders, search it.

    >>> from clipdex import Index
    >>> with Index.open("~/.clipdex-photos", create=True) as index:
    ...     index.add("~/Pictures")
    ...     for hit in index.search("dog in the snow", k=5):
    ...         print(hit.rank, f"{hit.score:.3f}", hit.path)

The CLI and the web app are thin layers over this class.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from clipdex.classify import SOFTMAX, Classification, build_classifier, check_label, classify, scoring_of
from clipdex.discover import display_path
from clipdex.errors import (
    ClipdexError,
    EmptyIndex,
    FilterError,
    IndexDamaged,
    IndexStorageError,
    LabelSetError,
    LabelSetNotRun,
    ModelError,
    ModelMismatch,
    PhotoFolderError,
    PhotoNotFound,
    QueryError,
    TableError,
    first_line,
)
from clipdex.evaluate import Evaluation, evaluate
from clipdex.indexer import Indexer, IndexReport, IndexSettings, Progress, draft_size
from clipdex.labels import LabelSet, label_set_from_json
from clipdex.models import probe as probes
from clipdex.models.precision import AUTO, DEFAULT_MIN_COSINE, vector_family
from clipdex.models.registry import ModelSpec, resolve_model, with_ready_export
from clipdex.models.spec import FINGERPRINT_BYTES
from clipdex.search import QueryTerm, SearchResult, combine, parse_query
from clipdex.search.base import BuildProgress, Hits, VectorIndex
from clipdex.search.engine import (
    ModelSearch,
    RefreshReport,
    SearchBackend,
    ann_path,
    backend_of,
    file_key,
    forget_under,
    refresh,
    trained_index,
)
from clipdex.search.filters import SearchFilter, check_folder
from clipdex.settings import default_index_dir
from clipdex.store import FileRecord, ModelRecord, Searchable, Store
from clipdex.store.catalog import VideoSampling, index_option
from clipdex.store.rows import (
    RowPhoto,
    allowed_rows,
    holds_photos_under,
    indexed_paths,
    photos_of_rows,
    row_of_file,
)
from clipdex.video import (
    MOMENT_MATCH_SECONDS,
    fold_moments,
    format_time,
    frame_path,
    is_video,
    nearest_frame,
    split_frame_path,
    split_moment,
)

if TYPE_CHECKING:
    from PIL import Image

    from clipdex.discover import Walk
    from clipdex.models.auto import PrecisionChoice
    from clipdex.models.encoder import Encoder
    from clipdex.store.compact import CompactReport

log = logging.getLogger(__name__)
MAX_K = 10_000
MAX_OFFSET = 100_000  # the deepest result a page may reach (an approximate search pages this far)
# A search asks its vector index for a few more rows than it shows: rows no photo uses any
# more (deleted, changed) and rows of hidden folders are skipped; it asks again, wider,
# when that was not enough.
EXTRA_ROWS = 16
# The depths at which a search ranks rows, segment by segment (see Index._top): the same for
# every page, so an approximate search pages without repeats or gaps.
DEPTHS = (64, 512, 4096, 32_768, 262_144)
ALLOWED_CACHED = 8  # filters whose allowed rows are kept (a few people paging at once)


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Run an :class:`Index` method under the index's lock (its SQLite reads and caches)."""
    @functools.wraps(method)
    def wrapper(self: "Index", *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    return cast(F, wrapper)


INT8_KEY_SUFFIX = "#int8"


def vector_key(spec: ModelSpec, precision: str | None) -> str:
    """The key vectors are stored under: int8 vectors are kept apart; fp32, bf16 and fp16
    (which agree to cosine >= 0.999) share the model's key, one vector set."""
    return spec.key + (INT8_KEY_SUFFIX if precision and vector_family(precision) == "int8" else "")


def key_family(key: str) -> str:
    """The vector family ('int8' or 'full') of the vectors stored under ``key``."""
    return "int8" if key.endswith(INT8_KEY_SUFFIX) else "full"


@dataclass(frozen=True)
class ModelStatus:
    key: str
    name: str
    dim: int
    photos: int
    precision: str
    search: str = ""  # how it is searched: exact or approximate, and how fresh
    search_stale: bool = False  # an approximate index is missing or out of date
    reclaimable_bytes: int = 0  # what `clipdex compact` would free
    # Vectors in use per precision they were computed in, most first ({"bf16": 600, "fp32": 400}):
    # fp32, bf16 and fp16 vectors share one vector set and are searched together.
    precisions: dict[str, int] = field(default_factory=dict)
    choices: tuple["PrecisionChoice", ...] = ()  # what --precision auto chose, per kind of host
    scoring: str = "softmax"  # how its labels are scored: "softmax" (CLIP) or "sigmoid" (SigLIP, with a bias)
    moments: int = 0  # frames of videos with a vector of this model (``photos`` counts photos only)


@dataclass(frozen=True)
class PhotoLabel:
    """A photo's result in one stored label set."""

    set_name: str
    label: str
    prob: float
    probs: dict[str, float]
    corrected: str | None


@dataclass(frozen=True)
class IndexStatus:
    """What an index holds, and what is wrong with it.

    ``indexed`` and ``failed`` count files (photos and videos) in folders that exist,
    ``videos`` the indexed videos among them and ``moments`` their kept frames; photos under
    ``missing_roots`` (moved, deleted or unmounted folders) are counted apart in
    ``missing_photos`` and are never searched. ``problems`` says what is damaged
    or incomplete, each with its fix; empty when all is well.
    """

    path: str
    roots: list[str]
    indexed: int
    failed: int
    models: list[ModelStatus]
    missing_roots: list[str] = field(default_factory=list)
    missing_photos: int = 0
    problems: list[str] = field(default_factory=list)
    readonly: bool = False
    host: str | None = None  # this machine as auto's choices name hosts (None: only torch could say)
    videos: int = 0
    moments: int = 0


@dataclass(frozen=True)
class IndexCounts:
    """The cheap part of :class:`IndexStatus`: files in folders that exist, folders, model names."""

    indexed: int
    failed: int
    roots: list[str]
    missing_roots: list[str]
    models: list[str]
    videos: int = 0  # indexed videos (counted in ``indexed`` too)
    moments: int = 0  # their kept frames


class Index:
    """An on-disk photo index and the model that searches it."""

    def __init__(self, store: Store, requested: ModelSpec | None, device: str | None,
                 precision: str | None = None) -> None:
        self.store = store
        self.requested = requested
        self.device = device
        self.precision = precision
        self._encoder: Encoder | None = None
        self._encoder_error: ModelError | None = None
        self._spec: ModelSpec | None = None
        self._searchable: tuple[int, Searchable] | None = None
        self._engines: dict[tuple[object, ...], ModelSearch] = {}
        self._allowed_cache: dict[tuple[object, ...], np.ndarray] = {}
        self._classifications: dict[str, tuple[object, Classification]] = {}
        self._status: tuple[object, IndexStatus] | None = None
        # Held for the index's SQLite reads and caches (one connection, not thread-safe);
        # search() and similar() encode and rank outside it. Reentrant: hold it around
        # several calls that must see the same index.
        self.lock = threading.RLock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        model: str | None = None,
        weights: str | os.PathLike[str] | None = None,
        model_config: str | os.PathLike[str] | None = None,
        device: str | None = None,
        precision: str | None = None,
        create: bool = False,
        readonly: bool | None = None,
    ) -> "Index":
        """Open the index at ``path`` (default: CLIPDEX_INDEX or ~/.local/share/clipdex/index).

        ``model``, ``weights`` and ``model_config`` name the model to use (see
        :func:`clipdex.models.resolve_model`); without them an existing index uses
        the model it was built with, and a new one the registry's default.
        ``precision`` (auto, fp32, int8, bf16, fp16) is how new vectors are computed
        (default auto: see :meth:`add`); int8 vectors are kept apart from full-precision
        ones, and reading uses whichever set the index has. ``readonly`` None
        opens for writing where the index can be written and read-only where it
        cannot (searching works on a read-only mount); True never writes.
        """
        requested = None
        if model or weights or model_config:
            requested = resolve_model(model, weights, model_config)
        store = Store.open(Path(path) if path else default_index_dir(), create=create,
                           readonly=readonly)
        return cls(store, requested, device, precision)

    def close(self) -> None:
        self._engines = {}  # their memory maps hold the vector files open
        self._searchable = None
        self._allowed_cache = {}
        forget_under(self.path)  # and so do the approximate indexes this process loaded
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.store.path

    # -- the model ------------------------------------------------------------
    @_locked
    def model_record(self) -> ModelRecord:
        """The index's record of the model in use (raises if it has no vectors of it)."""
        records = self.store.models()
        precision = None if self.precision == AUTO else self.precision  # auto: whichever set it has
        if self.requested is not None or precision:
            spec = self.spec()
            keys = ([vector_key(spec, precision)] if precision
                    else [spec.key, vector_key(spec, "int8")])
            for key in keys:
                record = self.store.get_model(key)
                if record is not None:
                    return record
            if records:
                raise ModelMismatch(
                    _named(spec.name, keys[0]), [_named(r.name, r.key) for r in records], self.path,
                    f"Search with the index's model (--model {records[0].name}, or no --model), "
                    f"or first run `clipdex index PHOTO_DIR --add-model` with this model.")
            raise EmptyIndex(self.path, keys[0])
        if not records:
            raise EmptyIndex(self.path, "any model")
        return records[0]

    def spec(self) -> ModelSpec:
        """The model spec in use: the one asked for, else the one the index was built with."""
        if self._spec is None:
            if self.requested is not None:
                self._spec = self.requested
            else:
                records = self.store.models()
                self._spec = (with_ready_export(ModelSpec.from_json(records[0].spec_json)) if records
                              else resolve_model())
                if self._spec.family == "hf" and self._spec.weights and not os.path.isdir(self._spec.weights):
                    raise ModelError(
                        f"index {self.path} was built with the Transformers checkpoint {self._spec.weights}, "
                        "which no longer exists. If it moved, pass --model hf:/its/new/folder.")
                if self._spec.family == "onnx" and self._spec.weights and not os.path.isdir(self._spec.weights):
                    raise ModelError(
                        f"index {self.path} was built with the ONNX export in {self._spec.weights}, which no "
                        "longer exists. If it moved, pass --model onnx:/its/new/folder.")
                if (self._spec.family not in ("hf", "onnx") and self._spec.weights
                        and not os.path.isfile(self._spec.weights)):
                    raise ModelError(
                        f"index {self.path} was built with weights {self._spec.weights}, which no "
                        f"longer exist. Pass them again with --weights FILE"
                        + (" --model-config FILE.json" if self._spec.config else "") + ".")
                _check_unchanged(self._spec, self.path)
        return self._spec

    @property
    def encoder(self) -> "Encoder":
        """The model for queries (texts, example images), built on first use.

        A model that cannot be built (weights missing offline) raises :class:`ModelError`,
        and again at once on later calls, not after another attempt: a server keeps
        answering searches by indexed photos, which need no model."""
        if self._encoder is None:
            if self._encoder_error is not None:
                raise self._encoder_error
            from clipdex.models.factory import make_encoder

            try:
                built = make_encoder(self.spec(), device=self.device, for_queries=True)
            except ModelError as e:
                self._encoder_error = e
                raise
            self._encoder = cast("Encoder", _ProbedEncoder(built, self))
        return self._encoder

    def _probe_record(self) -> ModelRecord | None:
        """The record a query encoder's vectors are compared with (None: nothing to compare
        with yet: an empty index, or one without this model)."""
        try:
            return self.model_record()
        except (EmptyIndex, ModelMismatch):
            return None

    def _check_source(self, record: ModelRecord, encoder: "Encoder", towers: Sequence[str]) -> None:
        """:class:`ModelMismatch` unless ``encoder`` gives the probe vectors the index recorded for
        ``record`` on ``towers`` (:mod:`clipdex.models.probe`); checked only for a source (runtime,
        export, folder, hub repository) not yet found to give them, and recorded once it passes where
        the index can be written (a read-only index checks on every opening). A model recorded
        without a probe (an index from before probes) has nothing to compare with: it passes, and
        :meth:`add` records the probe of its next encoder."""
        source = probes.source_of(encoder)
        with self.lock:
            probe = self.store.model_probe(record.id)
        if probe is None:
            return
        known = probe.source(source)
        needed = [t for t in towers if known is None or t not in known.towers]
        if not needed:
            return
        fresh = probes.probe_vectors(encoder, needed)
        cosine = probes.min_cosine(probe.vectors[probes.rows_of(needed)], fresh)
        if cosine < probes.MIN_PROBE_COSINE:
            raise self._probe_mismatch(record, encoder.spec, source, needed, cosine,
                                       [s.source for s in probe.sources])
        log.info("checked a new source of %s: %s gives the vectors this index holds for it (%s, cosine %.5f)",
                 record.name, source, probes.towers_named(needed), cosine)
        if self.store.readonly:
            return
        try:
            with self.lock:
                self.store.add_probe_source(record.id, source, needed, cosine)
        except IndexStorageError as e:  # the check passed; recording it only saves the next one
            log.warning("could not record in %s that %s was checked (%s); it is checked again next time",
                        self.path, source, e.problem)

    def _probe_mismatch(self, record: ModelRecord, spec: ModelSpec, source: str, towers: Sequence[str],
                        cosine: float, sources: Sequence[str]) -> ModelMismatch:
        recorded = "; ".join(sources) or "none recorded"
        return ModelMismatch(
            f"{spec.name} from {source}", [_named(record.name, record.key)], self.path,
            f"It claims to be {record.key}, but its vectors for clipdex's probe ({probes.towers_named(towers)}) "
            f"agree with those the index recorded only to cosine {cosine:.4f}, below the "
            f"{probes.MIN_PROBE_COSINE:g} that every runtime, export and precision of one model reaches: it "
            "holds other weights (a mislabelled or re-exported model), and its vectors cannot be compared with "
            "the index's. Nothing was written. Index with it into a new index (--index NEW_DIR), or use a source "
            "that made or matched this index "
            f"({recorded}).")

    def _probed(self, record: ModelRecord, encoder: "Encoder") -> "Encoder":
        """``encoder``, about to add vectors to ``record``: checked against the model's probe on both
        towers, or recording its probe where the model has none yet (an index from before probes)."""
        with self.lock:
            recorded = self.store.model_probe(record.id)
        if recorded is None:
            log.info("recording the probe vectors of %s in %s", record.name, self.path)
            self.store.record_probe(record.id, probes.probe_vectors(encoder), probes.source_of(encoder),
                                    probes.TOWERS)
        else:
            self._check_source(record, encoder, probes.TOWERS)
        return encoder

    def _first_probe(self, spec: ModelSpec, key: str, encoder: "Encoder") -> tuple[np.ndarray, str]:
        """The probe of the first encoder of a model new to the index, checked against the other
        vector set of the same model where the index holds one (int8 beside full precision: both
        are one model's, whichever source made them)."""
        vectors, source = probes.probe_vectors(encoder), probes.source_of(encoder)
        for other in (spec.key, vector_key(spec, "int8")):
            sibling = self.store.get_model(other) if other != key else None
            probe = self.store.model_probe(sibling.id) if sibling is not None else None
            if sibling is not None and probe is not None and probe.source(source) is None:
                cosine = probes.min_cosine(probe.vectors, vectors)
                if cosine < probes.MIN_PROBE_COSINE:
                    raise self._probe_mismatch(sibling, spec, source, probes.TOWERS, cosine,
                                               [s.source for s in probe.sources])
        return vectors, source

    # -- writing --------------------------------------------------------------
    def add(
        self,
        folder: str | os.PathLike[str],
        *,
        settings: IndexSettings | None = None,
        progress: Progress | None = None,
        allow_new_model: bool = False,
        wait: bool = False,
        search_progress: BuildProgress | None = None,
        storage: str | None = None,
        min_cosine: float = DEFAULT_MIN_COSINE,
    ) -> IndexReport:
        """Index ``folder`` recursively: new and changed photos are encoded, deleted ones dropped.

        An index that already holds another model's vectors is left alone unless
        ``allow_new_model`` (the new model's vectors are then added beside them).
        A large collection's approximate search index is then brought up to date
        (:meth:`refresh_search`; ``search_progress(done, total)`` follows it).
        ``storage`` ("f32" or "f16") is how a model new to the index keeps its vectors:
        float16 halves the vector file for a recall measured in bench/search_scale.py;
        a model the index holds keeps its storage.

        With precision ``auto`` (the default) the fastest precision whose vectors agree with fp32's to
        ``min_cosine`` on a few photos of the folder is used (:mod:`clipdex.models.auto`),
        chosen once per model and kind of host and recorded in the index; a folder with
        nothing to encode chooses nothing. The report says which precision and why.
        """
        if storage not in (None, "f32", "f16"):
            raise ValueError(f"storage must be 'f32' or 'f16', not {storage!r}")
        if not 0.0 < min_cosine <= 1.0:
            raise ValueError(f"min_cosine must be above 0 and at most 1, not {min_cosine!r}")
        path = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        known_root = display_path(path) in self.store.roots()
        if known_root and not os.path.exists(path) and self.store.root_kinds().get(display_path(path)) == "import":
            raise PhotoFolderError(
                path, "holds imported embeddings whose images are not on this machine: there is nothing to "
                "index", "Search it as it is; `clipdex import` adds embeddings, and `clipdex compact` (or "
                "`clipdex import` again) brings its search index up to date.")
        if known_root and not os.path.exists(path):
            held = self.store.count_under([path])
            raise PhotoFolderError(
                path, f"folder does not exist (the index still holds its {held} photos, hidden from "
                "search)", f"If it moved, index its new place; `clipdex remove {path}` forgets it "
                "(`clipdex remove --missing` forgets every folder that is gone).")
        self.store.require_writable()
        # A missing folder, or an empty one the index does not have, changes nothing; an
        # indexed folder emptied since is a folder whose photos all leave the index.
        walk = Indexer.scan(path, allow_empty=known_root, videos=(settings or IndexSettings()).videos)
        spec = self.spec()
        asked = self.precision or _default_precision()
        if asked != AUTO and min_cosine != DEFAULT_MIN_COSINE:
            log.warning("--min-cosine %g applies only to --precision auto: new vectors are computed in %s, "
                        "as asked", min_cosine, asked)
        key = self._add_key(spec, asked)
        self._check_model(key, allow_new_model, spec.name)
        self.store.acquire_lock(wait=wait)
        try:
            from clipdex.models.encoder import LazyEncoder

            # Again under the lock: another process may have registered a model meanwhile.
            record = self._check_model(self._add_key(spec, asked), allow_new_model, spec.name)
            plan = _PrecisionPlan(self, spec, asked, min_cosine, walk, settings or IndexSettings(), record)
            moved = False
            if record is None:  # a new model: build it now to learn its dimension
                encoder: Encoder = LazyEncoder(plan.encoder)  # type: ignore[assignment]
                encoder.load()
                key = vector_key(spec, plan.precision)  # auto may have chosen int8
                probe, source = self._first_probe(spec, key, encoder)
                record = self.store.add_model(key, spec.name, spec.to_json(), encoder.dim,
                                              encoder.logit_scale, plan.precision or asked, storage or "f32",
                                              logit_bias=encoder.logit_bias)
                self.store.record_probe(record.id, probe, source, probes.TOWERS)
                plan.recorded(record)
            else:
                forgotten = self.store.repair_vectors(record)
                if forgotten:
                    record = self.store.get_model(key) or record
                    log.warning("%d vectors of %s were lost from %s; their photos are encoded again "
                                "(in other folders: run `clipdex status`)", forgotten, spec.name,
                                self.path / record.vectors_file)
                moved = bool(spec.weights) and record.spec_json != spec.to_json()  # weights moved
                # Built when the first photo needs encoding (an unchanged folder builds none), and
                # checked then against the model's probe where its source is new to the index.
                adding = record
                encoder = LazyEncoder(lambda: self._probed(adding, plan.encoder()))  # type: ignore[assignment]
            try:
                report = Indexer(encoder, self.store, settings).run(walk, record, progress)
            except ModelMismatch:  # another model under this one's name: the folder it added goes again
                if not known_root:
                    self.store.remove_root(walk.display_root)
                raise
            if moved:  # recorded once it is known the new place holds the same model
                self.store.update_model_spec(record.id, spec.to_json(), spec.name)
            report.precision, report.precision_note = plan.precision or "", plan.note
            self._refresh_search(search_progress)
        finally:
            self.store.release_lock()
            self._searchable = None
        return report

    def refresh_search(self, progress: BuildProgress | None = None, *, wait: bool = False) -> list[RefreshReport]:
        """Bring every model's approximate search index up to date with its vectors: built when
        a model reaches ``ANN_MIN_ROWS`` photos or its index does not match (a killed run,
        compaction, an older clipdex), updated with the rows added since otherwise.
        :meth:`add` does it; imports and compaction call it. Takes the writer's lock."""
        self.store.require_writable()
        self.store.acquire_lock(wait=wait)
        try:
            return self._refresh_search(progress)
        finally:
            self.store.release_lock()

    def _refresh_search(self, progress: BuildProgress | None,
                        trained: dict[str, VectorIndex | None] | None = None) -> list[RefreshReport]:
        reports = []
        for record in self.store.models():
            try:
                reports.append(refresh(self.store, record, progress, trained=(trained or {}).get(record.key)))
            except OSError as e:  # a full disk: what was indexed stays; search is exact meanwhile
                path = ann_path(self.store, record)
                log.warning("could not save the approximate search index %s (%s); searches stay exact "
                            "until the next `clipdex index` succeeds", path, e.strerror or e)
                reports.append(RefreshReport(record.key, "failed", record.rows, 0.0, str(e)))
        for report in reports:
            if report.action in ("built", "updated"):
                log.info("approximate search index of %s %s: %s rows in %.1f s (%s)", report.model,
                         report.action, f"{report.rows:,}", report.seconds, report.why)
        return reports

    def _add_key(self, spec: ModelSpec, asked: str) -> str:
        """The key new vectors go under: the precision's, or for auto the family the index
        holds (int8 only when it holds only int8 vectors of the model; a model new to the
        index gets its key once auto has chosen)."""
        if asked != AUTO:
            return vector_key(spec, asked)
        int8 = self.store.get_model(vector_key(spec, "int8")) is not None
        return vector_key(spec, "int8" if int8 and self.store.get_model(spec.key) is None else "fp32")

    def _check_model(self, key: str, allow_new_model: bool, name: str) -> ModelRecord | None:
        """The index's record of ``key`` (model ``name``); :class:`ModelMismatch` if it holds only
        other models and adding one was not asked for."""
        record = self.store.get_model(key)
        if record is None and not allow_new_model:
            records = self.store.models()
            if records:
                raise ModelMismatch(
                    _named(name, key), [_named(r.name, r.key) for r in records], self.path,
                    "Pass --add-model to add this model's vectors beside them (nothing is "
                    "removed), use that model instead, or choose another index with --index DIR.")
        return record

    def remove_folder(self, folder: str | os.PathLike[str]) -> int:
        """Forget an indexed folder and every photo under it, whether or not it still exists.

        Vectors stay in the index (a photo indexed again elsewhere reuses its
        vector by content hash). Returns how many photos the index forgot.
        Raises :class:`PhotoFolderError` when the index has no such folder.
        """
        path = display_path(os.path.abspath(os.path.expanduser(os.fspath(folder))))
        roots = self.store.roots()
        if path not in roots:
            gone = set(self.store.missing_roots())
            shown = ", ".join(r + (" (no longer exists)" if r in gone else "") for r in roots) or "none yet"
            raise PhotoFolderError(path, "is not a folder of this index",
                                   f"Its folders are: {shown}. Pass one of them exactly as "
                                   "`clipdex status` shows it.")
        self.store.acquire_lock()
        try:
            removed = self.store.remove_root(path)
        finally:
            self.store.release_lock()
            self._searchable = None
        return removed

    def compact(self, progress: BuildProgress | None = None, search_progress: BuildProgress | None = None, *,
                wait: bool = False) -> "CompactReport":
        """Rewrite every model's vector file without the vectors no photo uses any more, then
        rebuild what is built on row numbers (the approximate search index); see
        :func:`clipdex.store.compact.compact`. Safe to kill at any point."""
        from clipdex.store.compact import compact

        # The approximate indexes as they are: a rebuild reuses their trained lists (k-means is
        # most of a build), since compaction renumbers rows but changes no vector.
        trained = {record.key: trained_index(self.store, record) for record in self.store.models()}
        report = compact(self.store, progress, wait=wait)
        self._engines = {}
        forget_under(self.path)
        self.store.require_writable()
        self.store.acquire_lock(wait=wait)
        try:
            self._refresh_search(search_progress, trained)
        finally:
            self.store.release_lock()
        return report

    @_locked
    def indexed_paths(self) -> list[str]:
        """Every searchable photo's path, sorted (folders that are gone left out; no vector read)."""
        return indexed_paths(self.store, self.store.missing_roots())

    def prune_missing(self) -> list[str]:
        """Forget every indexed folder that no longer exists (with its photos); returns them."""
        missing = self.store.missing_roots()
        for root in missing:
            self.remove_folder(root)
        return missing

    # -- reading --------------------------------------------------------------
    def _stamp(self) -> tuple[object, ...]:
        """Changes when anyone (this connection or another process) writes the index, or an
        indexed folder appears or disappears (a few ``isdir`` calls)."""
        return (*self.store.stamp(), tuple(self.store.missing_roots()))

    @_locked
    def searchable(self) -> Searchable:
        """Every searchable photo with its vector, cached until the index changes.

        Photos under folders that no longer exist are left out; a lost or
        damaged vector raises :class:`~clipdex.errors.IndexDamaged`.
        """
        record = self.model_record()
        stamp = self._stamp()
        key = hash((record.rows, stamp))
        if self._searchable is None or self._searchable[0] != key:
            hidden = stamp[-1]
            assert isinstance(hidden, tuple)
            self._searchable = (key, self.store.searchable(record, hidden))
        return self._searchable[1]

    def query_vector(self, query: str | list[QueryTerm], *,
                     image_files: Callable[[str], bool] | None = None) -> np.ndarray:
        """The normalised vector of a query (text, ``@image``, weights, negatives).

        ``image_files`` decides which image files outside the index a query may
        read (default: any); indexed photos always resolve to their stored vector.
        """
        terms = parse_query(query) if isinstance(query, str) else query
        texts = [t.value for t in terms if t.kind == "text"]
        text_vectors = iter(self.encoder.encode_texts(texts) if texts else [])
        vectors = [next(text_vectors) if t.kind == "text" else self._image_vector(t.value, image_files)
                   for t in terms]
        return _combine(query, terms, vectors)

    def search(self, query: str | list[QueryTerm], k: int = 10, *, offset: int = 0,
               label: tuple[str, str] | None = None, filters: SearchFilter | None = None,
               exact: bool = False, image_files: Callable[[str], bool] | None = None,
               image_vector: Callable[[str], np.ndarray | None] | None = None,
               per_video: int | None = None) -> list[SearchResult]:
        """The ``k`` photos most similar to ``query``, best first (cosine scores).

        Videos answer with moments (``SearchResult.t``): a video's hits in one shot within
        :data:`clipdex.video.MOMENT_SECONDS` of a better one are that moment again, and
        ``per_video`` caps how many moments of one video are listed.

        ``filters`` keeps only photos with a label of a stored set (a person's
        correction wins over the prediction), under some folders, or taken within
        dates (:class:`~clipdex.search.filters.SearchFilter`); ``label=("taken_time",
        "night")`` is a shortcut for a label filter. ``exact`` searches every vector
        even where an approximate index exists. An ``@image`` term is, in order: what
        ``image_vector`` returns for it (None: not its kind; the web resolves its
        uploads so), a photo of the index (its stored vector), or an image file that
        ``image_files`` allows (default: any).

        Results are ordered by score, ties by vector row then path, the same on every
        page. Safe to call from several threads at once: the catalog reads are taken
        under :attr:`lock`; encoding the query, decoding image files and ranking run
        outside it, side by side.
        """
        _check_page(str(query), k, offset)
        filters = _with_label(filters, label)
        terms = parse_query(query) if isinstance(query, str) else query
        with self.lock:
            plan = self._plan(filters, exact)
        query_vector = self._resolved_vector(query, terms, image_files, image_vector)
        text = any(t.kind == "text" and t.weight > 0 for t in terms)
        return self._top(plan, query_vector, k, offset, text, per_video)

    def _resolved_vector(self, query: str | list[QueryTerm], terms: list[QueryTerm],
                         image_files: Callable[[str], bool] | None,
                         image_vector: Callable[[str], np.ndarray | None] | None) -> np.ndarray:
        """The query's vector (see :meth:`search` for how an ``@image`` term resolves): stored
        vectors and the files to read are looked up under :attr:`lock`; texts and files are
        encoded outside it, side by side with other threads."""
        vectors: dict[int, np.ndarray] = {}
        if image_vector is not None:
            for i, term in enumerate(terms):
                if term.kind == "image":
                    given = image_vector(term.value)
                    if given is not None:
                        vectors[i] = given
        files: dict[int, str] = {}
        with self.lock:
            for i, term in enumerate(terms):
                if term.kind == "image" and i not in vectors:
                    stored = self._stored_vector(term.value)
                    if stored is not None:
                        vectors[i] = stored
                    else:
                        files[i] = self._query_file(term.value, image_files)
            texts = [t.value for t in terms if t.kind == "text"]
            encoder = self.encoder if texts or files else None  # built once, under the lock
        if encoder is not None:
            vectors.update(_encode_terms(encoder, terms, texts, files))
        return _combine(query, terms, [vectors[i] for i in range(len(terms))])

    def similar(self, file_id: int, k: int = 10, *, offset: int = 0, filters: SearchFilter | None = None,
                exact: bool = False, per_video: int | None = None) -> tuple[FileRecord, list[SearchResult]]:
        """Photo ``file_id`` and the photos most like it, by its stored vector (thread-safe
        like :meth:`search`; ``filters`` as there). Raises :class:`PhotoNotFound`, or
        :class:`QueryError` when the photo has no vector of this model yet."""
        _check_page(f"more like photo #{file_id}", k, offset)
        with self.lock:
            plan = self._plan(filters, exact)
            record = self.photo(file_id)
            with self.store.snapshot():
                current = self.store.get_model(plan.engine.record.key)
                if current is not None and current.generation != plan.engine.record.generation:
                    plan = self._plan(filters, exact)  # compacted meanwhile: the new numbering
                row = row_of_file(self.store, plan.engine.record, file_id)
        if row is None:
            raise QueryError(f"more like photo #{file_id}", f"{record.path} has no vector of this "
                             "model yet; run `clipdex index` on its folder")
        vector = plan.engine.read(np.array([row]))[0]
        return record, self._top(plan, combine([vector], [1.0]), k, offset, False, per_video)

    def video(self, video_id: int) -> tuple[FileRecord, VideoSampling]:
        """An indexed video by id, and how it was sampled. Raises :class:`PhotoNotFound` when
        ``video_id`` is no indexed video (a photo, a frame, a failed or removed file)."""
        with self.lock:
            record = self.store.file_by_id(video_id)
            sampling = self.store.video_sampling(video_id) if record is not None else None
        if record is None or record.status != "ok" or sampling is None:
            raise PhotoNotFound(f"video #{video_id}")
        return record, sampling

    def moments(self, video_id: int, query: str | list[QueryTerm] | None = None, *, limit: int = 500,
                image_files: Callable[[str], bool] | None = None,
                image_vector: Callable[[str], np.ndarray | None] | None = None) -> list[SearchResult]:
        """The kept frames of video ``video_id`` scored against ``query``, best first (at most
        ``limit``): where in the video a search matches (the web app's timeline). With no query,
        every frame by time, scored 0. ``image_files`` and ``image_vector`` resolve ``@image``
        terms as in :meth:`search`; thread-safe like it. Raises :class:`PhotoNotFound` for an id
        that is no video."""
        video, _ = self.video(video_id)
        with self.lock:
            record = self.model_record()
            engine = self._model_search(record, False)
            frames = self.store.video_frames(video_id)
            rows = {f.id: row_of_file(self.store, engine.record, f.id) for f in frames}
        frames = [f for f in frames if rows[f.id] is not None]
        scores = np.zeros(len(frames), dtype=np.float32)
        order = list(range(len(frames)))
        if query is not None and frames:
            terms = parse_query(query) if isinstance(query, str) else query
            vector = self._resolved_vector(query, terms, image_files, image_vector)
            matrix = engine.read(np.array([rows[f.id] for f in frames], dtype=np.int64))
            scores = matrix @ vector
            order = sorted(order, key=lambda i: (-float(scores[i]), frames[i].frame_t or 0.0))
        return [SearchResult(rank=n + 1, score=float(scores[i]), path=video.path, file_id=frames[i].id,
                             t=frames[i].frame_t, video_id=video_id) for n, i in enumerate(order[:limit])]

    @_locked
    def search_backend(self, exact: bool = False) -> SearchBackend:
        """How the model in use is searched now: exact or approximate, and how fresh."""
        return self._model_search(self.model_record(), exact).backend

    def _model_search(self, record: ModelRecord, exact: bool) -> ModelSearch:
        """The model's search engine, kept while its vectors and approximate index are unchanged."""
        key = (record.id, record.rows, record.generation, record.vectors_file, exact,
               file_key(ann_path(self.store, record)),
               file_key(self.store.vector_file(record).path))
        engine = self._engines.get(key)
        if engine is None:
            engine = ModelSearch(self.store, record, exact=exact)
            self._engines = {key: engine}  # one model, one state at a time
        return engine

    def _plan(self, filters: SearchFilter | None, exact: bool) -> "_Plan":
        """What a search needs from the catalog, read under the lock: the engine, the folders
        hidden from search and, when something is filtered, the rows allowed."""
        record = self.model_record()
        try:
            engine = self._model_search(record, exact)
        except IndexDamaged:
            # Another process compacted meanwhile (the file read is gone, a new one is named):
            # that is no damage; read the model again.
            fresh = self.store.get_model(record.key)
            if fresh is None or (fresh.generation, fresh.vectors_file) == (record.generation, record.vectors_file):
                raise
            engine = self._model_search(fresh, exact)
        hidden = tuple(self.store.missing_roots())
        if filters and filters.label:
            self._check_label(*filters.label)
        if filters and filters.folders:
            self._check_folders(filters.folders)
        # Folders that are gone (an unplugged disk) hide their photos when rows are mapped to
        # photos; only a filter makes the allowed rows worth a query of their own.
        allowed = self._allowed(engine.record, filters, hidden) if filters else None
        return _Plan(engine, filters, hidden, allowed, exact)

    def _allowed(self, record: ModelRecord, filters: SearchFilter | None,
                 hidden: tuple[str, ...]) -> np.ndarray:
        """The rows a filter allows, kept until the catalog changes (paging through a filtered
        search, or scrolling on, asks for the same rows again)."""
        key = (record.id, record.generation, filters, hidden, self.store.stamp())
        found = self._allowed_cache.get(key)
        if found is None:
            found = allowed_rows(self.store, record, filters, hidden)
            if len(self._allowed_cache) >= ALLOWED_CACHED:
                self._allowed_cache.pop(next(iter(self._allowed_cache)))
            self._allowed_cache[key] = found
        return found

    def _check_folders(self, folders: Sequence[str]) -> None:
        """A folder filter must name a folder the index holds photos of (one of its folders, or
        inside or around one): anything else is a typo, not an empty result."""
        roots = self.store.roots()
        for folder in folders:
            shown = check_folder(display_path(folder), roots, "`clipdex status` lists them")
            if shown not in roots and not holds_photos_under(self.store, shown):
                raise FilterError(f"folder {shown!r}", "holds no indexed photo (a typo, or a folder "
                                  "not indexed yet)", f"Index it with `clipdex index {shown}`, or pick "
                                  "another folder.")

    def _check_label(self, name: str, label: str) -> None:
        """A label filter's label must be one of the stored set's (read from its definition,
        not its predictions); an unknown set is :class:`LabelSetNotRun`."""
        check_label(name, self.classification_labels(name), label)

    def _top(self, plan: "_Plan", query_vector: np.ndarray, k: int, offset: int,
             text: bool, per_video: int | None = None) -> list[SearchResult]:
        """The page ``offset:offset + k`` of photos ranked by ``query_vector``.

        The vector index returns rows; the catalog maps them to photos (a row may have
        several: copies of one photo; or none: a photo deleted since). Rows are ranked
        in segments of fixed depths (:data:`DEPTHS`): the first ``DEPTHS[0]`` rows are
        an approximate search's best ``DEPTHS[0]``, the next ones its best ``DEPTHS[1]``
        less those already ranked, and so on. An approximate search's candidates depend
        on how many results it is asked for; fixed depths make the ranking the same
        whichever page is asked, so paging never repeats or skips a photo. (Exact
        search is the same at any depth: it asks once, as deep as the page needs.)
        """
        need = offset + k
        if plan.allowed is not None and not len(plan.allowed):
            self._check_not_empty(plan)
            return []
        replanned = 0
        while True:
            try:
                ranked, photos = self._ranked_photos(plan, query_vector, need, text, per_video)
                break
            except _Renumbered:
                if replanned >= 2:
                    raise IndexStorageError(self.path, "the index was compacted again and again while "
                                            "searching it", "Search again once `clipdex compact` is done.") from None
                # Rows were renumbered (another process compacted) since they were ranked: rank
                # again with the new numbering, never map old rows to new photos.
                with self.lock:
                    plan, replanned = self._plan(plan.filters, plan.exact), replanned + 1
        if not photos and offset == 0:
            self._check_not_empty(plan)
        score = dict(zip(ranked.rows.tolist(), ranked.scores.tolist()))
        photos = _in_rank_order(ranked, photos, per_video)[offset:need]
        plan.engine.check(np.array(sorted({p.row for p in photos}), dtype=np.int64))
        return [_result(offset + i + 1, float(score[p.row]), p) for i, p in enumerate(photos)]

    def _ranked_photos(self, plan: "_Plan", query_vector: np.ndarray, need: int,
                       text: bool, per_video: int | None = None) -> tuple[Hits, list[RowPhoto]]:
        """Rows in ranked order, and the photos of the first of them, at least ``need`` photos
        when there are so many (see :meth:`_top`). Raises :class:`_Renumbered` when another
        process compacted the index meanwhile."""
        engine = plan.engine
        exact = engine.exact is not None
        rows: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        photos: list[RowPhoto] = []
        seen: set[int] = set()
        depths = list(DEPTHS)
        if exact:  # the same at any depth: start as deep as the page needs
            depths = [max(need + EXTRA_ROWS, DEPTHS[0])] + [d for d in DEPTHS if d > need + EXTRA_ROWS]
        for level, depth in enumerate(depths):
            hits = engine.search(query_vector, depth, plan.allowed, text)
            fresh = np.array([r not in seen for r in hits.rows.tolist()], dtype=bool)
            taken = max(0, depth - len(seen))
            new_rows, new_scores = hits.rows[fresh][:taken], hits.scores[fresh][:taken]
            with self.lock, self.store.snapshot():  # the generation and the photos read as one
                current = self.store.get_model(engine.record.key)
                if current is not None and current.generation != engine.record.generation:
                    raise _Renumbered
                found = photos_of_rows(self.store, engine.record, new_rows, plan.filters, plan.hidden)
            if level == 0 and plan.allowed is None and len(new_rows) >= 2 * len(found) + EXTRA_ROWS:
                # Most rows have no photo (a big folder deleted or missing, not yet compacted):
                # rank only the rows in use. Decided on the first segment, the same for every page.
                with self.lock:
                    allowed = allowed_rows(self.store, engine.record, plan.filters, plan.hidden)
                return self._ranked_photos(plan.with_allowed(allowed), query_vector, need, text, per_video)
            rows.append(new_rows)
            scores.append(new_scores)
            seen.update(new_rows.tolist())
            photos += found
            if len(hits) < depth:
                break
            if len(photos) >= need and (all(p.video_id is None for p in photos) or len(_in_rank_order(
                    Hits(np.concatenate(rows), np.concatenate(scores)), photos, per_video)) >= need):
                break  # (moments of one video folded into one count once)
        if not rows:
            return Hits.empty(), []
        return Hits(np.concatenate(rows), np.concatenate(scores)), photos

    def _check_not_empty(self, plan: "_Plan") -> None:
        """Raise :class:`EmptyIndex` when the model has no searchable photo at all (nothing
        indexed, or every folder missing), rather than answering with nothing."""
        with self.lock:
            record = plan.engine.record
            if plan.filters is None and not self.store.count_for_model(record, list(plan.hidden)):
                raise EmptyIndex(self.path, record.key, self.store.missing_roots())

    def _image_vector(self, ref: str, image_files: Callable[[str], bool] | None = None) -> np.ndarray:
        """A query image: a photo of the index (stored vector) or an image file."""
        stored = self._stored_vector(ref)
        if stored is not None:
            return stored
        from clipdex.decode import open_image_file

        return self.encoder.encode_pil([open_image_file(self._query_file(ref, image_files))])[0]

    def _stored_vector(self, ref: str) -> np.ndarray | None:
        """The stored vector of the indexed photo ``ref`` names, or of the kept frame at the
        moment ``video.mp4@83.5`` names (None when it names none: a file to decode)."""
        moment = split_moment(ref)
        if moment is not None:
            return self._moment_vector(ref, *moment)
        video, mark, when = ref.rpartition("@")
        if mark and is_video(video):
            raise QueryError(f"@{ref}", f"{when!r} is not a time of {video}: write seconds (83.5), m:ss (1:23.5) "
                             "or h:mm:ss (0:01:23)")
        found = self._find_indexed(ref)
        if found is not None and self._sampling_of(found) is not None:
            raise QueryError(f"@{ref}", f"{found.path} is a video: name a moment of it, e.g. @{ref}@83.5 "
                             f"(seconds) or @{ref}@1:23")
        if found is not None and found.content_hash:
            return self.store.vector_for_hash(self.model_record(), found.content_hash)
        return None

    def _moment_vector(self, ref: str, video_ref: str, t: float) -> np.ndarray | None:
        """The stored vector of the frame kept at ``t`` of an indexed video (None: no frame was
        kept at that time, or the video is not indexed: the frame is decoded from the file)."""
        video = self._find_indexed(video_ref)
        sampling = self._sampling_of(video)
        if video is None or sampling is None:
            return None
        if t > sampling.duration + MOMENT_MATCH_SECONDS:
            raise QueryError(f"@{ref}", f"{video.path} is {format_time(sampling.duration)} long: "
                             f"{format_time(t)} is past its end")
        frames = self.store.video_frames(video.id)
        near = nearest_frame([f.frame_t or 0.0 for f in frames], t)
        key = None if near is None else frames[near].content_hash
        return None if key is None else self.store.vector_for_hash(self.model_record(), key)

    def _query_file(self, ref: str, image_files: Callable[[str], bool] | None) -> str:
        """The image file a query term names, if ``image_files`` lets the query read it: a
        moment of a video is its frame's path (``video.mp4#t=83.500``), decoded from the video."""
        moment = split_moment(ref)
        if moment is not None:
            video_ref, t = moment
            video = self._find_indexed(video_ref)
            if video is not None and self._sampling_of(video) is not None:
                if image_files is not None and not image_files(video.fs_path):
                    # A client that may read no file (the web) asks for kept moments only: their
                    # stored vectors, never a frame decoded on demand.
                    kept = [f.frame_t for f in self.store.video_frames(video.id) if f.frame_t is not None]
                    near = min(kept, key=lambda k: abs(k - t), default=None)
                    hint = f"; the nearest is @{video_ref}@{near:g}" if near is not None else ""
                    raise QueryError(f"@{ref}", f"no moment of {video.path} was kept at {format_time(t)}{hint}")
                return frame_path(video.fs_path, t)  # an indexed video: any of its moments may be read
            path = self._query_file(video_ref, image_files)
            return frame_path(path, t)
        path = os.path.expanduser(ref)
        if image_files is not None and not image_files(path):
            raise QueryError(f"@{ref}", f"{ref!r} is not a photo of the index")
        if not os.path.isfile(path):
            raise QueryError(f"@{ref}", f"{ref!r} is neither an image file nor a photo of the index")
        return path

    def _sampling_of(self, record: FileRecord | None) -> VideoSampling | None:
        """How ``record`` was sampled when it is an indexed video (None: a photo, a frame, nothing)."""
        if record is None or record.video_id is not None or not is_video(record.path):
            return None
        return self.store.video_sampling(record.id)

    def _find_indexed(self, ref: str) -> FileRecord | None:
        exact = self.store.file_by_path(os.path.abspath(os.path.expanduser(ref)))  # real or display name
        if exact is not None and exact.status == "ok":
            return exact
        if os.sep in ref:
            return None
        named = self.store.files_named(ref)
        if len(named) > 1:
            shown = ", ".join(f.path for f in named[:5])
            raise QueryError(f"@{ref}", f"{len(named)} photos are named {ref!r} ({shown}); give a path")
        return named[0] if named else None

    # -- classification -------------------------------------------------------
    def classify(self, label_sets: Sequence[LabelSet], *, min_prob: float | None = None,
                 save: bool = True) -> list[Classification]:
        """Label every indexed photo with each set, from the stored vectors.

        Only the prompts are encoded; results are saved in the index under the
        set's name (replacing an earlier run of that name) unless ``save`` is false.
        """
        names = [s.name for s in label_sets]
        if len(set(names)) != len(names):
            raise LabelSetError("label sets", f"the name {names[0]!r} is used twice",
                                "Give every label set its own name.")
        found = self.searchable()
        if not found.paths:
            raise EmptyIndex(self.path, self.model_record().key, self.store.missing_roots())
        record = self._scored(self.model_record())
        results = []
        for label_set in label_sets:
            classifier = build_classifier(label_set, self.encoder.encode_texts, record.logit_scale,
                                          record.logit_bias)
            result = classify(classifier, found.vectors, found.ids.tolist(), found.paths, min_prob=min_prob,
                              fs_paths=found.fs_paths)
            if save and self.store.readonly:
                log.warning("index %s is read-only: the results of %r are shown but not saved",
                            self.path, label_set.name)
            elif save:
                self.store.save_predictions(record, label_set.name, label_set.to_json(), result.labels,
                                            found.hashes, result.predicted, result.confidence,
                                            result.probs)
            results.append(result)
        return results

    @_locked
    def save_classification(self, result: Classification) -> None:
        """Store labels computed elsewhere (topics, a learned probe) as label set
        ``result.label_set.name``, replacing an earlier set of that name: search filters,
        review grids, exports, evaluation and the web pages then work on it as on a
        zero-shot set. ``result`` must be row-aligned with :meth:`searchable` photos by
        ``file_ids`` (any order, any subset); a file id that is not searchable is refused.
        """
        self.store.require_writable()
        found = self.searchable()
        hash_of = dict(zip(found.ids.tolist(), found.hashes))
        unknown = [i for i in result.file_ids if i not in hash_of]
        if unknown:
            raise ValueError(f"file ids {unknown[:5]} are not searchable photos of {self.path}")
        label_set = result.label_set
        self.store.save_predictions(self.model_record(), label_set.name, label_set.to_json(), result.labels,
                                    [hash_of[i] for i in result.file_ids], result.predicted, result.confidence,
                                    result.probs)
        self._classifications.pop(label_set.name, None)

    @_locked
    def label_sets(self) -> list[str]:
        """Names of the label sets whose predictions the index holds, oldest first."""
        return [name for name, _, _ in self.store.label_sets(self.model_record())]

    @_locked
    def label_set_definitions(self) -> dict[str, LabelSet]:
        """Every stored label set's definition by name, oldest first: what it is (its ``kind``:
        zero-shot, topics, learned) without reading a single prediction."""
        return {name: label_set_from_json(definition)
                for name, definition, _ in self.store.label_sets(self.model_record())}

    @_locked
    def classification(self, name: str) -> Classification:
        """The stored predictions of label set ``name`` (cached until the index changes)."""
        stamp = self._stamp()
        cached = self._classifications.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        result = self._load_classification(name)
        self._classifications[name] = (stamp, result)
        return result

    def _scored(self, record: ModelRecord) -> ModelRecord:
        """``record`` with the scoring its model's weights carry: a sigmoid model (SigLIP) recorded
        without its bias (indexed before biases were kept, or imported without the weights at hand)
        gets it now, once, so it is no longer scored as a softmax model."""
        if record.logit_bias is None and getattr(self.encoder, "scoring_unknown", False):
            raise ModelError(
                f"{record.name} is a sigmoid model (SigLIP) whose export keeps no logit_scale and logit_bias "
                f"(an Immich export: {getattr(self.encoder, 'source', 'its files')}), so its per-label "
                "probabilities cannot be computed. Search works; to classify, index with an export that keeps "
                "them: `clipdex models export ARCH/TAG DIR` of the open_clip model (needs clipdex[torch]), "
                "then --model onnx:DIR, or the open_clip model itself.")
        bias = self.encoder.logit_bias
        if record.logit_bias is not None or bias is None:
            return record
        log.info("%s scores with a sigmoid (logit_bias %.4g): recorded in %s", record.name, bias, self.path)
        if not self.store.readonly:
            self.store.set_scoring(record.id, self.encoder.logit_scale, bias)
        return replace(record, logit_scale=self.encoder.logit_scale, logit_bias=bias)

    def _load_classification(self, name: str) -> Classification:
        stored = self.store.load_predictions(self.model_record(), name, self.store.missing_roots())
        if stored is None:
            raise self._not_run(name)
        corrected = self.store.corrections(self.model_record(), name)
        truth = [corrected.get(h, "") for h in stored.hashes] if corrected else None
        label_set = label_set_from_json(stored.definition)
        # Labels not from prompts (topics, a learned probe) carry their own probabilities: a softmax
        # over the set's labels unless their origin says otherwise, whatever the model's scoring.
        scoring = (str(label_set.origin.get("scoring", SOFTMAX)) if label_set.origin is not None
                   else scoring_of(self.model_record().logit_bias))
        return Classification(label_set=label_set, file_ids=stored.file_ids,
                              paths=stored.paths, probs=stored.probs, predicted=stored.predicted,
                              confidence=stored.confidence, truth=truth,
                              fs_paths=stored.fs_paths, scoring=scoring)

    @_locked
    def photo(self, file_id: int) -> FileRecord:
        """An indexed photo by id."""
        record = self.store.file_by_id(file_id)
        if record is None or record.status != "ok":
            raise PhotoNotFound(f"#{file_id}")
        return record

    @_locked
    def photo_labels(self, file_id: int) -> list[PhotoLabel]:
        """The photo's label in every stored set, with probabilities and any correction."""
        record = self.photo(file_id)
        rows = self.store.predictions_for_hash(self.model_record(), record.content_hash or "")
        return [PhotoLabel(set_name=name, label=label, prob=float(prob),
                           probs=dict(zip(labels, map(float, probs))), corrected=corrected)
                for name, labels, label, prob, probs, corrected in rows]

    @_locked
    def correct(self, name: str, file_id: int, label: str) -> None:
        """Record a person's label for a photo in set ``name`` (ground truth for evaluation)."""
        self.classification(name).check_label(label, allow_uncertain=False)
        record = self.photo(file_id)
        self.store.save_correction(self.model_record(), name, record.content_hash or "", label)

    @_locked
    def classification_labels(self, name: str) -> list[str]:
        for set_name, _definition, labels in self.store.label_sets(self.model_record()):
            if set_name == name:
                return labels
        raise self._not_run(name)

    def _not_run(self, name: str) -> LabelSetNotRun:
        record = self.model_record()
        known = ", ".join(self.label_sets()) or "none yet"
        others = [r.name for r in self.store.models()
                  if r.id != record.id and any(n == name for n, _, _ in self.store.label_sets(r))]
        fix = (f"It was run with {', '.join(others)}: pass --model {shlex.quote(others[0])} (each model keeps its "
               "own results), or run `clipdex classify` with it on this model." if others else
               "Run `clipdex classify` with it first.")
        return LabelSetNotRun(f"label set {name!r}", f"has not been run with {record.name} on index {self.path} "
                             f"(sets run with it: {known})", fix)

    def evaluate(self, name: str, table: str | os.PathLike[str] | None = None, key: str | None = None,
                 truth_column: str | None = None) -> tuple[Evaluation, int]:
        """Label set ``name``'s stored predictions against a column of a CSV table.

        Without a table, the corrections people made (web app) are the truth.
        Returns the evaluation and how many photos had a truth value (``evaluation.count`` of
        them were compared; truth values that are not labels of the set are in ``excluded``).
        """
        from clipdex.export import KeyMatcher, describe_columns, read_table

        result = self.classification(name)
        if table is None:
            if not result.truth or not any(result.truth):
                raise LabelSetError(f"label set {name!r}", "has no corrections to evaluate against",
                                    "Correct some photos in `clipdex serve`, or pass --metadata "
                                    "TABLE --key COLUMN --truth COLUMN.")
            pairs = [(p, t) for p, t in zip(result.predicted, result.truth) if t]
            return evaluate([p for p, _ in pairs], [t for _, t in pairs], result.labels), len(pairs)
        key = key or "path"
        truth_column = truth_column or name
        header, rows = read_table(table, key)
        if truth_column not in header:
            raise TableError(str(table), f"has no column {truth_column!r}",
                             f"Columns: {describe_columns(header)}. Name the truth column with --truth.")
        matcher = KeyMatcher(result.paths)
        position = {p: i for i, p in enumerate(result.paths)}
        predicted, truth = [], []
        for path, value in matcher.values(rows, key, truth_column):
            predicted.append(result.predicted[position[path]])
            truth.append(value)
        if not truth:
            raise TableError(str(table), f"no row with a {truth_column!r} value matches a photo of set "
                             f"{name!r}", f"Check that --key {key} names the photos (file stem or path).")
        return evaluate(predicted, truth, result.labels), len(truth)

    @_locked
    def counts(self) -> IndexCounts:
        """How many files the index holds, its folders and models: a few cheap catalog reads
        (no per-model counts, no vector checks), for a page that shows them on every request."""
        with self.store.snapshot():
            missing = self.store.missing_roots()
            counts = self.store.counts(missing)
            return IndexCounts(indexed=counts.get("ok", 0), failed=counts.get("failed", 0),
                               roots=self.store.roots(), missing_roots=missing,
                               models=[r.name for r in self.store.models()], videos=counts.get("videos", 0),
                               moments=counts.get("frames", 0))

    @_locked
    def status(self, *, verify: bool = False) -> IndexStatus:
        """What the index holds and what is wrong with it (cached until the index changes).

        Counts come from the catalog, read in one snapshot (an indexer committing
        meanwhile never makes them disagree); each vector file is checked by its
        length only (one ``stat``), never read: searching checks every vector it loads.
        ``verify`` reads and checks every vector too (O(rows x dim): zeroed or garbage
        rows in a file of the right length).
        """
        from clipdex.models.auto import cheap_host_key

        stamp = (self._stamp(), self.store.vectors_stamp())
        if not verify and self._status is not None and self._status[0] == stamp:
            return self._status[1]
        missing = list(self.store.missing_roots())
        problems: list[str] = []
        models = []
        option = index_option(self.path)
        with self.store.snapshot():
            counts = self.store.counts(missing)
            for record in self.store.models():
                damage = self.store.vector_damage(record, missing, full=verify)
                lost = damage.photos if damage is not None else 0
                backend = None if damage is not None else backend_of(self.store, record)
                reclaimable = self.store.reclaimable(record)[1]
                models.append(ModelStatus(key=record.key, name=record.name, dim=record.dim,
                                          photos=self.store.count_for_model(record, missing, "photos") - lost,
                                          moments=self.store.count_for_model(record, missing, "videos"),
                                          precision=record.precision, scoring=scoring_of(record.logit_bias),
                                          search=backend.note if backend else "",
                                          search_stale=bool(backend and backend.stale),
                                          reclaimable_bytes=reclaimable,
                                          precisions=self.store.precision_counts(record),
                                          choices=tuple(self.store.precision_choices(record.id))))
                if damage is not None:
                    problems.append(f"{damage.describe()}. {damage.fix(self.path)}")
                elif backend is not None and backend.stale:
                    problems.append(f"{record.name}: {backend.note}.")
                gone = _model_files_gone(record)
                if gone:
                    problems.append(gone)
                unencoded = self.store.unencoded_by_root(record, missing)
                if unencoded:
                    problems.append(
                        f"{sum(unencoded.values())} photos have no {record.name} vector. Run "
                        + " and ".join(f"`clipdex index {r}{option}`" for r in unencoded)
                        + " to encode them.")
            status = IndexStatus(path=str(self.path), roots=self.store.roots(), indexed=counts.get("ok", 0),
                                 failed=counts.get("failed", 0), models=models, missing_roots=missing,
                                 missing_photos=self.store.count_under(missing), problems=problems,
                                 readonly=self.store.readonly, host=cheap_host_key(self.device),
                                 videos=counts.get("videos", 0), moments=counts.get("frames", 0))
        self._status = (stamp, status)
        return status

    @_locked
    def failures(self) -> list[FileRecord]:
        """Files that could not be indexed, with their reasons."""
        return self.store.failures()


def _model_files_gone(record: ModelRecord) -> str | None:
    """What ``clipdex status`` says when the local files a model was built from (an ONNX export folder,
    a Transformers checkpoint folder, a weights file) are no longer where the index recorded them."""
    try:
        spec = ModelSpec.from_json(record.spec_json)
    except (TypeError, ValueError):
        return None
    if not spec.weights or os.path.exists(spec.weights):
        return None
    how = {"onnx": "--model onnx:/its/new/folder", "hf": "--model hf:/its/new/folder"}.get(
        spec.family, "--weights FILE" + (" --model-config FILE.json" if spec.config else ""))
    return (f"{record.name}: {spec.weights} is gone (moved or deleted); text searches, uploads and indexing need "
            f"it. If it moved, pass {how} once and the index records the new place.")


def _check_unchanged(spec: ModelSpec, index: Path) -> None:
    """:class:`ModelError` if the local weights the index was built with changed since (a Trainer
    that wrote new weights into the same folder): vectors of the new weights under the old key
    would not be comparable with the old. Each file is hashed again only when its size or time
    changed."""
    if not spec.weights_sha256:
        return
    if spec.family == "hf":
        from clipdex.models.hf import fingerprint_folder

        now = fingerprint_folder(Path(spec.weights or ""))
    else:
        from clipdex.models.registry import fingerprint_weights

        now = fingerprint_weights(spec.weights or "")
    if now[:FINGERPRINT_BYTES] != spec.weights_sha256[:FINGERPRINT_BYTES]:
        again = (f"--model {shlex.quote(spec.name)}" if spec.family == "hf"
                 else f"--weights {shlex.quote(spec.weights or '')}")
        raise ModelError(f"the weights at {spec.weights} changed since index {index} was built with them "
                         f"(fingerprint {spec.weights_sha256[:FINGERPRINT_BYTES]}, now {now[:FINGERPRINT_BYTES]}): "
                         f"new vectors would not be comparable with the index's. Index with the new weights "
                         f"beside the old ones with `clipdex index PHOTO_DIR {again} --add-model` and pass {again} "
                         "to search or classify with them, or put the old weights back.")


def _named(name: str, key: str) -> str:
    """How messages name a model: 'ViT-B-32/openai', or 'hf:/data/clip (hf@sha256:…)'."""
    return key if name == key or key.startswith(f"{name}#") else f"{name} ({key})"


def _default_precision() -> str:
    """The precision used when none is given: CLIPDEX_PRECISION, else auto."""
    from clipdex.models.precision import PRECISIONS
    from clipdex.settings import default_precision

    value = default_precision() or AUTO
    if value not in PRECISIONS:
        raise ClipdexError(f"CLIPDEX_PRECISION={value!r} is not a precision: set it to one of "
                           f"{', '.join(PRECISIONS)}, or unset it for auto")
    return value


def _precision_source(given: str | None, asked: str) -> str:
    """Where a precision asked for came from, as the summary names it."""
    return f"--precision {asked}" if given else f"CLIPDEX_PRECISION={asked}"


class _PrecisionPlan:
    """How one :meth:`Index.add` computes new vectors: the precision asked for, or the one
    ``auto`` chooses, when the first photo needs encoding (a folder with nothing to encode
    builds no encoder and chooses nothing).

    Auto reuses the choice the index recorded for the model on this kind of host with the
    same ``min_cosine``; otherwise it checks the candidates on the first photos of the folder
    that need encoding (:func:`clipdex.models.auto.choose`) and records what it chose.
    """

    def __init__(self, index: Index, spec: ModelSpec, asked: str, min_cosine: float, walk: "Walk",
                 settings: IndexSettings, record: ModelRecord | None) -> None:
        self.index = index
        self.spec = spec
        self.min_cosine = min_cosine
        self.walk = walk
        self.settings = settings
        self.record = record
        self.auto = asked == AUTO
        self.precision: str | None = None if asked == AUTO else asked
        self.note = "" if asked == AUTO else f"asked for ({_precision_source(index.precision, asked)})"
        self.choice: PrecisionChoice | None = None  # a choice made now, recorded once the model is
        self._built: dict[str, Encoder] = {}

    def encoder(self) -> "Encoder":
        """The encoder new vectors are computed with (auto decides first)."""
        from clipdex.models.factory import make_encoder

        if self.precision is None:
            self._decide()
        assert self.precision is not None
        built = self._built.get(self.precision)
        return built or make_encoder(self.spec, device=self._device(), precision=self.precision)

    def _build(self, precision: str) -> "Encoder":
        """The encoder for ``precision``, loaded (so that one that cannot run fails here)."""
        from clipdex.models.factory import make_encoder

        built = make_encoder(self.spec, device=self._device(), precision=precision)
        built.load()
        return built

    def _device(self) -> str | None:
        """The index's device; but int8 vectors, which only the CPU computes, on the CPU where
        auto keeps an int8 set on a machine whose default device is a GPU."""
        from clipdex.models.devices import pick_device

        if self.auto and self.precision is not None and vector_family(self.precision) == "int8" \
                and pick_device(self.index.device) != "cpu":
            on_cpu = ("; this index holds int8 vectors: encoded on the CPU; `--precision fp16 --add-model` "
                      "starts a GPU set")
            if on_cpu not in self.note:  # asked for each encoder built
                self.note += on_cpu
            return "cpu"
        return self.index.device

    def recorded(self, record: ModelRecord) -> None:
        """The model is registered now: record the choice made for it."""
        self.record = record
        if self.choice is not None:
            self.index.store.set_precision_choice(record.id, self.choice)

    def _decide(self) -> None:
        from clipdex.models import auto

        store = self.index.store
        host = auto.host_key(self.index.device)
        family = None if self.record is None else key_family(self.record.key)
        recorded = store.get_precision_choice(self.record.id, host) if self.record is not None else None
        if (recorded is not None and recorded.min_cosine == self.min_cosine
                and vector_family(recorded.precision) == family):
            self.precision = recorded.precision
            when = time.strftime("%Y-%m-%d", time.localtime(recorded.chosen_at or 0))
            self.note = f"auto: {recorded.reason} (checked on {when}, recorded in the index)"
            try:
                self._built[recorded.precision] = self._build(recorded.precision)
                return
            except Exception as e:  # e.g. OpenVINO uninstalled or broken since: choose again
                log.warning("--precision auto: %s, recorded for this machine on %s, can no longer be used "
                            "(%s); checking again", recorded.describe(), when, first_line(e))
                log.debug("the recorded precision's encoder failed", exc_info=True)
                self.precision, self.note = None, ""
        # An int8 set stays int8, and where only fp32 is possible nothing is decoded to check it.
        needed = auto.needs_sample(self.spec, self.index.device, self.min_cosine, family)
        sample = self._sample() if needed else []
        if sample:
            log.info("--precision auto: checking which precision keeps cosine >= %g to fp32 on %d of your "
                     "photos (once per model and kind of machine)", self.min_cosine, len(sample))
        choice = auto.choose(self.spec, self.index.device, sample, self.min_cosine, family,
                             encoders=self._built, host=host)
        self.precision, self.note = choice.precision, f"auto: {choice.reason}"
        # Keep only the chosen encoder: the others (a reference fp32 model among them) are memory.
        self._built = {p: e for p, e in self._built.items() if p == choice.precision}
        # A choice made on no photo (none decoded, or a rule), on a tiny folder's few photos, or with a
        # candidate that failed to run (a broken runtime) is this run's only: the next run checks again.
        if choice.worth_recording:
            self.choice = choice
            if self.record is not None:
                store.set_precision_choice(self.record.id, choice)

    def _sample(self) -> list[np.ndarray]:
        """The first photos of the folder that need encoding, preprocessed (up to
        :data:`clipdex.models.auto.SAMPLE_PHOTOS`)."""
        from clipdex.models import auto
        from clipdex.models.factory import make_encoder

        store = self.index.store
        known = store.files_under(self.walk.display_root)
        embedded = store.embedded_hashes(self.record) if self.record is not None else {}
        paths: list[str] = []
        videos: list[str] = []
        for entry in self.walk.files:
            found = known.get(entry.path)
            if found is not None and (found.size, found.mtime_ns) == (entry.size, entry.mtime_ns) and (
                    found.status == "failed" or found.content_hash in embedded or is_video(entry.path)):
                continue  # unchanged: nothing to encode (or failed, and most likely fails again)
            (videos if is_video(entry.path) else paths).append(entry.fs_path)
        reference = self._built.get("fp32")
        if reference is None:
            reference = make_encoder(self.spec, device=self.index.device, precision="fp32")
            self._built["fp32"] = reference
        draft = draft_size(reference) if self.settings.reduced_decode else None
        found_photos = auto.sample_photos(paths, reference.preprocess, skip_hashes=embedded.__contains__,
                                          max_megapixels=self.settings.max_megapixels, draft_size=draft)
        # Too few photos to encode (a folder of videos): the check runs on the first videos' frames.
        return found_photos + self._sample_frames(videos, reference.preprocess, draft,
                                                  auto.SAMPLE_PHOTOS - len(found_photos))

    def _sample_frames(self, videos: list[str], preprocess: Callable[..., np.ndarray], draft: int | None,
                       count: int) -> list[np.ndarray]:
        """Up to ``count`` frames of ``videos``, sampled as the indexer samples them and preprocessed."""
        from clipdex.errors import ImageDecodeError
        from clipdex.video_sampling import sample

        found: list[np.ndarray] = []
        for path in videos:
            if len(found) >= count:
                break
            try:
                for frame in sample(path, interval=self.settings.video_interval, min_side=draft,
                                    max_megapixels=self.settings.max_megapixels):
                    found.append(preprocess(frame.image))
                    if len(found) >= count:
                        break
            except (OSError, ImageDecodeError):
                continue
        return found


class _ProbedEncoder:
    """A query encoder whose towers are checked against the index's probe (:meth:`Index._check_source`)
    before their first use: a text search checks the text tower only (the image tower is never loaded
    for it), a search by an example image the image tower. Everything else is the encoder's.

    No lock is held while checking (two threads may both check once: it is idempotent); a failed
    check is remembered and raised again without encoding anything."""

    def __init__(self, encoder: "Encoder", index: Index) -> None:
        self._encoder = encoder
        self._index = index
        self._checked: set[str] = set()
        self._refused: dict[str, ModelError] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def _check(self, tower: str) -> None:
        if tower in self._checked:
            return
        if tower in self._refused:
            raise self._refused[tower]
        record = self._index._probe_record()
        if record is None:
            return  # nothing to compare with yet; asked again on the next use
        try:
            self._index._check_source(record, self._encoder, (tower,))
        except ModelMismatch as e:
            self._refused[tower] = e
            raise
        self._checked.add(tower)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self._check(probes.TEXT)
        return self._encoder.encode_texts(texts)

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        self._check(probes.IMAGE)
        return self._encoder.encode_images(batch)

    def encode_pil(self, images: Sequence["Image.Image"]) -> np.ndarray:
        self._check(probes.IMAGE)
        return self._encoder.encode_pil(images)


def _encode_terms(encoder: "Encoder", terms: list[QueryTerm], texts: list[str],
                  files: dict[int, str]) -> dict[int, np.ndarray]:
    """The vectors of a query's texts and image files, by term position."""
    from clipdex.decode import open_image_file

    vectors = {i: encoder.encode_pil([open_image_file(path)])[0] for i, path in files.items()}
    text_vectors = iter(encoder.encode_texts(texts) if texts else [])
    vectors.update({i: next(text_vectors) for i, t in enumerate(terms) if t.kind == "text"})
    return vectors


def _combine(query: str | list[QueryTerm], terms: list[QueryTerm], vectors: list[np.ndarray]) -> np.ndarray:
    """:func:`clipdex.search.combine`, whose errors name the query (it sees only vectors)."""
    try:
        return combine(vectors, [t.weight for t in terms])
    except QueryError as e:
        shown = query if isinstance(query, str) else " + ".join(f"{t.weight:g}*{t.value}" for t in terms)
        raise QueryError(shown, e.problem) from None


class _Renumbered(Exception):
    """Another process renumbered the rows (compaction) while a search was ranking them."""


@dataclass(frozen=True)
class _Plan:
    """One search's view of the catalog (see :meth:`Index._plan`)."""

    engine: ModelSearch
    filters: SearchFilter | None
    hidden: tuple[str, ...]
    allowed: np.ndarray | None  # sorted rows a result may come from; None: any row
    exact: bool = False

    def with_allowed(self, allowed: np.ndarray) -> "_Plan":
        return _Plan(self.engine, self.filters, self.hidden, allowed, self.exact)


def _in_rank_order(ranked: Hits, photos: list[RowPhoto], per_video: int | None) -> list[RowPhoto]:
    """``photos`` in the order of their rows in ``ranked`` (copies by path), each video's
    moments folded (:func:`clipdex.video.fold_moments`)."""
    position = {row: i for i, row in enumerate(ranked.rows.tolist())}
    ordered = sorted(photos, key=lambda p: (position[p.row], p.path))
    return fold_moments(ordered, per_video)


def _result(rank: int, score: float, photo: RowPhoto) -> SearchResult:
    """A search result: a photo, or a moment (its path the video's, with its time)."""
    if photo.video_id is None or photo.frame_t is None:
        return SearchResult(rank=rank, score=score, path=photo.path, file_id=photo.file_id)
    found = split_frame_path(photo.path)
    video = found[0] if found else photo.path
    return SearchResult(rank=rank, score=score, path=video, file_id=photo.file_id, t=photo.frame_t,
                        video_id=photo.video_id)


def _check_page(what: str, k: int, offset: int) -> None:
    if not 1 <= k <= MAX_K:
        raise QueryError(what, f"k must be between 1 and {MAX_K}")
    if offset < 0:
        raise QueryError(what, f"the offset must be 0 or more, not {offset}")
    if offset + k > MAX_OFFSET:
        raise QueryError(what, f"results go no deeper than {MAX_OFFSET:,}; narrow the search with filters")


def _with_label(filters: SearchFilter | None, label: tuple[str, str] | None) -> SearchFilter | None:
    if label is None:
        return filters or None
    base = filters or SearchFilter()
    return SearchFilter(label=label, folders=base.folders, after=base.after, before=base.before)
