"""Real CLIP vectors in, the same neighbours out: the CLIP tutorial's features imported, then searched.

    python bench/import_real.py                          # the shared unsplash-1k features (1,000 x 512)
    python bench/import_real.py --queries 50 --k 20
    python bench/import_real.py --source DIR --images DIR

Imports ``features.npy`` + ``photo_ids.csv`` (real OpenAI CLIP ViT-B/32 vectors of
the shared Unsplash photos, float16) into a new index in a temporary folder, as
`clipdex import SOURCE --images IMAGES --model ViT-B-32` does (through the library
it calls; no weights are needed to import or to search by photo). Then, for
--queries photo ids spread over the file, compares ``Index.search("@<id>", k)``
with a plain numpy cosine top-k over features.npy: the same ids in the same order,
and the largest score difference. Prints a table and PASS or FAIL (exit status 1).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import cpu_line  # noqa: E402  (a sibling module, not a package)

SHARED = HERE.parent.parent / "shared" / "datasets" / "unsplash-1k"
MODEL = "ViT-B-32"  # the model that made the shared features
SCORE_TOLERANCE = 1e-4  # float16 on disk, normalised in float32 on both sides: ~1e-7 apart


def reference(features: np.ndarray, ids: list[str], of: int, k: int) -> tuple[list[str], np.ndarray]:
    """The ``k`` nearest ids to row ``of`` by cosine over ``features`` (best first) and their scores."""
    scores = features @ features[of]
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order], scores[order]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(SHARED / "clip-vit-b32"),
                        help="folder with features.npy + photo_ids.csv [default: the shared unsplash-1k's]")
    parser.add_argument("--images", default=str(SHARED / "images"),
                        help="the photos' folder (--images of clipdex import) [default: the shared one]")
    parser.add_argument("--queries", type=int, default=20, help="photo ids searched for [default: 20]")
    parser.add_argument("--k", type=int, default=10, help="neighbours compared per query [default: 10]")
    args = parser.parse_args()
    source = Path(args.source)
    if not (source / "features.npy").is_file():
        parser.error(f"{source} holds no features.npy (pass --source)")

    from clipdex import Index
    from clipdex.interchange import import_embeddings

    print(f"CPU: {cpu_line()}")
    raw = np.load(source / "features.npy")
    with open(source / "photo_ids.csv", newline="", encoding="utf-8") as f:
        ids = [row[0] for row in list(csv.reader(f))[1:]]
    features = raw.astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    print(f"{source}: {raw.shape[0]:,} x {raw.shape[1]} ({raw.dtype}); images: {args.images}")

    failures = 0
    with tempfile.TemporaryDirectory(prefix="clipdex-import-real-") as work, \
            Index.open(Path(work) / "index", model=MODEL, create=True) as index:
        started = time.perf_counter()
        report = import_embeddings(index, source, images=args.images)
        print(f"import: {report.imported:,} photos ({report.vectors_added:,} vectors, {report.skipped} skipped) "
              f"in {time.perf_counter() - started:.2f} s; folders: {', '.join(report.roots)}")
        if report.imported != len(ids):
            print(f"FAIL: {len(ids)} ids, {report.imported} photos imported")
            return 1
        rows = np.linspace(0, len(ids) - 1, args.queries).astype(int)
        print(f"\n{'photo id':<14} {'equal?':<7} {'max score diff':>14}   top-{args.k} (first 3)")
        for row in rows.tolist():
            want, want_scores = reference(features, ids, row, args.k)
            hits = index.search(f"@{ids[row]}", k=args.k)
            got = [Path(h.path).stem for h in hits]
            diff = float(np.max(np.abs(np.array([h.score for h in hits]) - want_scores))) if got else float("inf")
            equal = got == want and diff <= SCORE_TOLERANCE
            failures += not equal
            print(f"{ids[row]:<14} {'yes' if equal else 'NO':<7} {diff:>14.2e}   {', '.join(got[:3])}")
            if not equal:
                print(f"{'':<14} expected: {', '.join(want)}\n{'':<14} got:      {', '.join(got)}")
    verdict = "PASS" if not failures else f"FAIL ({failures} of {len(rows)} queries differ)"
    print(f"\n{verdict}: {len(rows)} photo queries, top-{args.k}, scores within {SCORE_TOLERANCE:g}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
