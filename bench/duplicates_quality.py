"""How well `clipdex duplicates` finds copies: precision and recall of its groups, and what it finds
among real photos.

    nice -n 10 python bench/duplicates_quality.py                  # both parts, ~6 min on 2 cores
    nice -n 10 python bench/duplicates_quality.py --part real      # the real features only (seconds)

Part 1, end to end with a real model: the shared 1,000 Unsplash photos are indexed with ViT-B-32
(open_clip, RANDOM weights /tmp/clipdex-bench/vit-b-32-random.pt: the real weights are not on this
machine), the rule is calibrated on them (clipdex.duplicates.calibrate: its own alterations), then
altered copies of COPIED photos are added, made with OTHER alterations than calibration's (blur,
saturation, grayscale, letterbox, a caption drawn on, down- then up-scaling, a mirror image).
Groups are scored by pairs: a pair of photos in one group is right when both are the same original
or its copies. Precision = right pairs / pairs grouped; recall = right pairs / true pairs. Both
ways of splitting a component are measured on the same index and rule: around a keeper (each
member a copy of the keeper, the default) and cliques (every two members copies).

Part 2, the REAL OpenAI CLIP ViT-B/32 features of the same photos (imported, no weights needed):
the groups found at the default rule (what an imported index uses), and the closest pairs of
different photos with their pHash distance: the look-alikes a cosine threshold alone would group.
Altered copies cannot be encoded with the real model here (no weights): that part is blocked.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import cpu_line  # noqa: E402  (a sibling script, not a package)

from clipdex import Index  # noqa: E402
from clipdex import duplicates as dup  # noqa: E402

DATA = Path("/work/shared/datasets/unsplash-1k")
WEIGHTS = Path("/tmp/clipdex-bench/vit-b-32-random.pt")
COPIED = 100  # originals that get altered copies (x 7 alterations)
SEED = 0
# The baseline in the same run: a fixed rule measured on this bench before calibration had pHash steps
# (cosine >= 0.9999, or >= 0.7902 within 6 bits: precision 1.000, recall 0.948, around a keeper).
FIXED_RULE = dup.DuplicateRule(0.9999, 0.7902, 6, source="fixed baseline")


def _caption(image: Image.Image) -> Image.Image:
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    draw.rectangle((0, int(h * 0.85), w, h), fill=(0, 0, 0))
    draw.text((int(w * 0.05), int(h * 0.88)), "holiday 2019 - copy for grandma", fill=(255, 255, 255))
    return out


def _letterbox(image: Image.Image) -> Image.Image:
    w, h = image.size
    return ImageOps.pad(image, (w, int(h * 1.25)), color=(0, 0, 0))


ALTERATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "saturation": lambda im: ImageEnhance.Color(im).enhance(1.6),
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "letterbox": _letterbox,
    "caption": _caption,
    "down-up": lambda im: im.resize((im.width // 4, im.height // 4)).resize(im.size),
    "mirror": ImageOps.mirror,
}


def make_copies(originals: list[Path], folder: Path) -> dict[str, tuple[str, str]]:
    """Altered copies of ``originals`` in ``folder``; copy name -> (original name, alteration)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for path in originals:
        image = Image.open(path).convert("RGB")
        for name, alter in ALTERATIONS.items():
            target = folder / f"{path.stem}--{name}.jpg"
            if not target.exists():
                alter(image).save(target, quality=90)
            made[target.name] = (path.name, name)
    return made


def pairs_of(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}  # type: ignore[misc]


