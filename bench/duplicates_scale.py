"""How long finding near-duplicates takes at 100k and 1M photos, against the naive all-pairs product.

    nice -n 10 python bench/duplicates_scale.py                 # 100k (all three) and 1M (IVF only)
    nice -n 10 python bench/duplicates_scale.py --rows 20000    # a quick look

CLIP-like synthetic vectors (bench/synthetic.py: clustered, cosine ~0.86 to a photo's nearest
neighbour, as real ViT-B/32 features) plus planted copies: for 2% of the photos, 1 to 3 copies at
cosine 0.97-0.995 to the original (what resized, re-compressed and lightly edited copies reach on
real features). Every photo's neighbours go through clipdex.duplicates.candidate_pairs with the
vector-index interface's batch ``neighbours`` (exact: blocked matrix products; IVF: one faiss batch
per 256 queries, probing DUPLICATE_PROBE_SHARE of the lists, re-ranked exactly), then components
split into cliques (clipdex.duplicates.components, split_cliques) at cosine >= THRESHOLD.

Baseline, in the same run: every pair's cosine (blocked N x N product, the pairs above the
threshold kept), which is exact and quadratic. Above 100k it is not run: its time on 25k rows is
scaled by (n / 25k)^2 (stated as an extrapolation). Recall: the planted (original, copy) pairs found.

Splitting one large component (``--split``, default 500 to 4,000 photos: burst frames of one scene,
each accepted with the 4 frames around it, a chain of ~m/3 groups): split_stars and split_cliques,
which update degrees as groups leave, against their previous form in the same run (every round
recomputed the degrees of the members left: cubic).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import synthetic  # noqa: E402  (sibling scripts, not a package)
from _machine import cpu_line  # noqa: E402

from clipdex import duplicates as dup  # noqa: E402
from clipdex.search.ann import IvfIndex, IvfParams  # noqa: E402
from clipdex.search.exact import ExactIndex  # noqa: E402

THRESHOLD = 0.96  # the cosine rule of this bench (no pHash: there are no images)
PLANTED_SHARE = 0.02
K = dup.DEFAULT_K
NAIVE_BLOCK = 4_096
NAIVE_SAMPLE = 25_000  # above NAIVE_MAX_ROWS the baseline runs on this many rows and is scaled by (n / it)^2
NAIVE_MAX_ROWS = 100_000


def planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` CLIP-like unit vectors whose last rows are copies of earlier ones; and the (original, copy) pairs."""
    rng = np.random.default_rng(seed)
    originals = max(1, int(n * PLANTED_SHARE / 2))  # ~2 copies each: 2% of the rows are copies
    counts = rng.integers(1, 4, size=originals)
    while counts.sum() > n // 4:
        counts = counts[:-1]
    copies = int(counts.sum())
    base = synthetic.clip_like_vectors(n - copies, seed=seed)
    picked = rng.choice(n - copies, size=len(counts), replace=False)
    pairs = []
    extra = np.empty((copies, base.shape[1]), np.float32)
    at = 0
    for original, count in zip(picked.tolist(), counts.tolist()):
        for _ in range(count):
            cosine = rng.uniform(0.97, 0.995)
            noise = np.asarray(rng.normal(size=base.shape[1]), dtype=np.float32)
            noise -= (noise @ base[original]) * base[original]
            noise /= np.linalg.norm(noise)
            extra[at] = cosine * base[original] + np.sqrt(1 - cosine ** 2) * noise
            pairs.append((original, n - copies + at))
            at += 1
    vectors = np.vstack([base, extra])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), np.array(pairs, dtype=np.int64)


