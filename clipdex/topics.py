"""Topics: what a collection holds, from its stored vectors alone (no image is decoded).

1. **Clustering.** Spherical k-means: scikit-learn's ``KMeans`` (k-means++, Lloyd) on the unit
   vectors, its centroids normalised, every photo then assigned to the centroid it is most
   cosine-similar to (so a photo's topic is also its most probable one). From
   :data:`FAISS_MIN_ROWS` rows on, faiss's spherical ``Kmeans`` fits instead: measured 4-7x faster
   on 20,000 CLIP-like vectors (k 17 and 40: 2.0 s against 7.4 s, 0.55 s against 3.8 s, 2 cores)
   with a mean cosine to the centroid within 0.003 of scikit-learn's. Above
   :data:`FIT_SAMPLE_MAX` photos the centroids are fitted on a seeded sample and every photo is
   assigned in chunks: a million vectors cost one (N x k) product, not k-means on all of them.
2. **Choosing k** (unless given): the mean silhouette (cosine) of k-means fits on a sample, over a
   range that grows with the collection (:func:`k_range`). The floor of that range matters:
   collections of photos are a continuum, and the silhouette alone prefers k = 2 on real CLIP
   vectors (the shared 1,000 Unsplash photos: 0.121 at k = 2, 0.111 at k = 10), which tells a
   person nothing; an overview of 1,000 photos needs a dozen topics or so.
3. **Naming.** Every concept of a vocabulary (clipdex's built-in ~2,000 everyday objects, scenes
   and activities, :data:`VOCABULARY_FILE`, plus the user's own label files) is encoded once per
   model (its prompts averaged, as zero-shot classification does) and cached in the index folder,
   so a rerun encodes nothing. A topic takes the concept that best tells it apart: its centroid's
   cosine to the concept minus the mean cosine of the *other* centroids to it (a concept close to
   every photo, "a photo", names nothing); names are kept unique across topics by an optimal
   assignment, and the next candidates are kept with their scores. The user's stored label sets
   add each topic's majority label where it is strong (:data:`MAJORITY_SHARE`). Without the
   model's text encoder (an index of imported vectors, weights not on this machine) topics are
   numbered ("topic 1") or named by those majority labels, and the result says why; a name is
   never made up.
4. **Stored as a label set** through :meth:`clipdex.Index.save_classification` (its ``origin``:
   ``{"kind": "topics", ...}``), so search filters, review grids, exports and the web pages work
   on it. A photo's probabilities are a softmax over its cosines to the centroids at
   :data:`TEMPERATURE`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.classify import Classification, mean_direction, softmax
from clipdex.errors import LabelSetError, ModelError
from clipdex.labels import (
    MULTI_SEPARATOR,
    NAME,
    RESERVED_SET_NAMES,
    UNCERTAIN,
    Label,
    LabelSet,
    load_label_sets,
    read_label_text,
)

if TYPE_CHECKING:
    from clipdex.index import Index

log = logging.getLogger(__name__)

KIND = "topics"  # the label set's origin kind
DEFAULT_SET_NAME = "topics"
VOCABULARY_FILE = Path(__file__).with_name("vocabulary") / "concepts.tsv"
# Prompt templates per kind of concept (CLIP's own for ImageNet, SUN397 and Kinetics; one
# plain template for the mass nouns and plurals of clipdex's own list and the user's words).
KIND_TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": ("a photo of a {}.", "a photo of the {}."),
    "scene": ("a photo of a {}.", "a photo of the {}."),
    "activity": ("a photo of a person {}.", "a photo of {}."),
    "general": ("a photo of {}.",),
}
CACHE_DIR = "topics-cache"  # in the index folder: concept vectors per model and vocabulary
ENCODE_BATCH = 256  # prompts per text-encoder call (bounded memory on a CPU)

K_MIN = 2
K_FLOOR_MAX = 30  # the smallest automatic k never exceeds this (a million photos: 30..60 topics)
K_CEILING_MAX = 60  # the most topics chosen automatically: a page a person can read
MAX_K = 1000  # the most topics -k may ask for
K_GRID_STEPS = 10  # at most this many k values are tried between floor and ceiling (geometric)
CHOOSE_SAMPLE_MAX = 10_000  # photos the candidate k-means fits are made on
SILHOUETTE_SAMPLE_MAX = 3_000  # photos the silhouette is computed on (it is O(n^2))
CHOOSE_N_INIT = 2  # k-means restarts per candidate k (the final fit makes more)
FIT_N_INIT = 4
FIT_SAMPLE_MAX = 100_000  # above this, centroids are fitted on a sample, then every photo assigned
FIT_SAMPLE_PER_TOPIC = 512  # ... of at least this many photos per topic (faiss's default is 256)
FAISS_MIN_ROWS = 5_000  # k-means on this many rows or more runs in faiss (4-7x faster than scikit-learn)
SMALL_FIT_THREADS = 1  # threads of a scikit-learn fit (below FAISS_MIN_ROWS rows; see _kmeans)
FAISS_ITERATIONS = 25  # faiss's default Lloyd iterations
ASSIGN_CHUNK = 65_536  # photos per (chunk x k) product when assigning

TEMPERATURE = 0.02  # softmax(cosine / TEMPERATURE) over the centroids: a photo's topic probabilities
NAME_CONTRAST = 1.0  # weight of the other centroids' mean cosine subtracted from a concept's score
NAME_CANDIDATES = 5  # candidate names kept per topic (the chosen one first)
MAJORITY_SHARE = 0.6  # a stored label names a topic when at least this share of its photos has it
TYPICAL_PHOTOS = 12  # most typical photos (nearest the centroid) kept per topic

Progress = Callable[[int, int], None]


# -- the vocabulary ------------------------------------------------------------
@dataclass(frozen=True)
class Concept:
    """One name a topic may take, with the prompts that describe it and where it came from."""

    name: str
    kind: str
    source: str
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    """Concepts to name topics with; ``description`` says which lists (for the user and the origin)."""

    concepts: tuple[Concept, ...]
    description: str

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def digest(self) -> str:
        """A hash of every concept's name and prompts: the cache key of its text vectors."""
        h = hashlib.sha256()
        for c in self.concepts:
            h.update(c.name.encode("utf-8") + b"\0" + "\0".join(c.prompts).encode("utf-8") + b"\1")
        return h.hexdigest()


