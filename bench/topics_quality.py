"""Do topics agree with what people wrote about the photos? And how long do they take at scale?

    nice -n 10 python bench/topics_quality.py                      # all three parts
    python bench/topics_quality.py --parts captions --ks 8,17,32
    python bench/topics_quality.py --parts names --named-index /tmp/x/rand-idx --weights W.pt
    python bench/topics_quality.py --parts scale --scale 100000,1000000

1. captions: the REAL OpenAI CLIP ViT-B/32 vectors of the shared 1,000 Unsplash photos, imported
   into a temporary index (no weights needed), clustered by ``clipdex.topics.find_topics`` (k chosen
   automatically, and the --ks given). Each clustering is scored against the photos' captions
   (``photo_description`` + ``ai_description`` of photos.csv) and against RANDOM assignments of the
   same cluster sizes (--repeats of them: mean and spread):
   - word coverage: the share of a cluster's photos whose caption holds one of the cluster's
     --top-words most distinctive caption words (count in the cluster x log of the lift over the
     whole collection, words in >= 3 of its photos; random clusters get their own best words by
     the same rule);
   - caption similarity: mean TF-IDF cosine of two captions in the same cluster;
   - word MI: mean mutual information (bits x 1000) between the cluster and each frequent caption
     word's presence (words in >= 20 photos).
   Names on these vectors need the real text encoder, whose weights are not on this machine: that
   part is BLOCKED, and said so.
2. names (mechanics only): an index of the shared photos made with RANDOM ViT-B-32 weights
   (--named-index, --weights): topics named through the full path (encode ~2,000 concepts, cache,
   unique names); name-in-caption rate against a random name from the vocabulary, and the time of
   the first run (encoding) against a rerun (cache). Random weights name nothing: the rate is chance.
3. scale: synthetic clustered unit vectors (512-d) of --scale sizes: the time to choose k (sample),
   fit centroids (sample; faiss) and assign every vector, with scikit-learn's KMeans on the same fit
   sample as the baseline (once).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import cpu_line  # noqa: E402  (a sibling module, not a package)

SHARED = HERE.parent.parent / "shared" / "datasets" / "unsplash-1k"
MIN_WORD_PHOTOS = 3  # a distinctive word is in at least this many of the cluster's photos
MI_MIN_PHOTOS = 20  # words in at least this many photos enter the mutual information
STOP = frozenset(("a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "with", "from", "by", "for", "over",
                  "under", "near", "into", "onto", "its", "it", "is", "are", "was", "were", "be", "been", "this",
                  "that", "these", "those", "there", "their", "his", "her", "he", "she", "they", "them", "some",
                  "two", "three", "one", "four", "five", "several", "many", "few", "small", "large", "big",
                  "little", "top", "view", "front", "back", "side", "while", "during", "other", "up", "down",
                  "out", "off", "against", "next", "through", "who", "which", "what", "where", "has", "have",
                  "having", "very"))


def captions(table: Path) -> dict[str, str]:
    """photo_id -> its captions (human and machine), lower case."""
    out = {}
    with open(table, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[row["photo_id"]] = f"{row.get('photo_description') or ''} {row.get('ai_description') or ''}".lower()
    return out


def words_of(text: str) -> set[str]:
    """Content words of a caption (plural 's' dropped so 'trees' and 'tree' are one word)."""
    found = set()
    for w in re.findall(r"[a-z]{3,}", text):
        if w in STOP:
            continue
        found.add(w[:-1] if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3 else w)
    return found


def distinctive(labels: np.ndarray, words: list[set[str]], top: int) -> dict[int, list[str]]:
    """Each cluster's ``top`` most distinctive caption words: count in the cluster times the log of
    the lift over the whole collection (words in at least :data:`MIN_WORD_PHOTOS` of its photos)."""
    n = len(labels)
    overall = Counter(w for ws in words for w in ws)
    out = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        inside = Counter(w for i in members for w in words[i])
        weight = {w: m * math.log((m / len(members)) / (overall[w] / n)) for w, m in inside.items()
                  if m >= MIN_WORD_PHOTOS}
        out[int(c)] = sorted(weight, key=lambda w: (-weight[w], w))[:top]
    return out


def coverage(labels: np.ndarray, words: list[set[str]], top: int) -> float:
    """Share of photos whose caption holds one of their cluster's ``top`` most distinctive words."""
    best = {c: set(ws) for c, ws in distinctive(labels, words, top).items()}
    return sum(1 for i, c in enumerate(labels) if words[i] & best[int(c)]) / len(labels)


def caption_similarity(labels: np.ndarray, tfidf: np.ndarray) -> float:
    """Mean cosine of two different captions' TF-IDF vectors in the same cluster."""
    total, pairs = 0.0, 0
    for c in np.unique(labels):
        m = tfidf[labels == c]
        if len(m) < 2:
            continue
        s = m @ m.T
        total += float(s.sum() - np.trace(s))
        pairs += len(m) * (len(m) - 1)
    return total / max(pairs, 1)


