"""A parameter study of the IVF index (clipdex.search.ann) on CLIP-like vectors.

    python bench/ann_params.py --rows 200000                 # the full grid (~10 min on 2 cores)
    python bench/ann_params.py --rows 1000000 --confirm      # the defaults only, plus load time and RSS
    python bench/ann_params.py --rows 200000 --nlist 2048 --codes SQ8 --nprobe 32,64 --pool 100

For each index (nlist lists, codes SQ8 / Flat / PQ<m>) it prints the build
time and size on disk, then for each nprobe and candidate pool the recall@10
against exact search and the single-query latency (p50 / p99 ms, one query at a
time, warm, faiss on every core) for image-like and text-like queries, and for
text queries navigated by a shifted vector: the text query plus the mean
text-to-image gap (estimated from other text queries), re-ranked with the
original query. Vectors and queries come from bench/synthetic.py (fitted to real
CLIP ViT-B/32 features). The vectors are written to --work (2 GB at 1M) and
re-ranking reads them through clipdex's VectorFile, as a search does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synthetic

from clipdex.search.ann import IvfIndex, IvfParams
from clipdex.search.base import Hits
from clipdex.search.exact import ExactIndex
from clipdex.store.vectors import VectorFile

DIM = synthetic.DIM
K = 10
ADD_ROWS = 10_000


def vector_file(work: Path, rows: int) -> VectorFile:
    """The collection of ``rows`` CLIP-like vectors as a vector file (generated once, kept in ``work``).

    The file's name carries a digest of bench/synthetic.py: a refitted generator makes a new file.
    """
    digest = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:8]
    path = work / f"clip-like-{rows}-{digest}.f32"
    if not path.exists() or path.stat().st_size != rows * DIM * 4:
        work.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        out = np.memmap(tmp, dtype=np.float32, mode="w+", shape=(rows, DIM))
        synthetic.clip_like_vectors(rows, DIM, seed=0, out=out)
        out.flush()
        del out
        os.replace(tmp, path)
    return VectorFile(path, DIM)


def exact_top(matrix: np.ndarray, queries: np.ndarray, chunk: int = 131_072) -> np.ndarray:
    """The exact top-K rows of each query (ties by row), by chunks of the matrix."""
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_r = np.zeros((len(queries), K), np.int64)
    for start in range(0, len(matrix), chunk):
        part = np.asarray(matrix[start:start + chunk])
        scores = queries @ part.T
        top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], 1)
        r = np.concatenate([best_r, top + start], 1)
        order = np.lexsort((r, -s), axis=1)[:, :K]
        best_s, best_r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    return best_r


def text_shift(vectors: np.ndarray) -> np.ndarray:
    """The mean text-to-image gap: image mean minus text mean (text queries of another seed than the test's)."""
    images = synthetic._sample_rows(vectors, 20_000, np.random.default_rng(5))
    texts = synthetic.text_like_queries(vectors, 2_000, seed=99)
    return (images.mean(0) - texts.mean(0)).astype(np.float32)


def shifted_search(index: IvfIndex, q: np.ndarray, shift: np.ndarray, nprobe: int) -> Hits:
    """Lists chosen by the text query moved across the gap (q + shift); codes scored and re-ranked with q."""
    ivf = index._ivf
    nav = q + shift
    nav /= np.linalg.norm(nav)
    _, lists = ivf.quantizer.search(nav[None, :], nprobe)
    centroids = ivf.quantizer.reconstruct_batch(lists[0])
    coarse = (centroids @ q)[None, :].astype(np.float32)  # IP by residual: q.c + q.r
    ivf.nprobe = nprobe  # the wrapper checks the lists against it (the bench searches one query at a time)
    _, ids = ivf.search_preassigned(q[None, :], max(K, index.params.pool), lists, coarse)
    return index._rerank(q, K, ids[0])


def run_queries(index: IvfIndex, queries: np.ndarray, truth: np.ndarray, text: bool,
                shift: np.ndarray | None = None) -> tuple[float, float, float]:
    """Recall@K, p50 and p99 ms of single queries."""
    times, recalls = [], []
    nprobe = index.params.nprobe_text if text else index.params.nprobe
    for q, expected in zip(queries, truth):
        started = time.perf_counter()
        if shift is None:
            hits: Hits = index.search(q, K, text=text)
        else:
            hits = shifted_search(index, q, shift, int(nprobe or 1))
        times.append((time.perf_counter() - started) * 1e3)
        recalls.append(len(set(hits.rows.tolist()) & set(expected.tolist())) / K)
    return float(np.mean(recalls)), float(np.percentile(times, 50)), float(np.percentile(times, 99))


def build(vf: VectorFile, rows: int, params: IvfParams, work: Path) -> tuple[IvfIndex, float, int, Path]:
    started = time.perf_counter()
    index = IvfIndex.build(vf.take, rows, DIM, params=params)
    seconds = time.perf_counter() - started
    path = work / f"ivf-{rows}-{index.params.nlist}-{params.codes}-{vf.path.stem.rsplit('-', 1)[1]}.index"
    index.save(path)
    return index, seconds, path.stat().st_size, path


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def study(args: argparse.Namespace) -> None:
    work = Path(args.work)
    t0 = time.perf_counter()
    vf = vector_file(work, args.rows)
    matrix = vf.read(args.rows)
    print(f"{args.rows:,} CLIP-like vectors ready in {time.perf_counter() - t0:.1f} s ({vf.path}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    image_q = synthetic.image_like_queries(matrix, args.queries, seed=1)
    text_q = synthetic.text_like_queries(matrix, args.queries, seed=2)
    t0 = time.perf_counter()
    truth_i, truth_t = exact_top(matrix, image_q), exact_top(matrix, text_q)
    print(f"exact top-{K} of {2 * args.queries} queries in {time.perf_counter() - t0:.1f} s", flush=True)
    shift = text_shift(matrix)
    print(f"{'nlist':>6} {'codes':>5} {'build s':>8} {'MB':>6} {'nprobe':>6} {'pool':>5} | "
          f"{'img R@10':>8} {'p50':>6} {'p99':>6} | {'txt R@10':>8} {'p50':>6} {'p99':>6} | "
          f"{'shift R@10':>10} {'p50':>6}", flush=True)
    for nlist in parse_ints(args.nlist) or [None]:
        for codes in args.codes.split(","):
            index, seconds, size, _ = build(vf, args.rows, IvfParams(nlist=nlist, codes=codes), work)
            for nprobe in parse_ints(args.nprobe or "64,128,256,512"):
                for pool in parse_ints(args.pool):
                    index.params = replace(index.params, nprobe=nprobe, nprobe_text=nprobe, pool=pool)
                    ri, pi50, pi99 = run_queries(index, image_q, truth_i, text=False)
                    rt, pt50, pt99 = run_queries(index, text_q, truth_t, text=True)
                    shifted = (run_queries(index, text_q, truth_t, text=True, shift=shift) if args.shift
                               else (float("nan"), float("nan"), 0.0))
                    print(f"{index.params.nlist:>6} {codes:>5} {seconds:>8.1f} {size / 1e6:>6.0f} {nprobe:>6} "
                          f"{pool:>5} | {ri:>8.3f} {pi50:>6.2f} {pi99:>6.2f} | {rt:>8.3f} {pt50:>6.2f} "
                          f"{pt99:>6.2f} | {shifted[0]:>10.3f} {shifted[1]:>6.2f}", flush=True)
            print(f"  (load average {os.getloadavg()[0]:.1f})", flush=True)
            del index


def confirm(args: argparse.Namespace) -> None:
    """The defaults at ``--rows``: build, recall and latency, then a fresh process's load time and RSS."""
    work = Path(args.work)
    vf = vector_file(work, args.rows)
    matrix = vf.read(args.rows)
    image_q = synthetic.image_like_queries(matrix, args.queries, seed=1)
    text_q = synthetic.text_like_queries(matrix, args.queries, seed=2)
    truth_i, truth_t = exact_top(matrix, image_q), exact_top(matrix, text_q)
    del matrix
    progress_at = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if done == 0:
            print(f"  trained in {time.perf_counter() - progress_at[0]:.1f} s", flush=True)

    path = work / f"ivf-{args.rows}-default-{vf.path.stem.rsplit('-', 1)[1]}.index"
    if args.reuse and path.exists():
        index = IvfIndex.load(path, vf.take, mmap=False)
        built = index.params  # the search parameters of today's defaults, on the lists as built
        index.params = replace(IvfParams(train_per_list=built.train_per_list).resolved(args.rows),
                               nlist=built.nlist, codes=built.codes)
        index.save(path)
        print(f"reused {path} ({index.params}); {path.stat().st_size / 1e6:.0f} MB on disk", flush=True)
    else:
        started = time.perf_counter()
        index = IvfIndex.build(vf.take, args.rows, DIM, progress=progress)
        seconds = time.perf_counter() - started
        index.save(path)
        print(f"built with {index.params} in {seconds:.1f} s; {path.stat().st_size / 1e6:.0f} MB on disk",
              flush=True)
    chosen = index.params
    for name, queries, truth, text in (("image", image_q, truth_i, False), ("text", text_q, truth_t, True)):
        recall, p50, p99 = run_queries(index, queries, truth, text)
        print(f"  {name}-like (defaults): recall@{K} {recall:.3f}, p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    nlist = int(chosen.nlist or 1)
    for nprobe in parse_ints(args.nprobe or "") or [nlist // 8, nlist // 4, 3 * nlist // 8, nlist // 2]:
        index.params = replace(chosen, nprobe=nprobe, nprobe_text=nprobe)
        ri, pi50, pi99 = run_queries(index, image_q, truth_i, False)
        rt, pt50, pt99 = run_queries(index, text_q, truth_t, True)
        print(f"  nprobe {nprobe:>5}: image {ri:.3f} p50 {pi50:.2f} p99 {pi99:.2f} ms | "
              f"text {rt:.3f} p50 {pt50:.2f} p99 {pt99:.2f} ms (load average {os.getloadavg()[0]:.1f})", flush=True)
    index.params = chosen
    new_rows = np.arange(args.rows, args.rows + ADD_ROWS)
    started = time.perf_counter()
    index.add(new_rows, vf.take(np.arange(ADD_ROWS)))
    added = time.perf_counter() - started
    started = time.perf_counter()
    index.remove(new_rows)
    print(f"  add {ADD_ROWS:,} rows: {added:.2f} s; remove them: {time.perf_counter() - started:.2f} s", flush=True)
    exact = ExactIndex(vf.read(args.rows), DIM)
    times = []
    for q in text_q[:30]:
        started = time.perf_counter()
        exact.search(q, K)
        times.append((time.perf_counter() - started) * 1e3)
    print(f"  exact search, warm: p50 {np.percentile(times, 50):.1f} ms, p99 {np.percentile(times, 99):.1f} ms "
          f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    del index
    np.save(work / "text-queries.npy", text_q[:50])
    out = subprocess.run([sys.executable, __file__, "--load-check", str(path), "--rows", str(args.rows),
                          "--work", str(work)], capture_output=True, text=True)
    print(out.stdout + out.stderr, flush=True)


def load_check(args: argparse.Namespace) -> None:
    """In a fresh process: open the saved index (memory-mapped), run 50 text queries; time and peak RSS."""
    work = Path(args.work)
    vf = vector_file(work, args.rows)
    queries = np.load(work / "text-queries.npy")
    started = time.perf_counter()
    index = IvfIndex.load(Path(args.load_check), vf.take)
    opened = time.perf_counter() - started
    started = time.perf_counter()
    index.search(queries[0], K, text=True)
    first = time.perf_counter() - started
    for q in queries[1:]:
        index.search(q, K, text=True)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    print(f"  fresh process: load {opened * 1e3:.1f} ms, first text query {first * 1e3:.1f} ms, "
          f"peak RSS {status['VmHWM'].strip()} (RSS now {status['VmRSS'].strip()}) after 50 queries; "
          f"vector file {vf.path.stat().st_size / 1e6:.0f} MB")
    print(json.dumps({"load_ms": opened * 1e3, "first_ms": first * 1e3}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200, help="queries of each kind")
    parser.add_argument("--nlist", default="1024,2048,4096", help="comma-separated; empty: automatic")
    parser.add_argument("--codes", default="SQ8,Flat,PQ64")
    parser.add_argument("--nprobe", default=None, help="comma-separated (--confirm: nlist/8, /4, 3/8, /2)")
    parser.add_argument("--pool", default="50,100,200")
    parser.add_argument("--no-shift", dest="shift", action="store_false", help="skip the shifted text queries")
    parser.add_argument("--work", default="/tmp/clipdex-ann-bench", help="where vectors and indexes are kept")
    parser.add_argument("--confirm", action="store_true", help="the defaults only, with load time and RSS")
    parser.add_argument("--reuse", action="store_true", help="--confirm: load the index it built last time")
    parser.add_argument("--load-check", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_check:
        load_check(args)
    elif args.confirm:
        confirm(args)
    else:
        study(args)


if __name__ == "__main__":
    main()
