"""CLIP-like synthetic image vectors and queries, for benchmarking search at a million photos.

    python bench/synthetic.py            # real CLIP ViT-B/32 features vs generated ones, side by side
    python bench/synthetic.py --fit      # refit the constants below from the real features (~1-2 min)
    python bench/synthetic.py --rows 1000000   # also the statistics of a 1M collection (and its speed)

Uniform random unit vectors are a poor stand-in for CLIP features: in 512
dimensions any two are nearly orthogonal, every neighbour is as far as every
other, and an ANN index looks either perfect or hopeless. Real CLIP image
features sit in a narrow cone (two random photos have cosine ~0.63), vary along
a fast-decaying spectrum of directions, and come in groups of similar photos
(the nearest neighbour of a photo has cosine ~0.86 even among 1,000 curated
photos). Text embeddings sit in a cone of their own, across the "modality gap":
a query's best photo has cosine ~0.3.

The generator is a mixture: cluster centres drawn from a Gaussian with the
fitted mean norm and spectrum (in a fixed random basis), members around each
centre with a fitted spread (the spread varies from cluster to cluster;
cluster sizes are geometric, so some photos are alone), then normalised. Rows of
one cluster are consecutive, as a burst of photos is. Generation runs in blocks
of clusters, each from its own seeded random stream, so the first n rows of a
bigger collection are the collection of n rows with the same seed, and a
million rows take seconds.

The constants below were fitted from the real file
(/work/shared/datasets/unsplash-1k/clip-vit-b32/features.npy, 1,000 Unsplash
photos) by `python bench/synthetic.py --fit`: the generated statistics at
n = 1,000 (random-pair cosine, nearest-neighbour cosine percentiles, the
singular values of the centred rows) match the real ones. Nothing here reads
the real file except `--fit` and the side-by-side printout.
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REAL_FEATURES = Path("/work/shared/datasets/unsplash-1k/clip-vit-b32/features.npy")
DIM = 512
SPACE_SEED = 20240511          # the basis and mean direction: the "model", the same for every collection
CLUSTERS_PER_BLOCK = 256       # clusters generated per random stream (~1,000 rows)
STAT_SAMPLE = 2000             # rows used as queries when measuring nearest-neighbour cosine


@dataclass(frozen=True)
class Shape:
    """What the generator draws from (fitted by `--fit`).

    mean_norm: length of the mean image vector before normalising (random-pair cosine is about its square);
    alpha, offset, tail: variance of principal direction i is proportional to (i + offset)^-alpha * exp(-i / tail);
    within: the share of that variance that lies within a cluster (the rest separates cluster centres);
    within_alpha: the within-cluster spectrum is the global one to this power (flatter when < 1);
    cluster_size: mean cluster size (geometric sizes: some photos are alone);
    spread_sigma: cluster spreads vary as exp(N(0, spread_sigma)) times the mean spread.
    """

    mean_norm: float
    alpha: float
    offset: float
    tail: float
    within: float
    within_alpha: float
    cluster_size: float
    spread_sigma: float


# Fitted by `python bench/synthetic.py --fit` from the real ViT-B/32 features (see the module docstring).
FITTED = Shape(mean_norm=0.7935, alpha=0.8864, offset=2.299, tail=274.4, within=0.4744, within_alpha=0.9149,
               cluster_size=6.983, spread_sigma=0.2333)
# Cluster centres gather around TOPICS topic centres, which hold TOPIC_SHARE of the centres' variance. Not
# fitted (1,000 photos cannot show it: the statistics at n = 1,000 are the same with or without topics) but
# chosen so that a bigger collection has closer neighbours, as a real one does: nearest-neighbour cosine
# p5 / median 0.78 / 0.87 at 1k, 0.82 / 0.88 at 100k, 0.83 / 0.89 at 400k (without topics: flat 0.87).
TOPICS = 32
TOPIC_SHARE = 0.7


@dataclass(frozen=True)
class Space:
    """The fixed frame vectors live in: an orthonormal basis (columns), the mean image direction, and the
    topics' coefficients (standard normal; scaled by the spectrum when used)."""

    basis: np.ndarray
    mean_dir: np.ndarray
    topics: np.ndarray