@lru_cache(maxsize=1)
def builtin_concepts() -> tuple[Concept, ...]:
    """clipdex's built-in vocabulary (``vocabulary/concepts.tsv``; sources in its SOURCES.md)."""
    concepts = []
    for number, line in enumerate(VOCABULARY_FILE.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        kind, name, source = line.split("\t")
        if kind not in KIND_TEMPLATES:  # a mistake in the data file, not the user's
            raise ValueError(f"{VOCABULARY_FILE} line {number}: unknown kind {kind!r}")
        concepts.append(Concept(name, kind, source, tuple(t.replace("{}", name) for t in KIND_TEMPLATES[kind])))
    return tuple(concepts)


def user_concepts(path: str | Path) -> list[Concept]:
    """Concepts from a user's file: a label file (TOML, YAML or JSON: every set's labels, with
    their own prompts) or a text file with one name a line (``#`` starts a comment)."""
    path = Path(path)
    if path.suffix.lower() in (".toml", ".yaml", ".yml", ".json"):
        return [Concept(label.name, "user", str(path), label.prompts)
                for label_set in load_label_sets(path) for label in label_set.labels]
    text = read_label_text(path, "the --labels file")
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    concepts = []
    for number, name in enumerate(names, 1):
        if not name:
            continue
        if MULTI_SEPARATOR in name or name.casefold() == UNCERTAIN:
            raise LabelSetError(f"{path} line {number}", f"{name!r} cannot be a label "
                                f"(it holds {MULTI_SEPARATOR!r} or is reserved)", "Choose another name.")
        concepts.append(Concept(name, "user", str(path), tuple(t.replace("{}", name)
                                                              for t in KIND_TEMPLATES["general"])))
    if not concepts:
        raise LabelSetError(str(path), "names no concept", "Write one name a line (or use a label file).")
    return concepts


def make_vocabulary(label_files: Sequence[str | Path] = (), *, builtin: bool = True) -> Vocabulary:
    """The built-in concepts (unless ``builtin`` is false) and those of the user's files; a user's
    concept replaces a built-in one of the same name (ignoring case), with its own prompts."""
    own = [c for path in label_files for c in user_concepts(path)]
    mine = {c.name.casefold() for c in own}
    base = [c for c in builtin_concepts() if c.name.casefold() not in mine] if builtin else []
    seen: set[str] = set()
    concepts = []
    for c in own + base:
        if c.name.casefold() not in seen:
            seen.add(c.name.casefold())
            concepts.append(c)
    parts = ([f"clipdex built-in ({len(base)} concepts)"] if builtin else []) + \
        [f"{Path(p).name} ({sum(1 for c in own if c.source == str(Path(p)))})" for p in label_files]
    return Vocabulary(tuple(concepts), " + ".join(parts) or "none")


# -- clustering ---------------------------------------------------------------
@dataclass(frozen=True)
class KChoice:
    """How k was chosen: ``method`` "given" (``-k``) or "silhouette" with the scores tried."""

    k: int
    method: str
    low: int
    high: int
    scores: dict[int, float] = field(default_factory=dict)
    sample: int = 0

    def describe(self) -> str:
        if self.method == "given":
            return f"k = {self.k} (given)"
        if self.method == "only":
            return f"k = {self.k}: the only k the range allows for so few photos"
        return (f"k = {self.k}: best mean silhouette (cosine) of k = {self.low}..{self.high} "
                f"on {self.sample} photos")

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "method": self.method, "range": [self.low, self.high], "sample": self.sample,
                "silhouette": {str(k): round(s, 4) for k, s in self.scores.items()}}


