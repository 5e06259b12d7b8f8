"""How long zero-shot classification of stored vectors takes, at 100,000 photos.

    python bench/classify_speed.py [N]

Vectors are the real CLIP ViT-B/32 features of ../shared/datasets/unsplash-1k,
tiled with noise to N rows; class vectors are random unit vectors (prompt
encoding is a fixed cost of a few prompts and is not what this measures).
Compares clipdex's numpy path with the tutorial's torch path (logits, softmax)
on the same data, and times the whole Index.classify on a synthetic index,
including saving the predictions in SQLite.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clipdex.classify import Classifier, classify
from clipdex.labels import make_label_set

FEATURES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "unsplash-1k" / "clip-vit-b32"
            / "features.npy")
REPEATS = 5


def vectors(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = (np.load(FEATURES).astype(np.float32) if FEATURES.exists()
            else rng.normal(size=(1000, 512)).astype(np.float32))
    tiled = np.resize(base, (n, base.shape[1])) + rng.normal(scale=0.02, size=(n, base.shape[1])).astype(np.float32)
    return tiled / np.linalg.norm(tiled, axis=1, keepdims=True)


def best_of(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    v = vectors(n)
    label_set = make_label_set("taken_time", ["dawn", "day", "dusk", "night"])
    rng = np.random.default_rng(1)
    classes = rng.normal(size=(4, v.shape[1])).astype(np.float32)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    classifier = Classifier(label_set, classes, None, 100.0)
    ids, paths = list(range(n)), [f"/photos/{i}.jpg" for i in range(n)]

    ours = best_of(lambda: classify(classifier, v, ids, paths))

    import torch

    tv, tc = torch.from_numpy(v), torch.from_numpy(classes)

    def tutorial() -> None:
        with torch.no_grad():
            probs = (100.0 * tv @ tc.T).softmax(dim=-1)
            [label_set.label_names[i] for i in probs.argmax(dim=-1).tolist()]

    theirs = best_of(tutorial)
    end_to_end = index_classify(v, label_set, classes)
    print(f"zero-shot classification of {n:,} stored vectors ({v.shape[1]}-d), 4 labels; best of {REPEATS}")
    print(f"{'path':<44} {'seconds':>8} {'photos/s':>12}")
    print(f"{'torch logits+softmax (tutorial, baseline)':<44} {theirs:>8.3f} {n / theirs:>12,.0f}")
    print(f"{'clipdex classify() (numpy)':<44} {ours:>8.3f} {n / ours:>12,.0f}")
    total = end_to_end["total"]
    print(f"{'clipdex Index.classify (read+score+save)':<44} {total:>8.3f} {n / total:>12,.0f}")
    print(f"  of which: read vectors {end_to_end['read']:.3f} s, score {end_to_end['score']:.3f} s, "
          f"save predictions {end_to_end['save']:.3f} s")


def index_classify(v: np.ndarray, label_set, classes: np.ndarray) -> dict[str, float]:
    """Index.classify's own steps on a synthetic on-disk index of len(v) photos."""
    from clipdex.store import NewFile, Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "idx", create=True)
        model = store.add_model("bench/random", "bench", "{}", v.shape[1], 100.0, "fp32")
        hashes = [f"{i:064x}" for i in range(len(v))]
        files = [NewFile(f"/photos/{i}.jpg", 1, 1, hashes[i], 1, 1) for i in range(len(v))]
        store.commit_batch(model, v, hashes, files)
        model = store.get_model("bench/random")
        t0 = time.perf_counter()
        found = store.searchable(model)
        t1 = time.perf_counter()
        result = classify(Classifier(label_set, classes, None, 100.0), found.vectors, found.ids.tolist(), found.paths)
        t2 = time.perf_counter()
        store.save_predictions(model, label_set.name, label_set.to_json(), result.labels, found.hashes,
                               result.predicted, result.confidence, result.probs)
        t3 = time.perf_counter()
        store.close()
    return {"read": t1 - t0, "score": t2 - t1, "save": t3 - t2, "total": t3 - t0}


if __name__ == "__main__":
    main()