def part_random(work: Path) -> None:
    print("\n## Part 1: random ViT-B-32 weights, end to end (real weights unavailable here)")
    images = DATA / "images"
    index_dir = work / "rand-idx"
    kwargs = dict(model="ViT-B-32", weights=str(WEIGHTS), precision="fp32")
    t = time.perf_counter()
    with Index.open(index_dir, create=True, **kwargs) as index:  # type: ignore[arg-type]
        index.add(images)
        print(f"indexed the 1,000 originals in {time.perf_counter() - t:.0f} s")
        t = time.perf_counter()
        rule = dup.calibrate(index)
        print(f"calibrated in {time.perf_counter() - t:.0f} s: {rule.describe()}")
        print(f"  {rule.estimates()}")
        print("  recall by calibration alteration: " + ", ".join(f"{k} {v:.2f}" for k, v in rule.by_alteration.items()))
        rng = np.random.default_rng(SEED)
        originals = sorted(images.glob("*.jpg"))
        picked = [originals[i] for i in sorted(rng.choice(len(originals), COPIED, replace=False).tolist())]
        copies = make_copies(picked, work / "copies")
        t = time.perf_counter()
        index.add(work / "copies")
        print(f"indexed {len(copies)} altered copies ({len(ALTERATIONS)} alterations of {COPIED} photos) in "
              f"{time.perf_counter() - t:.0f} s")
        reports = {linkage: dup.find_duplicates(index, rule, linkage=linkage) for linkage in dup.LINKAGES}
        reports["fixed"] = dup.find_duplicates(index, FIXED_RULE)
    origin = {name: name for name in (p.name for p in originals)}
    origin.update({copy: original for copy, (original, _) in copies.items()})
    true_groups: dict[str, list[str]] = {}
    for name, original in origin.items():
        true_groups.setdefault(original, []).append(name)
    truth = pairs_of([g for g in true_groups.values() if len(g) > 1])
    print(f"\nrule: {rule.describe()}")
    print("\n| groups | found in | groups | pairs grouped | right | true pairs | precision | recall |")
    print("|---|---|---|---|---|---|---|---|")
    predicted_by: dict[str, set[tuple[str, str]]] = {}
    for linkage, report in reports.items():
        found = [[m.path.rsplit("/", 1)[-1] for m in g.members] for g in report.groups]
        predicted = predicted_by[linkage] = pairs_of(found)
        right = predicted & truth
        precision = len(right) / len(predicted) if predicted else 1.0
        recall = len(right) / len(truth) if truth else 1.0
        name = {"keeper": "around a keeper (each a copy of it)", "complete": "cliques (every pair a copy)",
                "fixed": f"baseline: {FIXED_RULE.describe()}, around a keeper"}[linkage]
        print(f"| {name} | {report.seconds:.1f} s ({report.candidates} candidates, {report.phashes_computed} "
              f"hashed) | {len(found)} | {len(predicted)} | {len(right)} | {len(truth)} | {precision:.3f} | "
              f"{recall:.3f} |")
    print("\n| alteration | copies found with their original: around a keeper | cliques |\n|---|---|---|")
    for alteration in ALTERATIONS:
        wanted = [tuple(sorted((c, o))) for c, (o, a) in copies.items() if a == alteration]
        hits = [sum(1 for p in wanted if p in predicted_by[linkage]) / len(wanted) for linkage in dup.LINKAGES]
        print(f"| {alteration} | " + " | ".join(f"{h:.2f}" for h in hits) + " |")
    for linkage, predicted in predicted_by.items():
        wrong = sorted(predicted - truth)
        if wrong:
            print(f"\n{linkage}: pairs grouped that are different photos ({len(wrong)}; first 10):")
            for a, b in wrong[:10]:
                print(f"  {a}  {b}")


def part_real(work: Path, grid: Path | None) -> None:
    print("\n## Part 2: the real OpenAI CLIP ViT-B/32 features (imported; copies cannot be encoded: no weights)")
    index_dir = work / "real-idx"
    if not (index_dir / "catalog.sqlite").exists():
        subprocess.run([sys.executable, "-m", "clipdex", "import", str(DATA / "clip-vit-b32"), "--images",
                        str(DATA / "images"), "--model", "ViT-B-32", "--index", str(index_dir)], check=True,
                       stdout=subprocess.DEVNULL)
    with Index.open(index_dir) as index:
        rule, _ = dup.rule_for(index)
        report = dup.find_duplicates(index, rule)
        print(f"default rule: {rule.describe()}")
        print(f"groups found: {len(report.groups)} ({report.search}, {report.candidates} candidate pairs, "
              f"{report.seconds:.1f} s)")
        for g in report.groups:
            print("  " + ", ".join(f"{m.path.rsplit('/', 1)[-1]} (cos {m.cosine:.4f}, pHash {m.phash_distance})"
                                   for m in g.members))
        found = index.searchable()
    vectors = found.vectors
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -1)
    a, b = np.triu_indices(len(vectors), 1)
    order = np.argsort(-scores[a, b])[:12]
    print("\nthe closest pairs of different photos (a cosine threshold alone would group these):")
    print("| cosine | pHash distance | photo | photo |\n|---|---|---|---|")
    tiles = []
    for o in order.tolist():
        i, j = int(a[o]), int(b[o])
        distance = dup.phash_distance(dup.phash_file(found.paths[i]), dup.phash_file(found.paths[j]))
        print(f"| {scores[i, j]:.4f} | {distance} | {Path(found.paths[i]).stem} | {Path(found.paths[j]).stem} |")
        tiles.append((found.paths[i], found.paths[j], float(scores[i, j]), distance))
    for threshold in (0.95, 0.96, 0.97, 0.985, 0.99):
        pairs = int(np.sum(scores[a, b] >= threshold))
        print(f"pairs of different photos at cosine >= {threshold}: {pairs}")
    if grid is not None:
        from clipdex.grid import Row, Tile, draw_rows

        rows = [Row(f"cosine {c:.4f}, pHash {d}", [Tile(p, Path(p).stem), Tile(q, Path(q).stem)])
                for p, q, c, d in tiles[:8]]
        draw_rows(rows, grid, thumb=200)
        print(f"contact sheet of the 8 closest pairs: {grid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "random", "real"], default="all")
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipdex-dupes-quality"),
                        help="where the indexes and altered copies go (reused by a second run)")
    parser.add_argument("--grid", type=Path, help="draw the closest real look-alike pairs to this image")
    parser.add_argument("--fresh", action="store_true", help="start from an empty work folder")
    args = parser.parse_args()
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    print(cpu_line())
    print(f"{os.cpu_count()} cores; photos: {DATA / 'images'}")
    if args.part in ("all", "real"):
        part_real(args.work, args.grid)
    if args.part in ("all", "random"):
        if not WEIGHTS.exists():
            sys.exit(f"{WEIGHTS} is missing: make it with bench/make_random_checkpoint.py")
        part_random(args.work)


if __name__ == "__main__":
    main()
