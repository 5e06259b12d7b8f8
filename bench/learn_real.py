"""Label sets that learn, measured on the REAL CLIP ViT-B/32 features of ../shared/datasets/unsplash-1k.

    python bench/learn_real.py [--index DIR] [--repeats 5]

1. Probes from photos.csv (clipdex.learn's training data and cross-validation, as `clipdex learn
   --metadata` runs them): ISO level (as in the tutorial's clip-img-sklearn notebook: its random forest
   0.818 against 0.786 for always "low"), camera make, country, featured. Every row is 5-fold
   cross-validated on the same folds: clipdex's probe (class-balanced, C chosen inside each outer fold
   from 1e-3..1e3), the majority class, the openai/CLIP README's fixed C=0.316 without class weights,
   and the tutorial's model (a random forest of 100 trees) for contrast.
2. Zero-shot + corrections. The real text encoder is not on this machine (no weights), so zero-shot
   class vectors of real CLIP cannot be made here: this part is a SIMULATION, said so in its output.
   Truth: photos whose captions (photo_description, ai_description) name exactly one of five scenes.
   Stand-in zero-shot: each class's vector is the mean of 1 (weak) or 10 (strong) other photos of that
   class (prototypes), scored like CLIP (softmax of 100 x cosine), as zero-shot is weak or strong. It is
   stored as a zero-shot set; k corrections per label are recorded with Index.correct; then
   `learn_from_corrections` runs as the CLI does (its zero-shot side from the stored probabilities,
   since the weights are missing), and the learned set, the stand-in and a probe alone are scored on
   the photos nobody corrected.

The index of the real features is imported into a temporary folder (or --index DIR is copied there).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_line

from clipdex import Index
from clipdex.classify import Classification, softmax
from clipdex.labels import make_label_set
from clipdex.learn import (
    C_GRID,
    Scores,
    choose_C,
    cross_validate_probe,
    learn_from_corrections,
    scores_of,
    training_data,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "unsplash-1k"
TABLE = DATA / "photos.csv"
FEATURES = DATA / "clip-vit-b32"
README_C = 0.316  # the openai/CLIP README's linear-probe example
FOREST_TREES = 100
TARGETS: tuple[tuple[str, str, dict[str, Any]], ...] = (  # (row name, column, options of training_data)
    ("ISO level, low < 800 <= high", "exif_iso", {"bins": [800.0]}),
    ("ISO level, median split (auto)", "exif_iso", {"levels": 2}),
    ("camera make (rare: other)", "exif_camera_make", {"rare": "other"}),
    ("country (rare: other)", "photo_location_country", {"rare": "other"}),
    ("featured (t/f)", "photo_featured", {}),
)
SCENES = {"sea": ["beach", "sea", "ocean", "shore", "wave", "waves"], "mountain": ["mountain", "mountains"],
          "forest": ["forest", "trees", "tree", "woods"], "flower": ["flower", "flowers"],
          "city": ["city", "building", "buildings", "street", "skyscraper"]}
PER_LABEL = (5, 10, 20)
PROTOTYPES = (1, 10)  # photos averaged into a stand-in class vector: a weak and a strong stand-in zero-shot
STAND_IN_SCALE = 100.0  # CLIP ViT-B/32's logit_scale


def imported_index(reuse: Path | None, folder: Path) -> Path:
    """A fresh index of the real features in ``folder``: a copy of ``reuse`` (the bench adds label sets and
    corrections, which must not pile up in it), else imported (about 8 s)."""
    import shutil

    from clipdex.interchange import import_embeddings

    if reuse is not None:
        shutil.copytree(reuse, folder)
        return folder
    with Index.open(folder, model="ViT-B-32", create=True) as index:
        import_embeddings(index, str(FEATURES), images=str(DATA / "images"))
    return folder


def row(name: str, s: Scores, extra: str = "") -> str:
    return (f"  {name:<34}{s.accuracy:>9.3f}{s.balanced_accuracy:>10.3f}{s.macro_f1:>10.3f}"
            + (f"  {extra}" if extra else ""))


def probes(index: Index) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    print("\n1. Probes on the real features from photos.csv (5-fold cross-validated, the same folds for every row)")
    for title, column, options in TARGETS:
        started = time.monotonic()
        data = training_data(index, TABLE, "photo_id", column, **options)
        x, y = data.vectors, data.classes
        cv = cross_validate_probe(x, y)
        fixed = cross_validate_probe(x, y, Cs=[README_C], balanced=False)
        folds = StratifiedKFold(cv.folds, shuffle=True, random_state=0)
        forest = cross_val_predict(RandomForestClassifier(FOREST_TREES, random_state=0, n_jobs=1), x, y, cv=folds)
        seconds = time.monotonic() - started
        counts = ", ".join(f"{c} {n}" for c, n in data.counts.items())
        print(f"\n{title}: {len(y)} photos, {len(data.class_names)} classes ({counts})")
        if data.levels:
            print(f"  levels: {data.levels}")
        print(f"  {'':<34}{'accuracy':>9}{'balanced':>10}{'macro-F1':>10}")
        print(row("clipdex probe (balanced, CV C)", scores_of(y, cv.probe),
                  "fold C: " + ", ".join(f"{c:g}" for c in cv.fold_C)))
        print(row("majority class", scores_of(y, cv.baseline)))
        print(row(f"C={README_C}, no class weights", scores_of(y, fixed.probe)))
        print(row(f"random forest ({FOREST_TREES} trees)", scores_of(y, forest)))
        print(f"  ({seconds:.1f} s for the four)")


@dataclass(frozen=True)
class Run:
    """One repeat of the simulation: CV scores on the corrected photos, held-out scores, the weight."""

    cv_zero_shot: Scores
    cv_combined: Scores  # nested: C and the weight chosen inside each outer fold
    cv_selection: Scores  # the stored choice, scored on the folds it was chosen on
    zero_shot: Scores
    combined: Scores
    probe: Scores
    weight: float


def mean_of(scores: list[Scores]) -> str:
    """Mean accuracy / balanced accuracy over repeats."""
    return (f"{np.mean([s.accuracy for s in scores]):.3f} / "
            f"{np.mean([s.balanced_accuracy for s in scores]):.3f}")


def scene_truth(index: Index) -> dict[int, str]:
    """file id -> scene, for photos whose captions name exactly one scene."""
    found = index.searchable()
    id_of = {Path(p).stem: int(i) for p, i in zip(found.paths, found.ids.tolist())}
    truth = {}
    with open(TABLE, encoding="utf-8") as f:
        for r in csv.DictReader(f):
            words = set(re.findall(r"[a-z]+", (r["ai_description"] + " " + r["photo_description"]).lower()))
            hits = [s for s, ws in SCENES.items() if words & set(ws)]
            if len(hits) == 1 and r["photo_id"] in id_of:
                truth[id_of[r["photo_id"]]] = hits[0]
    return truth


def corrections(index: Index, repeats: int) -> None:
    print("\n2. Zero-shot + corrections: a SIMULATION (the real text encoder is not here; see the docstring)")
    truth = scene_truth(index)
    labels = list(SCENES)
    found = index.searchable()
    row_of = {int(i): n for n, i in enumerate(found.ids.tolist())}
    vectors = np.asarray(found.vectors, dtype=np.float64)
    sizes = {s: sum(1 for v in truth.values() if v == s) for s in labels}
    print(f"  truth from captions: {len(truth)} photos ({', '.join(f'{s} {n}' for s, n in sizes.items())}); "
          f"stand-in zero-shot: the mean of 1 or 10 prototype photos per class, softmax of {STAND_IN_SCALE:g} x "
          "cosine; "
          f"{repeats} repeats")
    print(f"  {'stand-in':<11}{'corrections':<12}{'CV zero-shot':>13}{'CV combined':>12}{'selection':>10}  "
          f"{'held-out accuracy / balanced':<44}{'weights chosen':>16}")
    print(f"  {'prototypes':<11}{'per label':<12}{'balanced':>13}{'(nested)':>12}{'score':>10}  "
          f"{'zero-shot':<14}{'combined':<15}{'probe alone':<15}")
    for n_protos, k in [(p, k) for p in PROTOTYPES for k in PER_LABEL]:
        results = []
        for r in range(repeats):
            rng = np.random.default_rng(1000 * r + k)
            by_class = {s: [f for f, v in truth.items() if v == s] for s in labels}
            protos = {s: rng.choice(by_class[s], size=n_protos, replace=False).tolist() for s in labels}
            means = np.stack([vectors[[row_of[f] for f in protos[s]]].mean(axis=0) for s in labels])
            class_vectors = means / np.linalg.norm(means, axis=1, keepdims=True)
            excluded = {f for fs in protos.values() for f in fs}
            probs = softmax(STAND_IN_SCALE * vectors @ class_vectors.T)
            name = f"sim_p{n_protos}_r{r}_k{k}"
            label_set = make_label_set(name, labels, ["a photo of {}"])
            best = probs.argmax(axis=1)
            index.save_classification(Classification(
                label_set=label_set, file_ids=[int(i) for i in found.ids], paths=list(found.paths),
                probs=probs.astype(np.float32), predicted=[labels[b] for b in best],
                confidence=probs.max(axis=1).astype(np.float32)))
            corrected: dict[int, str] = {}
            for s in labels:
                pool = [f for f in by_class[s] if f not in excluded]
                for f in rng.choice(pool, size=min(k, len(pool) - 2), replace=False).tolist():
                    index.correct(name, int(f), s)
                    corrected[int(f)] = s
            learned = learn_from_corrections(index, name)
            held = [f for f in truth if f not in corrected and f not in excluded]
            y_held = np.array([labels.index(truth[f]) for f in held])
            stored = index.classification(learned.set_name)
            pred_of = dict(zip(stored.file_ids, stored.predicted))
            combined = np.array([labels.index(pred_of[f]) for f in held])
            zero = probs[[row_of[f] for f in held]].argmax(axis=1)
            rows = [row_of[f] for f in corrected]
            y_corr = np.array([labels.index(s) for s in corrected.values()])
            _, probe = choose_C(vectors[rows], y_corr, C_GRID, 5)
            alone = probe.predict(vectors[[row_of[f] for f in held]])
            results.append(Run(learned.scores["zero_shot"], learned.scores["combined"], learned.scores["selection"],
                               scores_of(y_held, zero),
                               scores_of(y_held, combined), scores_of(y_held, alone), learned.weight or 0.0))
        zs_cv = np.mean([x.cv_zero_shot.balanced_accuracy for x in results])
        comb_cv = np.mean([x.cv_combined.balanced_accuracy for x in results])
        sel_cv = np.mean([x.cv_selection.balanced_accuracy for x in results])
        weights = ",".join(f"{x.weight:g}" for x in results)
        print(f"  {n_protos:<11}{k:<12}{zs_cv:>13.3f}{comb_cv:>12.3f}{sel_cv:>10.3f}  "
              f"{mean_of([x.zero_shot for x in results]):<14}"
              f"{mean_of([x.combined for x in results]):<15}{mean_of([x.probe for x in results]):<15}{weights:>16}")
    print("  (CV columns: on the corrected photos; combined nested (weight and C chosen inside each outer fold), "
          "selection: the stored weight's score on the folds it was chosen on; held-out: every captioned "
          "photo not corrected and not a prototype; means over the repeats)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, help="an index of the real features to copy instead of importing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part", choices=("all", "probes", "corrections"), default="all")
    args = parser.parse_args()
    if not FEATURES.exists():
        sys.exit(f"{FEATURES} is missing: this bench needs ../shared/datasets/unsplash-1k")
    print(f"machine: {cpu_line()}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        folder = imported_index(args.index, Path(tmp) / "real-idx")
        with Index.open(folder) as index:
            if args.part in ("all", "probes"):
                probes(index)
            if args.part in ("all", "corrections"):
                corrections(index, args.repeats)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
