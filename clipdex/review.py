"""Review grids for a classification: per label, a row of example photos with probabilities.

``random`` draws N photos per predicted label with a seeded generator (the
tutorial's "random verify" figure, reproducible); ``least-confident`` shows the
N photos with the lowest probability among those given the label, where
mistakes hide. A sigmoid model's (SigLIP) probabilities are each label's own, not
shares of 1: its rows' titles say so.

A grid is sized by the photos it shows: asking for 100,000 per label of a
30-photo index draws at most 30 columns. ``per_label`` is at most
:data:`MAX_PER_LABEL`, and the sheet's size in pixels is capped by
:mod:`clipdex.grid`.
"""

from __future__ import annotations

import os

import numpy as np

from clipdex.classify import MULTI_SEPARATOR, SIGMOID, UNCERTAIN, Classification
from clipdex.errors import ReviewOptionError
from clipdex.grid import Row, Tile, draw_rows, tile_name

MODES = ("random", "least-confident", "most-confident")
MAX_PER_LABEL = 500  # a review row is for looking at; more is a table (clipdex classify --out)


def check_review_options(per_label: int, seed: int, mode: str = "random", where: str = "review") -> None:
    """Raise :class:`ReviewOptionError` unless the review options are usable.

    Cheap: callers (the CLI) run it before loading a model or classifying, so a
    bad ``--per-label`` fails at once rather than after the work.
    """
    if isinstance(per_label, bool) or not isinstance(per_label, int) or not 1 <= per_label <= MAX_PER_LABEL:
        raise ReviewOptionError(where, f"per_label {per_label!r} is not between 1 and {MAX_PER_LABEL}",
                                f"Ask for 1 to {MAX_PER_LABEL} photos per label; for every photo's label, "
                                "write a table with `clipdex classify --out FILE.csv`.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ReviewOptionError(where, f"seed {seed!r} is not a whole number >= 0", "Use e.g. 0.")
    if mode not in MODES:
        raise ReviewOptionError(where, f"mode {mode!r} is unknown", f"Use one of: {', '.join(MODES)}.")


def review_rows(result: Classification, *, per_label: int = 8, seed: int = 0,
                mode: str = "random") -> list[Row]:
    """One row per label (and ``uncertain`` when present): its sample photos.

    Tiles show display paths and open ``result``'s real paths (``fs_paths``).
    """
    check_review_options(per_label, seed, mode, f"review of label set {result.label_set.name!r}")
    rng = np.random.default_rng(seed)
    labels = list(result.labels)
    label_index = {name: j for j, name in enumerate(labels)}
    members_of: dict[str, list[int]] = {name: [] for name in labels + [UNCERTAIN]}
    for i, predicted in enumerate(result.predicted):
        for name in predicted.split(MULTI_SEPARATOR):
            if name in members_of:
                members_of[name].append(i)
    # Say so where the probabilities are a sigmoid model's (each label on its own, not shares of 1).
    scored = ", per-label sigmoid scores" if result.scoring == SIGMOID else ""
    rows = []
    for name in labels + [UNCERTAIN]:
        members = np.array(members_of[name], dtype=np.int64)
        if name == UNCERTAIN and not len(members):
            continue
        j = label_index.get(name)
        probs = result.probs[members, j] if j is not None else result.confidence[members]
        if mode == "random":
            chosen = rng.permutation(len(members))[:per_label]
        else:
            order = np.argsort(probs if mode == "least-confident" else -probs, kind="stable")
            chosen = order[:per_label]
        tiles = []
        for c in chosen:
            i = int(members[c])
            tiles.append(Tile(result.paths[i], f"{name} {probs[c]:.2f}\n{tile_name(result.paths[i])}",
                              fs_path=result.fs_path(i)))
        title = f"{result.label_set.name} = {name}   ({len(members)} photos, {mode}{scored})"
        rows.append(Row(title, tiles))
    return rows


def draw_review(result: Classification, out: str | os.PathLike[str], *, per_label: int = 8,
                seed: int = 0, mode: str = "random", thumb: int = 160) -> str:
    """Draw :func:`review_rows` into an image file (as many columns as the fullest row shows)."""
    return draw_rows(review_rows(result, per_label=per_label, seed=seed, mode=mode), out, thumb=thumb)