def naive_pairs(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Every pair at or above ``threshold``: the blocked N x N product."""
    found: set[tuple[int, int]] = set()
    for start in range(0, len(vectors), NAIVE_BLOCK):
        scores = vectors[start:start + NAIVE_BLOCK] @ vectors.T
        a, b = np.nonzero(scores >= threshold)
        a += start
        keep = a < b
        found.update(zip(a[keep].tolist(), b[keep].tolist()))
    return found


def groups_of(vectors: np.ndarray, candidates: dup.Candidates, threshold: float) -> list[list[int]]:
    """Components of the accepted pairs, split into cliques (cosine >= threshold for every pair)."""
    keep = candidates.cosines >= threshold
    pairs = candidates.pairs[keep]
    result: list[list[int]] = []
    for part in dup.components(len(vectors), pairs):
        sub = vectors[part]
        cos = sub @ sub.T
        for clique in dup.split_cliques(cos >= threshold, cos):
            if len(clique) > 1:
                result.append(part[clique].tolist())
    return result


def recall(found: set[tuple[int, int]], truth: np.ndarray) -> float:
    return float(np.mean([(int(a), int(b)) in found for a, b in truth])) if len(truth) else 1.0


def run(n: int, naive: bool, exact: bool) -> tuple[list[str], float | None]:
    """One size's table lines (printed as they come), and the naive baseline's seconds where it ran."""
    t = time.perf_counter()
    vectors, truth = planted(n)
    made = time.perf_counter() - t
    rows = np.arange(n, dtype=np.int64)
    read = vectors.__getitem__
    measured: float | None = None
    lines = [f"\n{n:,} vectors ({len(truth):,} planted copies; generated in {made:.1f} s), rule cosine >= {THRESHOLD}"]
    lines.append(f"{'method':<34} {'index build':>12} {'neighbours':>11} {'groups':>8} {'total':>9} "
                 f"{'pairs':>8} {'groups':>7} {'planted recall':>15}")
    if naive:
        t = time.perf_counter()
        pairs = naive_pairs(vectors, THRESHOLD)
        seconds = time.perf_counter() - t
        lines.append(f"{'naive N x N product (baseline)':<34} {'-':>12} {seconds:>10.1f}s {'-':>8} {seconds:>8.1f}s "
                     f"{len(pairs):>8,} {'-':>7} {recall(pairs, truth):>15.4f}")
        measured = seconds
    else:
        t = time.perf_counter()
        naive_pairs(vectors[:NAIVE_SAMPLE], THRESHOLD)
        factor = (n / NAIVE_SAMPLE) ** 2
        estimate = (time.perf_counter() - t) * factor
        lines.append(f"{'naive N x N product (baseline)':<34} {'-':>12} {'-':>11} {'-':>8} "
                     f"{estimate:>8.0f}s  (its time on {NAIVE_SAMPLE:,} rows x {factor:.0f}: extrapolated, not run)")
    backends: list[tuple[str, object, float]] = []
    if exact:
        backends.append(("exact kNN (ExactIndex.neighbours)", ExactIndex(vectors, vectors.shape[1]), 0.0))
    t = time.perf_counter()
    ivf = IvfIndex.build(read, n, vectors.shape[1]) if n >= 50_000 else \
        IvfIndex.build(read, n, vectors.shape[1], params=small_params(n))
    built = time.perf_counter() - t
    nprobe = dup.duplicate_nprobe(ivf.params.nlist or 1)
    backends.append((f"IVF{ivf.params.nlist} kNN, nprobe {nprobe}", ivf, built))
    for name, index, build_s in backends:
        def search(queries: np.ndarray, k: int, index: object = index) -> tuple[np.ndarray, np.ndarray]:
            if isinstance(index, IvfIndex):
                return index.neighbours(queries, k, nprobe=nprobe)
            assert isinstance(index, ExactIndex)
            return index.neighbours(queries, k)
        t = time.perf_counter()
        candidates = dup.candidate_pairs(search, read, rows, K, THRESHOLD)
        searched = time.perf_counter() - t
        t = time.perf_counter()
        groups = groups_of(vectors, candidates, THRESHOLD)
        grouped = time.perf_counter() - t
        found = {(int(a), int(b)) for a, b in candidates.pairs.tolist()}
        total = build_s + searched + grouped
        lines.append(f"{name:<34} {build_s:>11.1f}s {searched:>10.1f}s {grouped:>7.1f}s {total:>8.1f}s "
                     f"{len(found):>8,} {len(groups):>7,} {recall(found, truth):>15.4f}")
        print(lines[-1], flush=True)
    return lines, measured


def old_split_cliques(accepted: np.ndarray, strength: np.ndarray) -> list[list[int]]:
    """split_cliques as it was (the baseline): every round the degrees of all members left, recomputed."""
    left = list(range(len(accepted)))
    groups: list[list[int]] = []
    while left:
        sub = accepted[np.ix_(left, left)]
        seed_at = int(np.argmax(sub.sum(axis=1)))
        seed = left[seed_at]
        group = [seed]
        partners = [left[j] for j in np.flatnonzero(sub[seed_at]) if left[j] != seed]
        partners.sort(key=lambda j: (-strength[seed, j], j))
        for j in partners:
            if all(accepted[j, g] for g in group):
                group.append(j)
        groups.append(sorted(group))
        taken = set(group)
        left = [i for i in left if i not in taken]
    return groups


def old_split_stars(accepted: np.ndarray, rank: np.ndarray) -> list[list[int]]:
    """split_stars as it was (the baseline): the live matrix and degrees recomputed every round."""
    left = np.ones(len(accepted), dtype=bool)
    groups: list[list[int]] = []
    while left.any():
        live = accepted & left[None, :] & left[:, None]
        degree = np.where(left, live.sum(axis=1), -1)
        seeds = np.flatnonzero(degree == degree.max())
        seed = int(seeds[np.argmin(rank[seeds])])
        group = np.flatnonzero(live[seed])
        while True:
            keeper = int(group[np.argmin(rank[group])])
            group = np.flatnonzero(live[keeper])
            if rank[group].min() >= rank[keeper]:
                break
        groups.append(sorted(int(i) for i in group))
        left[group] = False
    return groups


def chain(m: int, width: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A burst of ``m`` frames: each accepted with the ``width`` frames around it (a chain), cosines, ranks."""
    rng = np.random.default_rng(seed)
    idx = np.arange(m)
    accepted = np.abs(idx[:, None] - idx[None, :]) <= width // 2
    strength = np.where(accepted, 1 - np.abs(idx[:, None] - idx[None, :]) / (4 * m), 0.5).astype(np.float32)
    return accepted, strength, rng.permutation(m)


def split_table(sizes: list[int]) -> None:
    print("\n| component | split_stars before | after | split_cliques before | after | same groups |")
    print("|---|---|---|---|---|---|")
    for m in sizes:
        accepted, strength, rank = chain(m)
        times = []
        results = []
        for fn, args in ((old_split_stars, (accepted, rank)), (dup.split_stars, (accepted, rank)),
                         (old_split_cliques, (accepted, strength)), (dup.split_cliques, (accepted, strength))):
            t = time.perf_counter()
            results.append(fn(*args))  # type: ignore[operator]
            times.append(time.perf_counter() - t)
        same = results[0] == results[1] and results[2] == results[3]
        print(f"| {m:,} photos | {times[0]:.2f} s | {times[1]:.2f} s | {times[2]:.2f} s | {times[3]:.2f} s | "
              f"{'yes' if same else 'NO'} |", flush=True)


def small_params(n: int) -> IvfParams:
    """Lists for a collection below the automatic parameters' 50k rows (a quick look): ~64 rows a list."""
    return IvfParams(nlist=int(2 ** np.floor(np.log2(max(16, n / 64)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--split", type=int, nargs="*", default=[500, 1_000, 2_000, 4_000])
    args = parser.parse_args()
    print(cpu_line())
    if args.split:
        split_table(args.split)
    print(f"k = {K} neighbours per photo, queries {dup.QUERY_CHUNK:,} at a time; IVF probes "
          f"1/{round(1 / dup.DUPLICATE_PROBE_SHARE)} of its lists (at least {dup.DUPLICATE_MIN_NPROBE})")
    for n in args.rows:
        small = n <= NAIVE_MAX_ROWS
        lines, _ = run(n, naive=small, exact=small)
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