def k_range(n: int) -> tuple[int, int]:
    """The automatic k's range for ``n`` photos: about sqrt(n)/4 to sqrt(n), within
    [:data:`K_MIN`, :data:`K_FLOOR_MAX`] and [floor + 1, :data:`K_CEILING_MAX`], never above n - 1
    (1,000 photos: 8..32; 100,000: 30..60)."""
    root = float(np.sqrt(max(n, 1)))
    low = int(min(max(K_MIN, round(root / 4)), K_FLOOR_MAX))
    high = int(min(max(low + 1, round(root)), K_CEILING_MAX))
    high = max(K_MIN, min(high, n - 1))
    return min(low, high), high


def _k_grid(low: int, high: int) -> list[int]:
    if high - low + 1 <= K_GRID_STEPS:
        return list(range(low, high + 1))
    grid = np.unique(np.round(np.geomspace(low, high, K_GRID_STEPS)).astype(int))
    return [int(k) for k in grid]


def _kmeans(vectors: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    """Unit centroids (k, dim) of k-means on unit ``vectors``, seeded: scikit-learn's KMeans below
    :data:`FAISS_MIN_ROWS` rows, faiss's spherical Kmeans from there on (see the module docstring)."""
    if len(vectors) >= FAISS_MIN_ROWS:
        import faiss

        model = faiss.Kmeans(vectors.shape[1], k, niter=FAISS_ITERATIONS, nredo=n_init, seed=seed, spherical=True,
                             min_points_per_centroid=1, max_points_per_centroid=len(vectors), verbose=False)
        model.train(np.ascontiguousarray(vectors, dtype=np.float32))
        return _unit(np.asarray(model.centroids, dtype=np.float32))
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # One thread: on these few rows OpenMP's threads only wait for each other (1,000 photos, 2 busy
    # cores: choosing k took 18.5 s with them, 0.7 s without). Fewer distinct photos than k: the
    # empty topics are dropped later, so scikit-learn's warning says nothing to the user.
    with warnings.catch_warnings(), threadpool_limits(limits=SMALL_FIT_THREADS):
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(vectors)
    return _unit(fitted.cluster_centers_.astype(np.float32))


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _sample(n: int, most: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=most, replace=False)) if n > most else np.arange(n)