@functools.lru_cache(maxsize=4)
def make_space(dim: int = DIM) -> Space:
    """The basis and mean direction, the same in every call (seeded by SPACE_SEED; computed once)."""
    rng = np.random.default_rng(SPACE_SEED)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    mean_dir = rng.standard_normal(dim)
    topics = rng.standard_normal((TOPICS, dim)).astype(np.float32)
    return Space(basis=q.astype(np.float32), mean_dir=(mean_dir / np.linalg.norm(mean_dir)).astype(np.float32),
                 topics=topics)


def spectra(shape: Shape, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """Standard deviations per principal direction: between cluster centres, and within a cluster.

    The total variance is 1 - mean_norm^2, so that vectors come out near unit length before normalising.
    """
    i = np.arange(dim, dtype=np.float64)
    var = (i + shape.offset) ** -shape.alpha * np.exp(-i / shape.tail)
    total = max(1.0 - shape.mean_norm ** 2, 1e-6)
    var = var / var.sum() * total
    within = var ** shape.within_alpha
    within = within / within.sum() * total * shape.within
    between = np.clip(var - within, 0.0, None)
    between = between / max(between.sum(), 1e-12) * total * (1.0 - shape.within)
    return np.sqrt(between).astype(np.float32), np.sqrt(within).astype(np.float32)


def _block(rng: np.random.Generator, shape: Shape, space: Space,
           sd_between: np.ndarray, sd_within: np.ndarray) -> np.ndarray:
    """One block of CLUSTERS_PER_BLOCK clusters, as unit float32 rows (cluster members consecutive)."""
    dim = len(sd_between)
    sizes = rng.geometric(1.0 / shape.cluster_size, CLUSTERS_PER_BLOCK)
    spreads = np.exp(rng.normal(0.0, shape.spread_sigma, CLUSTERS_PER_BLOCK)
                     - shape.spread_sigma ** 2).astype(np.float32)  # E[spread^2] = 1
    centres = rng.standard_normal((CLUSTERS_PER_BLOCK, dim), dtype=np.float32)
    centres *= np.float32(np.sqrt(1.0 - TOPIC_SHARE))
    centres += space.topics[rng.integers(0, len(space.topics), CLUSTERS_PER_BLOCK)] * np.float32(np.sqrt(TOPIC_SHARE))
    centres *= sd_between
    rows = int(sizes.sum())
    coeffs = rng.standard_normal((rows, dim), dtype=np.float32)
    coeffs *= sd_within
    coeffs *= np.repeat(spreads, sizes)[:, None]
    coeffs += np.repeat(centres, sizes, axis=0)
    block = coeffs @ space.basis.T
    block += space.mean_dir * np.float32(shape.mean_norm)
    block /= np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
    return block


def clip_like_vectors(n: int, dim: int = DIM, seed: int = 0, out: np.ndarray | None = None,
                      shape: Shape = FITTED) -> np.ndarray:
    """n unit float32 rows with the statistics of CLIP ViT-B/32 image features.

    Seeded and deterministic; the first k rows do not depend on n. `out` (an (n, dim) float32 array, e.g. a
    np.memmap) is filled in place and returned, so a million rows never need a second copy in memory.
    """
    if out is None:
        out = np.empty((n, dim), dtype=np.float32)
    elif out.shape != (n, dim):
        raise ValueError(f"out has shape {out.shape}, expected {(n, dim)}")
    space = make_space(dim)
    sd_between, sd_within = spectra(shape, dim)
    done, block_no = 0, 0
    while done < n:
        rng = np.random.Generator(np.random.SFC64([seed, block_no]))
        block = _block(rng, shape, space, sd_between, sd_within)
        take = min(len(block), n - done)
        out[done:done + take] = block[:take]
        done += take
        block_no += 1
    return out


def _sample_rows(vectors: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """m random rows (as float32), without reading a memory-mapped file in full."""
    rows = np.sort(rng.choice(len(vectors), size=min(m, len(vectors)), replace=False))
    return np.asarray(vectors[rows], dtype=np.float32)


def _mean_and_spread(vectors: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The collection's mean vector and the rms length of a centred row (from a sample)."""
    sample = _sample_rows(vectors, 20000, rng)
    mean = sample.mean(axis=0)
    return mean, float(np.sqrt(((sample - mean) ** 2).sum(axis=1).mean()))


# Image-like queries: most are another photo beside one of the collection's (a new member of its burst or
# topic); the rest are photos of something new. "Beside" is measured on the collection itself: a query is a
# row moved by the difference between another row and that row's nearest neighbour, so its distance and
# direction are those of real neighbours (its best cosine follows the collection's nearest-neighbour cosine).
IMAGE_FRESH_SHARE = 0.1
FRESH_MIX = 4                  # a new photo: the mean plus this many centred rows mixed (the same covariance)


def image_like_queries(vectors: np.ndarray, m: int, seed: int = 1) -> np.ndarray:
    """m held-out image vectors from the collection's distribution (unit float32 rows, none a row of `vectors`)."""
    rng = np.random.default_rng([seed, 7])
    fresh_n = round(m * IMAGE_FRESH_SHARE)
    near_n = m - fresh_n
    mean, _ = _mean_and_spread(vectors, rng)
    base = _sample_rows(vectors, near_n, rng)
    others = np.sort(rng.choice(len(vectors), size=min(near_n, len(vectors)), replace=False))
    _, neighbours = _nearest(vectors, others)
    steps = np.asarray(vectors[others], dtype=np.float32) - np.asarray(vectors[neighbours], dtype=np.float32)
    near_q = base + steps[rng.permutation(len(steps))]
    fresh = np.repeat(mean[None, :], fresh_n, axis=0)
    for _ in range(FRESH_MIX):
        fresh += (_sample_rows(vectors, fresh_n, rng) - mean)[rng.permutation(fresh_n)] / np.sqrt(FRESH_MIX)
    queries = np.concatenate([near_q, fresh]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries[rng.permutation(len(queries))]


# Text-like queries across the modality gap. A text vector is: the text cone's axis (TEXT_AXIS), which has
# cosine TEXT_AXIS_TO_IMAGES with the image mean; a pointer toward one photo's departure from the mean
# (TEXT_POINTER); and text-only noise (TEXT_NOISE, in directions of the images' variation and elsewhere).
TEXT_AXIS = 1.0
TEXT_AXIS_TO_IMAGES = 0.22
TEXT_POINTER = 0.28
TEXT_NOISE_IMAGES = 0.12
TEXT_NOISE_OTHER = 0.35


def text_like_queries(vectors: np.ndarray, m: int, seed: int = 2) -> np.ndarray:
    """m text-like query vectors (unit float32 rows): in their own cone, each pointed at a region of the images.

    Their best image has cosine ~0.3 (as a real caption's best photo under CLIP), a random image ~0.18, and
    two text queries ~0.7 to each other.
    """
    rng = np.random.default_rng([seed, 11])
    dim = vectors.shape[1]
    mean, _ = _mean_and_spread(vectors, rng)
    mean_dir = mean / np.linalg.norm(mean)
    gap = np.random.default_rng([SPACE_SEED, 3]).standard_normal(dim).astype(np.float32)
    gap -= (gap @ mean_dir) * mean_dir
    gap /= np.linalg.norm(gap)
    axis = TEXT_AXIS_TO_IMAGES * mean_dir + np.sqrt(1 - TEXT_AXIS_TO_IMAGES ** 2) * gap
    targets = _sample_rows(vectors, m, rng) - mean
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    a, b = _sample_rows(vectors, m, rng), _sample_rows(vectors, m, rng)
    image_noise = a[rng.permutation(len(a))] - b
    image_noise /= np.linalg.norm(image_noise, axis=1, keepdims=True)
    other = rng.standard_normal((m, dim)).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    queries = (TEXT_AXIS * axis + TEXT_POINTER * targets + TEXT_NOISE_IMAGES * image_noise
               + TEXT_NOISE_OTHER * other).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries[rng.permutation(len(queries))]


def _nearest(vectors: np.ndarray, queries_idx: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Each chosen row's cosine to its nearest other row, and that row (exact, chunked over the collection)."""
    q = np.asarray(vectors[queries_idx], dtype=np.float32)
    best = np.full(len(q), -2.0, dtype=np.float32)
    where = np.zeros(len(q), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        part = np.asarray(vectors[start:start + chunk], dtype=np.float32)
        scores = q @ part.T
        hit = (queries_idx >= start) & (queries_idx < start + len(part))
        scores[np.nonzero(hit)[0], queries_idx[hit] - start] = -2.0
        top = scores.argmax(axis=1)
        value = scores[np.arange(len(q)), top]
        better = value > best
        best[better], where[better] = value[better], start + top[better]
    return best, where


def best_cosines(vectors: np.ndarray, queries: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Each query's cosine to its best row of `vectors` (exact)."""
    best = np.full(len(queries), -2.0, dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        part = np.asarray(vectors[start:start + chunk], dtype=np.float32)
        np.maximum(best, (queries @ part.T).max(axis=1), out=best)
    return best


@dataclass(frozen=True)
class Stats:
    """Summary statistics of a set of unit vectors (what --fit matches)."""

    n: int
    random_pair: float
    nn_percentiles: tuple[float, ...]     # 5, 25, 50, 75, 95
    nn_mean: float
    singular: np.ndarray                  # singular values of the centred rows / sqrt(rows), i.e. sd per direction
    mean_norm: float


NN_PERCENTILES = (5, 25, 50, 75, 95)


def stats(vectors: np.ndarray, seed: int = 0, sample: int = STAT_SAMPLE) -> Stats:
    """Random-pair cosine, nearest-neighbour cosine, spectrum (from at most 20,000 rows) of unit rows."""
    rng = np.random.default_rng(seed)
    n = len(vectors)
    spec_rows = _sample_rows(vectors, 20000, rng).astype(np.float64)
    mean = spec_rows.mean(axis=0)
    centred = spec_rows - mean
    eig = np.linalg.eigvalsh(centred.T @ centred / len(centred))[::-1]
    singular = np.sqrt(np.clip(eig, 0.0, None))
    # the mean cosine over all pairs of distinct sampled rows: (|sum|^2 - sum of |x|^2) / (m (m - 1))
    m = len(spec_rows)
    total = spec_rows.sum(axis=0)
    random_pair = float((total @ total - np.einsum("ij,ij->", spec_rows, spec_rows)) / (m * (m - 1)))
    idx = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    nn, _ = _nearest(vectors, idx)
    percentiles = tuple(float(p) for p in np.percentile(nn, NN_PERCENTILES))
    return Stats(n=n, random_pair=random_pair, nn_percentiles=percentiles,
                 nn_mean=float(nn.mean()), singular=singular, mean_norm=float(np.linalg.norm(mean)))


def load_real() -> np.ndarray:
    """The real CLIP ViT-B/32 image features (unit float32 rows)."""
    x = np.load(REAL_FEATURES).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- fitting (run by hand: `python bench/synthetic.py --fit`) ----

SPECTRUM_POINTS = np.unique(np.round(np.geomspace(1, 450, 24)).astype(int)) - 1
FIT_PARAMS = ("mean_norm", "alpha", "offset", "tail", "within", "within_alpha", "cluster_size", "spread_sigma")
FIT_BOUNDS = {"mean_norm": (0.6, 0.9), "alpha": (0.2, 2.5), "offset": (0.5, 60.0), "tail": (20.0, 2000.0),
              "within": (0.05, 0.95), "within_alpha": (0.2, 1.5), "cluster_size": (1.05, 20.0),
              "spread_sigma": (0.0, 1.2)}
FIT_SEEDS = (101, 102)


def _loss(shape: Shape, real: Stats) -> float:
    """How far the generated statistics at the real file's size are from the real ones."""
    total = 0.0
    for seed in FIT_SEEDS:
        g = stats(clip_like_vectors(real.n, seed=seed, shape=shape), seed=seed, sample=real.n)
        total += ((g.random_pair - real.random_pair) / 0.005) ** 2
        total += sum(((x - y) / 0.01) ** 2 for x, y in zip(g.nn_percentiles, real.nn_percentiles))
        logs = np.log10(g.singular[SPECTRUM_POINTS]) - np.log10(real.singular[SPECTRUM_POINTS])
        total += float(((logs / 0.02) ** 2).mean()) * 5
    return total / len(FIT_SEEDS)


def _to_shape(x: np.ndarray) -> Shape:
    values = {}
    for name, v in zip(FIT_PARAMS, x):
        lo, hi = FIT_BOUNDS[name]
        values[name] = float(np.clip(v, lo, hi))
    return Shape(**values)


def nelder_mead(f, x0: np.ndarray, steps: np.ndarray, iterations: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A plain Nelder-Mead minimiser (numpy only)."""
    simplex = [x0] + [x0 + np.eye(len(x0))[i] * steps[i] for i in range(len(x0))]
    values = [f(x) for x in simplex]
    for it in range(iterations):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if it % 10 == 0:
            print(f"  iteration {it}: loss {values[0]:.1f} at {_to_shape(simplex[0])}", flush=True)
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + (centroid - simplex[-1])
        fr = f(reflected)
        if fr < values[0]:
            expanded = centroid + 2 * (centroid - simplex[-1])
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                best = simplex[0]
                simplex = [best] + [best + 0.5 * (x - best) for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[int(np.argmin(values))]


def fit(iterations: int = 150) -> Shape:
    """Fit the generator's Shape to the real features (prints progress); returns the fitted Shape."""
    real = stats(load_real(), sample=1000)
    x0 = np.array([getattr(FITTED, p) for p in FIT_PARAMS], dtype=np.float64)
    steps = np.array([(FIT_BOUNDS[p][1] - FIT_BOUNDS[p][0]) * 0.1 for p in FIT_PARAMS])
    best = nelder_mead(lambda x: _loss(_to_shape(x), real), x0, steps, iterations)
    shape = _to_shape(best)
    print(f"loss {_loss(shape, real):.1f}")
    print("FITTED = Shape(" + ", ".join(f"{k}={v:.4g}" for k, v in asdict(shape).items()) + ")")
    return shape


# ---- printout ----

def _stats_lines(name: str, s: Stats) -> list[str]:
    sv = s.singular
    return [f"{name:<22} {s.n:>9,}  {s.random_pair:6.3f}   {s.nn_mean:6.3f}   "
            + " ".join(f"{p:5.3f}" for p in s.nn_percentiles)
            + "   " + " ".join(f"{sv[i]:.4f}" for i in (0, 1, 4, 9, 49, 199, 399))]


def _query_lines(name: str, vectors: np.ndarray, queries: np.ndarray) -> str:
    best = best_cosines(vectors, queries)
    rng = np.random.default_rng(0)
    random_image = float((queries @ _sample_rows(vectors, 500, rng).T).mean())
    qq = queries[:200] @ queries[:200].T
    among = float(qq[np.triu_indices(len(qq), 1)].mean())
    p = np.percentile(best, (5, 50, 95))
    return (f"{name:<34} best image {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f}   random image {random_image:.3f}"
            f"   query-query {among:.3f}")


def compare(rows: list[int], shape: Shape = FITTED) -> None:
    """Print the real features' statistics beside generated collections of the given sizes."""
    header = (f"{'':<22} {'rows':>9}  {'pair':>6}   {'NN mean':>6}   NN cosine p5/p25/p50/p75/p95   "
              "sd along principal directions 1, 2, 5, 10, 50, 200, 400")
    print(header)
    real = load_real() if REAL_FEATURES.exists() else None
    if real is not None:
        print("\n".join(_stats_lines("real ViT-B/32 (unsplash)", stats(real, sample=1000))))
    for n in rows:
        started = time.perf_counter()
        gen = clip_like_vectors(n, shape=shape)
        took = time.perf_counter() - started
        print("\n".join(_stats_lines(f"generated ({took:.1f} s)", stats(gen))))
    print()
    print("queries (cosine to the collection: 5th / 50th / 95th percentile of each query's best image)")
    if real is not None:
        print(_query_lines("real images, image-like queries", real, image_like_queries(real, 500, seed=1)))
        print(_query_lines("real images, text-like queries", real, text_like_queries(real, 500, seed=2)))
    for n in rows:
        gen = clip_like_vectors(n, shape=shape)
        print(_query_lines(f"{n:,} generated, image-like", gen, image_like_queries(gen, 500, seed=1)))
        print(_query_lines(f"{n:,} generated, text-like", gen, text_like_queries(gen, 500, seed=2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="refit the generator's constants from the real file")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--rows", type=int, action="append", help="also generate this many rows (repeatable)")
    args = parser.parse_args()
    shape = fit(args.iterations) if args.fit else FITTED
    compare([1000, 100_000] + (args.rows or []), shape)


if __name__ == "__main__":
    main()