def word_mi(labels: np.ndarray, presence: np.ndarray) -> float:
    """Mean mutual information (bits) between the cluster and each word's presence."""
    from sklearn.metrics import mutual_info_score

    return float(np.mean([mutual_info_score(labels, presence[:, j]) for j in range(presence.shape[1])])) / math.log(2)


def score_all(labels: np.ndarray, words: list[set[str]], tfidf: np.ndarray, presence: np.ndarray,
              top: int) -> tuple[float, float, float]:
    return coverage(labels, words, top), caption_similarity(labels, tfidf), 1000 * word_mi(labels, presence)


def part_captions(args: argparse.Namespace) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from clipdex import Index
    from clipdex.interchange import import_embeddings
    from clipdex.topics import find_topics

    caps = captions(Path(args.table))
    folder = Path(tempfile.mkdtemp(prefix="topics-bench-"))
    try:
        with Index.open(folder / "idx", model="ViT-B-32", create=True) as index:
            import_embeddings(index, args.source, images=args.images)
            found = index.searchable()
            ids = [Path(p).stem for p in found.paths]
            words = [words_of(caps.get(i, "")) for i in ids]
            texts = [" ".join(sorted(w)) for w in words]
            tfidf = TfidfVectorizer().fit_transform(texts).toarray().astype(np.float32)
            vocab = Counter(w for ws in words for w in ws)
            frequent = sorted(w for w, c in vocab.items() if c >= MI_MIN_PHOTOS)
            presence = np.array([[w in ws for w in frequent] for ws in words], dtype=np.int8)
            print(f"\n## 1. Topics against captions: real CLIP ViT-B/32 vectors, {len(ids)} photos "
                  f"({sum(1 for t in texts if t)} with a caption, {len(frequent)} words in >= {MI_MIN_PHOTOS} "
                  f"photos), random baseline: {args.repeats} shuffles of the same sizes\n")
            print("| clustering | k | word coverage | random | caption similarity | random | word MI x1000 | "
                  "random | time s |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            runs: list[tuple[str, int | None]] = [("auto (silhouette)", None)] + [(f"-k {k}", k) for k in args.ks]
            rng = np.random.default_rng(0)
            for title, k in runs:
                started = time.perf_counter()
                result = find_topics(index, k=k, seed=0, builtin=False, label_files=(), save=False)
                seconds = time.perf_counter() - started
                by_path = dict(zip(result.classification.paths, result.classification.predicted))
                names = result.classification.labels
                labels = np.array([names.index(by_path[p]) for p in found.paths])
                got = score_all(labels, words, tfidf, presence, args.top_words)
                rand = np.array([score_all(rng.permutation(labels), words, tfidf, presence, args.top_words)
                                 for _ in range(args.repeats)])
                cells = " | ".join(f"{g:.3f} | {m:.3f} ± {s:.3f}" for g, m, s in
                                   zip(got, rand.mean(axis=0), rand.std(axis=0)))
                print(f"| {title} | {len(names)} | {cells} | {seconds:.1f} |", flush=True)
                if k is None:
                    sizes = Counter(labels.tolist())
                    top_words = distinctive(labels, words, args.top_words)
                    auto_topics = [f"{names[c]} ({sizes[c]}): {', '.join(top_words[c])}" for c in range(len(names))]
                    chosen = result.choice
                    scores = ", ".join(f"{kk}: {s:.3f}" for kk, s in chosen.scores.items())
                    auto_line = f"auto k: {chosen.describe()}; silhouette by k: {scores}"
            print(f"\n{auto_line}")
            print("\nthe automatic topics (photos): their most distinctive caption words\n")
            print("\n".join(f"- {line}" for line in auto_topics))
            print("\nName-in-caption rate on these real vectors: BLOCKED (needs the real ViT-B/32 text encoder; its "
                  "weights are not on this machine). Topics of imported vectors are stored numbered.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def part_names(args: argparse.Namespace) -> None:
    from clipdex import Index
    from clipdex.topics import CACHE_DIR, builtin_concepts, find_topics

    if not args.named_index or not Path(args.named_index).is_dir():
        print("\n## 2. Naming mechanics: skipped (give --named-index, an index of the shared photos made with "
              "--weights, e.g. random ViT-B-32 weights)")
        return
    caps = captions(Path(args.table))
    folder = Path(tempfile.mkdtemp(prefix="topics-names-"))
    try:
        copy = folder / "idx"
        shutil.copytree(args.named_index, copy, ignore=shutil.ignore_patterns(CACHE_DIR))
        times = []
        for _ in range(2):
            with Index.open(copy, model="ViT-B-32", weights=args.weights) as index:
                started = time.perf_counter()
                result = find_topics(index, seed=0)
                times.append((time.perf_counter() - started, result.cached_names))
        words = {Path(p).stem: words_of(caps.get(Path(p).stem, "")) for p in result.classification.paths}
        rng = np.random.default_rng(0)
        vocabulary = [c.name for c in builtin_concepts()]

        def rate(name_of: dict[str, str]) -> float:
            hits = [bool(words_of(name_of[p]) & words[Path(p).stem]) for p in result.classification.paths]
            return float(np.mean(hits))

        got = rate(dict(zip(result.classification.paths, result.classification.predicted)))
        random_names = {t.name: vocabulary[int(rng.integers(len(vocabulary)))] for t in result.topics}
        base = rate({p: random_names[n] for p, n in zip(result.classification.paths, result.classification.predicted)})
        print(f"\n## 2. Naming mechanics with RANDOM ViT-B-32 weights ({len(result.topics)} topics, "
              f"{len(builtin_concepts())} concepts)\n")
        print("| run | vocabulary vectors | time s |")
        print("| --- | --- | ---: |")
        for n, (seconds, cached) in enumerate(times, 1):
            print(f"| {n} | {'from the index cache' if cached else 'encoded, then cached'} | {seconds:.1f} |")
        print(f"\nname-in-caption rate: {got:.3f} (a random vocabulary name per topic: {base:.3f}); with random "
              "weights both are chance, as they must be. Names: " + ", ".join(t.name for t in result.topics[:8]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def synthetic(n: int, dim: int, groups: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around ``groups`` random directions (CLIP-like spread: cosine ~0.8 to the centre)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(groups, size=m)] + rng.normal(scale=0.75 / math.sqrt(dim), size=(m, dim))
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def part_scale(args: argparse.Namespace) -> None:
    from sklearn.cluster import KMeans

    from clipdex import topics

    print("\n## 3. Scale: synthetic 512-d unit vectors around 40 directions\n")
    print("| photos | choose k (sample) s | k | fit centroids (sample) s | assign all s | total s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    baseline = ""
    for n in args.scale:
        x = synthetic(n, 512, 40)
        t0 = time.perf_counter()
        choice = topics.choose_k(x, seed=0)
        t1 = time.perf_counter()
        centroids = topics.fit_centroids(x, choice.k, seed=0)
        t2 = time.perf_counter()
        topics.assign(x, centroids)
        t3 = time.perf_counter()
        print(f"| {n:,} | {t1 - t0:.1f} | {choice.k} | {t2 - t1:.1f} | {t3 - t2:.1f} | {t3 - t0:.1f} |", flush=True)
        if not baseline:  # the same fit by scikit-learn, on the same sample, once
            rows = np.sort(np.random.default_rng(1).choice(
                n, size=min(n, max(topics.FIT_SAMPLE_MAX, topics.FIT_SAMPLE_PER_TOPIC * choice.k)), replace=False))
            started = time.perf_counter()
            KMeans(n_clusters=choice.k, n_init=topics.FIT_N_INIT, random_state=0).fit(x[rows])
            baseline = (f"baseline: scikit-learn KMeans (n_init={topics.FIT_N_INIT}) on the same {len(rows):,}-row "
                        f"sample, k = {choice.k}: {time.perf_counter() - started:.1f} s (clipdex's faiss fit: "
                        f"{t2 - t1:.1f} s)")
        del x
    print(f"\n{baseline}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="captions,names,scale", help="which parts [default: all three]")
    parser.add_argument("--source", default=str(SHARED / "clip-vit-b32"), help="features.npy + photo_ids.csv")
    parser.add_argument("--images", default=str(SHARED / "images"), help="the photos' folder")
    parser.add_argument("--table", default=str(SHARED / "photos.csv"), help="photos.csv with the captions")
    parser.add_argument("--ks", default="8,17,32", help="fixed k values to compare with the automatic one")
    parser.add_argument("--repeats", type=int, default=20, help="random assignments per clustering")
    parser.add_argument("--top-words", type=int, default=3, help="distinctive words per cluster (coverage)")
    parser.add_argument("--named-index", help="index of the shared photos with --weights (part 2)")
    parser.add_argument("--weights", default="/tmp/clipdex-bench/vit-b-32-random.pt",
                        help="ViT-B-32 weights of --named-index [default: the random ones]")
    parser.add_argument("--scale", default="100000,1000000", help="sizes for part 3")
    args = parser.parse_args()
    args.ks = [int(k) for k in args.ks.split(",") if k]
    args.scale = [int(n) for n in args.scale.split(",") if n]
    parts = set(args.parts.split(","))
    print(f"# clipdex topics bench\n\nmachine: {cpu_line()}")
    if "captions" in parts:
        part_captions(args)
    if "names" in parts:
        part_names(args)
    if "scale" in parts:
        part_scale(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