def choose_k(vectors: np.ndarray, seed: int = 0, progress: Progress | None = None) -> KChoice:
    """The k of best mean silhouette (cosine) over :func:`k_range`, fitted on a sample."""
    from sklearn.metrics import silhouette_score

    n = len(vectors)
    low, high = k_range(n)
    if low == high:  # nothing to compare (and no silhouette of n topics of n photos)
        return KChoice(low, "only", low, high)
    rng = np.random.default_rng(seed)
    fit_rows = _sample(n, CHOOSE_SAMPLE_MAX, rng)
    fit = vectors[fit_rows]
    score_rows = _sample(len(fit), SILHOUETTE_SAMPLE_MAX, rng)
    grid = _k_grid(low, high)
    scores: dict[int, float] = {}
    for done, k in enumerate(grid):
        centroids = _kmeans(fit, k, seed, CHOOSE_N_INIT)
        labels = assign(fit[score_rows], centroids)[0]
        scores[k] = float(silhouette_score(fit[score_rows], labels, metric="cosine")) \
            if len(np.unique(labels)) > 1 else -1.0
        if progress:
            progress(done + 1, len(grid))
    best = max(scores, key=lambda k: (scores[k], -k))
    return KChoice(best, "silhouette", low, high, scores, len(score_rows))


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest unit centroid by cosine and the (rows, k) cosines, in chunks."""
    cosines = np.empty((len(vectors), len(centroids)), dtype=np.float32)
    for start in range(0, len(vectors), ASSIGN_CHUNK):
        chunk = vectors[start:start + ASSIGN_CHUNK].astype(np.float32, copy=False)
        cosines[start:start + len(chunk)] = chunk @ centroids.T
    return cosines.argmax(axis=1) if len(cosines) else np.zeros(0, np.int64), cosines


def fit_centroids(vectors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Unit centroids of k-means on ``vectors`` (on a seeded sample above :data:`FIT_SAMPLE_MAX`)."""
    n = len(vectors)
    most = max(FIT_SAMPLE_MAX, FIT_SAMPLE_PER_TOPIC * k)
    rows = _sample(n, most, np.random.default_rng(seed + 1))
    return _kmeans(vectors[rows], k, seed, FIT_N_INIT)


# -- naming -------------------------------------------------------------------
def concept_vectors(index: Index, vocabulary: Vocabulary,
                    progress: Progress | None = None) -> tuple[np.ndarray | None, ModelError | None, bool]:
    """(unit concept vectors (concepts, dim), the model's error when there are none, whether they
    came from the cache).

    Read from the index folder's cache when this model has encoded this vocabulary before;
    otherwise every prompt is encoded once (in batches) and the cache written (not on a
    read-only index). Without the model's text encoder: (None, its :class:`ModelError`, False).
    """
    record = index.model_record()
    path = _cache_path(index, record.key, vocabulary)
    cached = _read_cache(path, len(vocabulary.concepts), record.dim)
    if cached is not None:
        return cached, None, True
    prompts = [p for c in vocabulary.concepts for p in c.prompts]
    try:
        encoder = index.encoder
        parts = []
        for start in range(0, len(prompts), ENCODE_BATCH):
            parts.append(np.asarray(encoder.encode_texts(prompts[start:start + ENCODE_BATCH]), np.float32))
            if progress:
                progress(min(start + ENCODE_BATCH, len(prompts)), len(prompts))
    except ModelError as e:
        return None, e, False
    vectors = np.concatenate(parts) if parts else np.zeros((0, record.dim), np.float32)
    out = np.empty((len(vocabulary.concepts), vectors.shape[1]), dtype=np.float32)
    start = 0
    for i, c in enumerate(vocabulary.concepts):
        out[i] = mean_direction(vectors[start:start + len(c.prompts)])
        start += len(c.prompts)
    if not index.store.readonly:
        _write_cache(path, out)
    return out, None, False


