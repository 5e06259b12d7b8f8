"""Review grids for a classification: per label, a row of example photos with probabilities.

``random`` draws N photos per predicted label with a seeded generator (the
tutorial's "random verify" figure, reproducible); ``least-confident`` shows the
N photos with the lowest probability among those given the label, where
mistakes hide.
"""

from __future__ import annotations

import os

import numpy as np

from clipdex.classify import MULTI_SEPARATOR, UNCERTAIN, Classification
from clipdex.grid import Row, Tile, draw_rows

MODES = ("random", "least-confident", "most-confident")


def review_rows(result: Classification, *, per_label: int = 8, seed: int = 0,
                mode: str = "random") -> list[Row]:
    """One row per label (and ``uncertain`` when present): its sample photos."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    rng = np.random.default_rng(seed)
    labels = list(result.labels)
    label_index = {name: j for j, name in enumerate(labels)}
    rows = []
    for name in labels + [UNCERTAIN]:
        members = np.array([i for i, p in enumerate(result.predicted)
                            if name in p.split(MULTI_SEPARATOR)], dtype=np.int64)
        if name == UNCERTAIN and not len(members):
            continue
        j = label_index.get(name)
        probs = result.probs[members, j] if j is not None else result.confidence[members]
        if mode == "random":
            chosen = rng.permutation(len(members))[:per_label]
        else:
            order = np.argsort(probs if mode == "least-confident" else -probs, kind="stable")
            chosen = order[:per_label]
        tiles = [Tile(result.paths[members[c]],
                      f"{name} {probs[c]:.2f}\n{os.path.basename(result.paths[members[c]])}")
                 for c in chosen]
        title = f"{result.label_set.name} = {name}   ({len(members)} photos, {mode})"
        rows.append(Row(title, tiles))
    return rows


def draw_review(result: Classification, out: str | os.PathLike[str], *, per_label: int = 8,
                seed: int = 0, mode: str = "random", thumb: int = 160) -> str:
    """Draw :func:`review_rows` into an image file."""
    return draw_rows(review_rows(result, per_label=per_label, seed=seed, mode=mode), out,
                     thumb=thumb, columns=per_label)