def naming_note(model: str, vocabulary: str = "") -> str:
    """What a user reads when topics could not be named by the vocabulary (the model's own error,
    with its fix, goes beside it as the detail); ``vocabulary`` names what went unused (your
    --labels files among it)."""
    unused = f" ({vocabulary}: not used)" if vocabulary else ""
    return (f"Topics are not named: naming needs the text encoder of {model}, which cannot be loaded here"
            f"{unused}. They are stored numbered (or named by your label sets' majority labels); run `clipdex "
            "topics` again where the model loads (or with --weights FILE) to name them.")


def _cache_path(index: Index, model_key: str, vocabulary: Vocabulary) -> Path:
    model = hashlib.sha256(model_key.encode("utf-8")).hexdigest()[:16]
    return index.path / CACHE_DIR / f"{model}-{vocabulary.digest()[:16]}.npy"


def _read_cache(path: Path, rows: int, dim: int) -> np.ndarray | None:
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if vectors.shape != (rows, dim) or vectors.dtype != np.float32 or not np.isfinite(vectors).all():
        log.warning("%s does not hold %d vectors of %d dimensions: encoding the vocabulary again", path, rows, dim)
        return None
    return np.asarray(vectors)


def _write_cache(path: Path, vectors: np.ndarray) -> None:
    from clipdex.fileio import write_atomically

    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    try:
        write_atomically(path, buffer.getvalue())
    except OSError as e:  # a cache: the names are right without it, only the next run is slower
        log.warning("cannot write the vocabulary's vectors to %s (%s); the next run encodes them again",
                    path, e.strerror or e)


def name_scores(centroids: np.ndarray, concepts: np.ndarray) -> np.ndarray:
    """(topics, concepts): a concept's cosine to a topic's centroid minus :data:`NAME_CONTRAST`
    times its mean cosine to the other topics' centroids (what tells this topic apart)."""
    cos = centroids @ concepts.T
    k = len(centroids)
    if k < 2:
        return cos
    others = (cos.sum(axis=0, keepdims=True) - cos) / (k - 1)
    return cos - NAME_CONTRAST * others


def unique_names(scores: np.ndarray) -> np.ndarray:
    """A concept per topic (row), no concept twice, of the largest total score (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-scores)
    chosen = np.empty(len(scores), dtype=np.int64)
    chosen[rows] = cols
    return chosen


# -- the result ---------------------------------------------------------------
@dataclass(frozen=True)
class Majority:
    """A stored label set's label that most of a topic's photos have."""

    set_name: str
    label: str
    share: float


@dataclass
class Topic:
    """One cluster: its name (and how it got it), size, most typical photos and other names."""

    number: int  # 1 = the largest
    name: str
    named_by: str  # "vocabulary", "labels" or "number"
    size: int
    typical: list[int]  # file ids, nearest the centroid first
    typical_paths: list[str]
    candidates: list[tuple[str, float]]  # vocabulary names with their scores, the chosen one first
    majorities: list[Majority]

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "name": self.name, "named_by": self.named_by, "size": self.size,
                "typical": [{"id": i, "path": p} for i, p in zip(self.typical, self.typical_paths)],
                "candidates": [{"name": n, "score": round(s, 4)} for n, s in self.candidates],
                "majorities": [{"set": m.set_name, "label": m.label, "share": round(m.share, 3)}
                               for m in self.majorities]}


@dataclass
class TopicsResult:
    """Topics found in an index, with the label set that stores them."""

    name: str
    model: str
    topics: list[Topic]
    choice: KChoice
    classification: Classification
    vocabulary: str
    naming_note: str | None  # why topics are not named by the vocabulary (no text encoder), else None
    naming_detail: str | None  # the model's error behind naming_note (what was looked for, the fix)
    cached_names: bool  # the vocabulary's vectors came from the index's cache (nothing encoded)
    saved: bool
    seconds: float
    # Corrections people made to an earlier topics set of this name whose label no topic has now
    # (they stay in the index, as every set's corrections do, and hide those photos from the topics).
    stale_corrections: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``clipdex topics --json`` and the web API."""
        return {"set": self.name, "model": self.model, "photos": len(self.classification.file_ids),
                "k": self.choice.to_dict(), "vocabulary": self.vocabulary, "naming_note": self.naming_note,
                "naming_detail": self.naming_detail,
                "temperature": TEMPERATURE, "saved": self.saved, "seconds": round(self.seconds, 3),
                "stale_corrections": self.stale_corrections,
                "topics": [t.to_dict() for t in self.topics]}


def check_set_name(name: str) -> None:
    """:class:`LabelSetError` unless ``name`` can name the topics' label set."""
    if not NAME.match(name):
        raise LabelSetError(f"--name {name!r}", "is not usable as a label set name",
                            "Use letters, digits, '_' and '-', starting with a letter.")
    if name in RESERVED_SET_NAMES:
        raise LabelSetError(f"--name {name!r}", "is a column every predictions table has",
                            f"Choose another name (not {' or '.join(RESERVED_SET_NAMES)}).")


def find_topics(index: Index, *, k: int | None = None, name: str = DEFAULT_SET_NAME, seed: int = 0,
                label_files: Sequence[str | Path] = (), builtin: bool = True, save: bool = True,
                progress: Progress | None = None, name_progress: Progress | None = None) -> TopicsResult:
    """Cluster the index's stored vectors into topics, name them, and store them as label set ``name``.

    ``k`` None chooses k (:func:`choose_k`); ``seed`` makes the run repeatable. ``label_files``
    add the user's concepts to the vocabulary (``builtin`` False: only theirs). An existing
    label set called ``name`` is replaced only when it holds topics too. ``progress`` is called
    (done, total) while k is chosen, ``name_progress`` while the vocabulary is encoded.
    """
    started = time.perf_counter()
    check_set_name(name)
    vocabulary = make_vocabulary(label_files, builtin=builtin)
    with index.lock:
        found = index.searchable()
        record = index.model_record()
        sets = index.label_set_definitions()
        if name in sets and sets[name].kind != KIND:
            raise LabelSetError(f"label set {name!r}", "already holds labels of another kind "
                                f"({sets[name].kind}) on this index",
                                "Choose another --name for the topics.")
        stored = {s: index.classification(s) for s, label_set in sets.items()
                  if s != name and label_set.kind != KIND}
    n = len(found.paths)
    if n < K_MIN:
        raise LabelSetError(f"topics of index {index.path}", f"it holds {n} photo{'s' if n != 1 else ''}",
                            "Clustering needs at least 2; index more photos first.")
    if k is not None and not K_MIN <= k <= min(MAX_K, n):
        raise LabelSetError(f"-k {k}", f"is not between {K_MIN} and {min(MAX_K, n)} (the index holds {n} photos)",
                            "Ask for fewer topics, or leave -k out to choose k automatically.")
    vectors = _unit(np.asarray(found.vectors, dtype=np.float32))
    choice = KChoice(k, "given", k, k) if k is not None else choose_k(vectors, seed, progress)
    centroids = fit_centroids(vectors, choice.k, seed)
    assigned, cosines = assign(vectors, centroids)
    # Topics by size (largest first); a centroid no photo is nearest to is dropped.
    sizes = np.bincount(assigned, minlength=len(centroids))
    order = [int(c) for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    centroids, cosines = centroids[order], cosines[:, order]
    assigned = cosines.argmax(axis=1)
    sizes = np.bincount(assigned, minlength=len(centroids))

    concept_vecs, problem, cached = (None, None, False)
    if vocabulary.concepts:
        concept_vecs, problem, cached = concept_vectors(index, vocabulary, name_progress)
    note = naming_note(record.name, vocabulary.description) if problem is not None else None
    # What named the topics, as the output and the stored origin say it: not a vocabulary left unused.
    described = vocabulary.description if problem is None else f"none ({vocabulary.description}: not used)"
    detail = str(problem) if problem is not None else None
    majorities = _majorities(found.ids, assigned, len(centroids), stored)
    names, named_by, candidates = _names(centroids, concept_vecs, vocabulary, majorities)

    typical: list[list[int]] = []
    for t in range(len(centroids)):
        members = np.flatnonzero(assigned == t)
        typical.append([int(i) for i in members[np.argsort(-cosines[members, t], kind="stable")][:TYPICAL_PHOTOS]])
    probs = softmax(cosines.astype(np.float64) / TEMPERATURE).astype(np.float32)
    topics = [Topic(t + 1, names[t], named_by[t], int(sizes[t]), [int(found.ids[i]) for i in typical[t]],
                    [found.paths[i] for i in typical[t]], candidates[t], majorities[t])
              for t in range(len(centroids))]
    label_set = LabelSet(
        name=name, labels=tuple(Label(t.name, _prompts(t, vocabulary)) for t in topics), templates=("{}",),
        origin={"kind": KIND, "k": len(topics), "method": _method(n, choice.k),
                "choice": choice.to_dict(), "seed": seed, "vocabulary": described,
                "vocabulary_digest": vocabulary.digest()[:16], "temperature": TEMPERATURE,
                "name_score": f"cosine to the centroid - {NAME_CONTRAST:g} x mean cosine to the other centroids",
                "naming_note": note, "naming_detail": detail, "photos": n, "model": record.key,
                "created": int(time.time()),
                "topics": [t.to_dict() for t in topics]})
    result = Classification(label_set=label_set, file_ids=found.ids.tolist(), paths=list(found.paths),
                            probs=probs, predicted=[names[int(a)] for a in assigned],
                            confidence=probs[np.arange(n), assigned], fs_paths=found.fs_paths)
    saved = False
    if save and index.store.readonly:
        log.warning("index %s is read-only: the topics are shown but not saved", index.path)
    elif save:
        index.save_classification(result)
        saved = True
    stale = 0
    if saved:
        with index.lock:
            known = set(names)
            stale = sum(1 for label in index.store.corrections(record, name).values() if label not in known)
    return TopicsResult(name, record.name, topics, KChoice(len(topics), choice.method, choice.low, choice.high,
                                                            choice.scores, choice.sample),
                        result, described, note, detail, cached, saved, time.perf_counter() - started,
                        stale)


def _method(n: int, k: int) -> str:
    """What fitted the centroids, in words (for the label set's origin)."""
    rows = min(n, max(FIT_SAMPLE_MAX, FIT_SAMPLE_PER_TOPIC * k))
    backend = "faiss Kmeans" if rows >= FAISS_MIN_ROWS else "scikit-learn KMeans (k-means++)"
    sample = f"a sample of {rows} of {n} photos" if rows < n else f"all {n} photos"
    return f"spherical k-means: {backend} on {sample}, then every photo to its nearest centroid by cosine"


def _prompts(topic: Topic, vocabulary: Vocabulary) -> tuple[str, ...]:
    if topic.named_by != "vocabulary":
        return ()
    return next((c.prompts for c in vocabulary.concepts if c.name == topic.name), ())


def _majorities(ids: np.ndarray, assigned: np.ndarray, k: int,
                stored: dict[str, Classification]) -> list[list[Majority]]:
    """Per topic, every stored set's label that at least :data:`MAJORITY_SHARE` of its photos have
    (a person's correction wins over the prediction; ``uncertain`` never names a topic)."""
    out: list[list[Majority]] = [[] for _ in range(k)]
    row_of = {int(i): r for r, i in enumerate(ids.tolist())}
    for set_name, result in stored.items():
        per_topic: list[dict[str, int]] = [{} for _ in range(k)]
        sizes = np.zeros(k, dtype=np.int64)
        for file_id, labels in zip(result.file_ids, result.effective_labels()):
            row = row_of.get(int(file_id))
            if row is None:
                continue
            t = int(assigned[row])
            sizes[t] += 1
            for label in labels:
                if label and label != UNCERTAIN:
                    per_topic[t][label] = per_topic[t].get(label, 0) + 1
        for t in range(k):
            for label, count in sorted(per_topic[t].items(), key=lambda item: -item[1]):
                if sizes[t] and count / sizes[t] >= MAJORITY_SHARE:
                    out[t].append(Majority(set_name, label, count / sizes[t]))
    return out


def _names(centroids: np.ndarray, concept_vecs: np.ndarray | None, vocabulary: Vocabulary,
           majorities: list[list[Majority]]) -> tuple[list[str], list[str], list[list[tuple[str, float]]]]:
    """Each topic's name, how it got it, and its candidate names with scores."""
    k = len(centroids)
    if concept_vecs is not None and len(vocabulary.concepts) >= k:
        scores = name_scores(centroids, concept_vecs)
        chosen = unique_names(scores)
        names, candidates = [], []
        for t in range(k):
            top = [int(j) for j in np.argsort(-scores[t], kind="stable")[:NAME_CANDIDATES]]
            ranked = [int(chosen[t])] + [j for j in top if j != chosen[t]][:NAME_CANDIDATES - 1]
            names.append(vocabulary.concepts[int(chosen[t])].name)
            candidates.append([(vocabulary.concepts[j].name, float(scores[t, j])) for j in ranked])
        return names, ["vocabulary"] * k, candidates
    names, named_by = [], []
    for t in range(k):
        if majorities[t]:
            names.append(", ".join(m.label for m in majorities[t]))
            named_by.append("labels")
        else:
            names.append(f"topic {t + 1}")
            named_by.append("number")
    seen: dict[str, int] = {}
    for t, name in enumerate(names):  # two topics with the same majority labels: number the later ones
        folded = " ".join(name.split()).casefold()
        seen[folded] = seen.get(folded, 0) + 1
        if seen[folded] > 1:
            names[t] = f"{name} ({seen[folded]})"
    return names, named_by, [[] for _ in range(k)]


# -- reading stored topics -------------------------------------------------------
def topic_sets(index: Index) -> list[str]:
    """Names of the index's label sets that hold topics (oldest first)."""
    with index.lock:
        return [s for s, label_set in index.label_set_definitions().items() if label_set.kind == KIND]


def stored_topics(result: Classification, typical: int = TYPICAL_PHOTOS) -> list[dict[str, Any]]:
    """A stored topics set's topics, largest first as found, for pages: name, photos now (a person's
    correction counts), the origin's candidates and majorities, and the most typical photos still
    in the topic (those the run recorded, else the most probable members)."""
    origin = result.label_set.origin or {}
    recorded = {t.get("name"): t for t in origin.get("topics", []) if isinstance(t, dict)}
    id_row = {int(i): r for r, i in enumerate(result.file_ids)}
    out = []
    for j, label in enumerate(result.labels):
        members = result.members(label)
        member_ids = {int(result.file_ids[r]) for r in members.tolist()}
        info = recorded.get(label, {})
        ids = [int(p["id"]) for p in info.get("typical", []) if int(p["id"]) in member_ids]
        if len(ids) < typical:
            ranked = members[np.argsort(-result.probs[members, j], kind="stable")] if len(members) else members
            ids += [int(result.file_ids[r]) for r in ranked.tolist() if int(result.file_ids[r]) not in ids]
        photos = [{"id": i, "path": result.paths[id_row[i]]} for i in ids[:typical]]
        out.append({"name": label, "size": len(members), "named_by": info.get("named_by", ""),
                    "candidates": info.get("candidates", []), "majorities": info.get("majorities", []),
                    "typical": photos})
    return out
