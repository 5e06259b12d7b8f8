"""Label sets that learn: a linear probe on the stored vectors, from a column of the user's table or
from the corrections people made, stored as a label set like any other.

Two ways in, one shape out:

- **From a table** (:func:`learn_from_table`): the photos a table names, with the values of one of its
  columns as classes (a numeric column such as ISO is cut into levels), train a logistic regression on
  the unit image vectors: class-balanced, multinomial, its regularisation ``C`` chosen by stratified
  cross-validation (log-loss) over a wide log grid (:data:`C_GRID`, as CLIP's paper sweeps it). Reported:
  *cross-validated* accuracy, balanced accuracy and macro-F1, ``C`` chosen inside each outer fold
  (nested, so the numbers are not flattered by the choice), beside the majority-class baseline and,
  where the table's values are the labels of a stored zero-shot set of that name, beside that set's
  predictions on the same photos.
- **From corrections** (:func:`learn_from_corrections`): a zero-shot set's corrections teach a probe
  whose logits are interpolated with the zero-shot logits, ``(1 - w) * zero_shot + w * probe``, the
  weight ``w`` and ``C`` chosen together by cross-validation on the corrected photos. ``w = 0`` (pure
  zero-shot) is among the choices, so the *selection* never scores below zero-shot on the folds it was
  chosen on; the number reported as the gain is nested (the choice made again inside each outer fold,
  with 3 corrected photos a label at least), an honest estimate that can be below zero-shot. The
  zero-shot logits come from re-encoding the set's prompts (the model's text
  tower); without the weights, from the stored zero-shot probabilities (``log p``: the same logits up
  to a per-photo constant for a softmax model, which a softmax ignores).

Either way the result is a *linear* model of the vector (for a combination with re-encoded prompts:
``coef = (1 - w) * logit_scale * class_vectors + w * probe_coef``), stored in the label set's
:attr:`~clipdex.labels.LabelSet.origin`, so :func:`predict_learned` labels photos indexed since
without retraining. A learned set never replaces a zero-shot set: learning from the corrections of
``NAME`` (or from a table whose name is a zero-shot set) stores ``NAME-learned`` beside it, and
``NAME`` stays pure zero-shot.

:func:`least_sure` lists the photos a set is least sure of (smallest margin between its two most
probable labels), corrected photos left out: the ones worth correcting next (active learning).

Identical files (one content hash, one vector) are one training row: a table naming two copies, or a
correction (stored by content) covering every copy, would otherwise put the same vector in a training
fold and in the test fold.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.classify import SIGMOID, SOFTMAX, Classification, TextEncoder, softmax
from clipdex.errors import ClipdexError, LabelSetError, ModelError, TableError
from clipdex.labels import MULTI_SEPARATOR, NAME, RESERVED_SET_NAMES, UNCERTAIN, Label, LabelSet, check_min_prob

if TYPE_CHECKING:
    from clipdex.index import Index

log = logging.getLogger(__name__)

KIND = "learned"
FROM_TABLE = "table"
FROM_CORRECTIONS = "corrections"
LEARNED_SUFFIX = "-learned"  # where a set learned from NAME's corrections is stored: NAME-learned
# C of the logistic regression (inverse regularisation) is chosen from this grid: 1e-3 .. 1e3 in half
# decades, wide enough that the best C of unit CLIP vectors (around 1-30 with class balancing) is inside it.
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 13))
# Weights of the probe in the zero-shot/probe interpolation; 0 (pure zero-shot) must stay first.
WEIGHT_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
C_SCORING = "neg_log_loss"  # how the inner CV compares values of C (see choose_C)
FOLDS = 5  # outer (and inner) cross-validation folds
MIN_CORRECTIONS_PER_LABEL = 2  # the least a label needs to be learned and cross-validated at all
MAX_LEVELS = 12  # a numeric column with more distinct values than this is cut into levels
DEFAULT_LEVELS = 2  # automatic quantile levels of a numeric column (a median split: low/high)
LEVEL_NAMES = {2: ("low", "high"), 3: ("low", "mid", "high")}
NESTED_MAX_ROWS = 20_000  # above this, C is chosen once (on a sample) instead of inside every outer fold
SEARCH_SAMPLE = 10_000  # rows C is chosen on when the table is larger than NESTED_MAX_ROWS
MAX_ITER = 300  # lbfgs iterations: plenty at the C values that win (< 100 on real CLIP vectors); at a huge C
# separable classes never converge, and stopping there regularises (and keeps a 13-C search to seconds)
# BLAS and OpenMP threads while fitting: these small problems run 20x slower with threads fighting over
# a busy 2-core machine (0.08 s against 1.85 s for one 13-class fit of 700 rows, measured).
FIT_THREADS = 1
PROB_FLOOR = 1e-30  # stored float32 probabilities are floored before their log is taken
OTHER = "other"  # the class rare values are merged into with rare="other"
RARE_CHOICES = ("error", "drop", "other")
MAX_NAMED = 10  # rare classes an error names (then "and N more")
COEF_DECIMALS = 6  # decimals of the coefficients kept in the label set's stored definition
# C where no inner CV can choose one: an outer training part holding a single row of a class (a class
# of 2 rows, as --min-rows 2 allows). 10 is what log-loss chose in every outer fold of ISO level on the
# real CLIP features (see choose_C); the folds that used it are said in the notes.
FALLBACK_C = 10.0
LOGIT_CHUNK = 65_536  # rows of vectors turned into logits at a time: float32, never a float64 copy of all
REPLACEABLE_KINDS = (KIND,)  # kinds of stored set a table may replace (zero-shot and topics sets never)


# -- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scores:
    """Accuracy, balanced accuracy (mean recall over the true classes) and macro-F1 of predictions."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    count: int

    def to_dict(self) -> dict[str, float | int]:
        return {"accuracy": round(self.accuracy, 4), "balanced_accuracy": round(self.balanced_accuracy, 4),
                "macro_f1": round(self.macro_f1, 4), "count": self.count}


@dataclass(frozen=True)
class Learned:
    """What :func:`learn_from_table` or :func:`learn_from_corrections` learned and measured.

    ``scores`` holds cross-validated scores by row name: ``probe`` (the linear probe), ``baseline``
    (always the training folds' most frequent class), ``zero_shot`` (a zero-shot set's predictions
    on the same photos) and, from corrections, ``combined`` (zero-shot and probe interpolated).
    """

    set_name: str  # the label set the result is stored as
    source: str  # FROM_TABLE or FROM_CORRECTIONS
    target: str  # the table's column, or the zero-shot set whose corrections taught it
    classes: list[str]
    counts: dict[str, int]  # training rows (photos) per class
    folds: int
    nested: bool  # C (and the weight) chosen inside each outer fold, or by the scoring CV itself
    C: float  # chosen on all rows, for the stored model
    scores: dict[str, Scores]
    photos: int  # photos labelled and stored
    predicted: dict[str, int]  # stored predictions per label
    saved: bool
    seconds: float
    fold_C: list[float] = field(default_factory=list)
    fold_weights: list[float] = field(default_factory=list)  # the weight chosen in each outer fold (corrections)
    weight: float | None = None  # the probe's weight in the combination (corrections)
    prior: str | None = None  # where the zero-shot logits came from: "text-encoder" or "stored-probabilities"
    levels: str | None = None  # how a numeric column was cut into levels
    table: str | None = None
    left_out: dict[str, int] = field(default_factory=dict)  # rare classes left out, with their rows
    rows_unmatched: int = 0  # table rows that name no indexed photo
    rows_without_value: int = 0  # table rows of a photo whose target cell is empty
    notes: list[str] = field(default_factory=list)
    result: Classification | None = field(default=None, repr=False, compare=False)  # every photo's labels

    def to_dict(self) -> dict[str, Any]:
        return {"set": self.set_name, "source": self.source, "target": self.target, "table": self.table,
                "classes": self.classes, "counts": self.counts, "levels": self.levels, "folds": self.folds,
                "nested": self.nested, "C": self.C, "fold_C": self.fold_C, "fold_weights": self.fold_weights,
                "weight": self.weight,
                "prior": self.prior, "scores": {k: v.to_dict() for k, v in self.scores.items()},
                "photos": self.photos, "predicted": self.predicted, "saved": self.saved,
                "left_out": self.left_out, "rows_unmatched": self.rows_unmatched,
                "rows_without_value": self.rows_without_value, "notes": self.notes,
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class Unsure:
    """A photo a set is unsure of: its two most probable labels are close (or, multi-label, a label
    sits near the threshold). ``margin`` is that closeness (0: a coin toss)."""

    file_id: int
    path: str
    label: str
    prob: float
    margin: float
    top: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.file_id, "path": self.path, "name": os.path.basename(self.path), "label": self.label,
                "prob": round(self.prob, 4), "margin": round(self.margin, 4),
                "top": [[label, round(p, 4)] for label, p in self.top]}


# -- the numbers: fitting and cross-validating (no index involved) --------------------------------
def scores_of(truth: np.ndarray, predicted: np.ndarray) -> Scores:
    """:class:`Scores` of integer class predictions (scikit-learn's definitions)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class never predicted: its F1 is 0, as documented
        return Scores(accuracy=float(accuracy_score(truth, predicted)),
                      balanced_accuracy=float(balanced_accuracy_score(truth, predicted)),
                      macro_f1=float(f1_score(truth, predicted, average="macro", zero_division=0)),
                      count=len(truth))


def fit_probe(vectors: np.ndarray, classes: np.ndarray, C: float, *, balanced: bool = True) -> Any:
    """A multinomial logistic regression (lbfgs, L2) on unit vectors; class-balanced unless told not."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, class_weight="balanced" if balanced else None, max_iter=MAX_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(vectors, classes)
    return model


def choose_C(vectors: np.ndarray, classes: np.ndarray, Cs: Sequence[float], folds: int, *, seed: int = 0,
             balanced: bool = True) -> tuple[float, Any]:
    """The C of ``Cs`` with the best stratified-CV log-loss, and a probe fitted with it on all of
    ``vectors``. One C: no search.

    Log-loss, a proper scoring rule, because it is smooth in C: chosen by balanced accuracy, the C of
    the five outer folds of ISO level on the real CLIP features ranged from 0.003 to 10 (accuracy
    0.705, balanced 0.635, macro-F1 0.610); by log-loss every fold chose 10 (0.728, 0.643, 0.625), and
    for 13 camera makes balanced accuracy's small C predicted rare makes for nearly everything
    (accuracy 0.08)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(FIT_THREADS):
        return _choose_C(vectors, classes, Cs, folds, seed=seed, balanced=balanced)


def _choose_C(vectors: np.ndarray, classes: np.ndarray, Cs: Sequence[float], folds: int, *, seed: int,
              balanced: bool) -> tuple[float, Any]:
    if len(Cs) == 1:
        return float(Cs[0]), fit_probe(vectors, classes, Cs[0], balanced=balanced)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    k = min(folds, int(np.bincount(classes).min()))
    if k < 2:  # a class with one row here: no fold could hold it out and train on it too
        return FALLBACK_C, fit_probe(vectors, classes, FALLBACK_C, balanced=balanced)
    model = LogisticRegressionCV(Cs=list(Cs), cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                                 class_weight="balanced" if balanced else None, scoring=C_SCORING,
                                 max_iter=MAX_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(vectors, classes)
    return float(np.ravel(model.C_)[0]), model


@dataclass(frozen=True)
class ProbeCV:
    """Out-of-fold predictions of a probe and of the majority-class baseline, and the C of each fold."""

    probe: np.ndarray
    baseline: np.ndarray
    fold_C: list[float]
    folds: int
    nested: bool
    fixed_folds: int = 0  # outer folds whose training part held one row of a class: C was FALLBACK_C


def cross_validate_probe(vectors: np.ndarray, classes: np.ndarray, *, Cs: Sequence[float] = C_GRID,
                         folds: int = FOLDS, seed: int = 0, balanced: bool = True,
                         nested: bool | None = None) -> ProbeCV:
    """See :func:`_cross_validate_probe` (run with :data:`FIT_THREADS` threads)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(FIT_THREADS):
        return _cross_validate_probe(vectors, classes, Cs=Cs, folds=folds, seed=seed, balanced=balanced,
                                     nested=nested)


def _cross_validate_probe(vectors: np.ndarray, classes: np.ndarray, *, Cs: Sequence[float],
                          folds: int, seed: int, balanced: bool, nested: bool | None) -> ProbeCV:
    """Stratified ``folds``-fold predictions of the probe for every row, each from a probe that never
    saw it, with C chosen by an inner CV on each outer training part (``nested``; default: when there
    are at most :data:`NESTED_MAX_ROWS` rows, else C is chosen once, on a sample, before the outer CV),
    and of the baseline that always says its training part's most frequent class."""
    from sklearn.model_selection import StratifiedKFold

    k = min(folds, int(np.bincount(classes).min()))
    if k < 2:
        raise ValueError("every class needs at least 2 rows to be cross-validated")
    nested = len(classes) <= NESTED_MAX_ROWS if nested is None else nested
    fixed = None
    if not nested and len(Cs) > 1:
        rows = _stratified_sample(classes, SEARCH_SAMPLE, seed)
        fixed = _choose_C(vectors[rows], classes[rows], Cs, folds, seed=seed, balanced=balanced)[0]
    probe = np.zeros(len(classes), dtype=np.int64)
    baseline = np.zeros(len(classes), dtype=np.int64)
    fold_C = []
    fixed_folds = 0
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(vectors, classes):
        if fixed is None and len(Cs) > 1 and np.bincount(classes[train]).min() < 2:
            fixed_folds += 1  # _choose_C falls back to FALLBACK_C
        if fixed is not None:
            C, model = fixed, fit_probe(vectors[train], classes[train], fixed, balanced=balanced)
        else:
            C, model = _choose_C(vectors[train], classes[train], Cs, folds, seed=seed, balanced=balanced)
        fold_C.append(C)
        probe[test] = model.predict(vectors[test])
        baseline[test] = np.bincount(classes[train]).argmax()
    return ProbeCV(probe=probe, baseline=baseline, fold_C=fold_C, folds=k, nested=nested, fixed_folds=fixed_folds)


def _stratified_sample(classes: np.ndarray, most: int, seed: int) -> np.ndarray:
    """Row indices of at most ``most`` rows, each class keeping its share (and at least a few rows)."""
    if len(classes) <= most:
        return np.arange(len(classes))
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(classes):
        rows = np.flatnonzero(classes == c)
        take = max(FOLDS, round(len(rows) * most / len(classes)))
        picked.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(picked))


def logit_matrix(model: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(coef (classes, dim), intercept (classes,)) whose ``x @ coef.T + intercept`` are the probe's
    logits for all ``n_classes`` (a two-class probe's one row becomes ``[0, row]``: the same softmax)."""
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    if coef.shape[0] == 1 and n_classes == 2:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, intercept[0]])
    if coef.shape[0] != n_classes:
        raise ValueError(f"the probe knows {coef.shape[0]} classes, not {n_classes}")
    return coef, intercept


@dataclass(frozen=True)
class Combination:
    """The chosen interpolation of zero-shot and probe logits, and the out-of-fold predictions of
    zero-shot, the probe alone (its own best C) and the combination on the corrected photos."""

    C: float
    weight: float
    probe_C: float
    zero_shot: np.ndarray
    probe: np.ndarray
    combined: np.ndarray
    folds: int
    grid: dict[tuple[float, float], float]  # (C, weight) -> CV balanced accuracy


def choose_combination(vectors: np.ndarray, classes: np.ndarray, zero_shot: np.ndarray, *,
                       Cs: Sequence[float] = C_GRID, weights: Sequence[float] = WEIGHT_GRID,
                       folds: int = FOLDS, seed: int = 0) -> Combination:
    """Choose C and the probe's weight ``w`` in ``(1 - w) * zero_shot + w * probe`` (logits) by the
    balanced accuracy of stratified CV on the labelled rows; among those that tie, by the lowest
    class-balanced log-loss of their probabilities (a tie on a few photos is common, and the edge of a
    plateau of right answers, its smallest weight, is where new photos go wrong first).

    ``zero_shot`` holds the zero-shot logits of the rows (rows, classes). The same CV chooses and
    scores (not nested: the few corrections of a set cannot spare an inner split), which flatters the
    combined and probe rows a little; the zero-shot row has nothing chosen. ``weights`` must start
    at 0, so the combination's CV score is never below zero-shot's.
    """
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    if not weights or weights[0] != 0.0:
        raise ValueError("the weights must start with 0 (pure zero-shot)")
    k = min(folds, int(np.bincount(classes, minlength=zero_shot.shape[1]).min()))
    if k < 2:
        raise ValueError("every class needs at least 2 rows to be cross-validated")
    n_classes = zero_shot.shape[1]
    out_of_fold = {C: np.zeros(zero_shot.shape, dtype=np.float64) for C in Cs}
    with threadpool_limits(FIT_THREADS):
        for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(vectors, classes):
            for C in Cs:
                coef, intercept = logit_matrix(fit_probe(vectors[train], classes[train], C), n_classes)
                out_of_fold[C][test] = vectors[test] @ coef.T + intercept
    zs_pred = zero_shot.argmax(axis=1)
    zs_score = scores_of(classes, zs_pred).balanced_accuracy
    grid: dict[tuple[float, float], float] = {}
    best = (zs_score, -_balanced_log_loss(classes, zero_shot), float(Cs[0]), 0.0)
    best_probe = (-1.0, -math.inf, float(Cs[0]))
    for w in weights:
        for C in Cs:
            if w == 0.0 and Cs[0] != C:
                grid[(float(C), 0.0)] = zs_score  # pure zero-shot: C plays no part
                continue
            logits = (1.0 - w) * zero_shot + w * out_of_fold[C]
            score = scores_of(classes, logits.argmax(axis=1)).balanced_accuracy
            fit = -_balanced_log_loss(classes, logits)
            grid[(float(C), float(w))] = score
            if (score, fit) > best[:2] and score > best[0] - 1e-12:
                best = (score, fit, float(C), float(w))
            if w == 1.0 and (score, fit) > best_probe[:2]:
                best_probe = (score, fit, float(C))
    _, _, C, w = best
    combined = ((1.0 - w) * zero_shot + w * out_of_fold[C]).argmax(axis=1)
    probe = out_of_fold[best_probe[2]].argmax(axis=1)
    return Combination(C=C, weight=w, probe_C=best_probe[2], zero_shot=zs_pred, probe=probe,
                       combined=combined, folds=k, grid=grid)


@dataclass(frozen=True)
class NestedCombination:
    """Out-of-fold predictions of the combination and the probe whose C and weight were chosen by
    :func:`choose_combination` inside each outer training part only (an honest estimate of the
    choice), with the majority-class baseline of the same folds and what each fold chose."""

    combined: np.ndarray
    probe: np.ndarray
    baseline: np.ndarray
    fold_C: list[float]
    fold_weights: list[float]
    folds: int


def can_nest(classes: np.ndarray, n_classes: int, folds: int) -> bool:
    """Whether every outer training part of :func:`nested_combination` keeps 2 rows of every class
    (what the inner choice needs to cross-validate at all): 3 rows a class, at least."""
    counts = np.bincount(classes, minlength=n_classes)
    k = min(folds, int(counts.min()))
    return k >= 2 and int((counts - np.ceil(counts / k)).min()) >= 2


def nested_combination(vectors: np.ndarray, classes: np.ndarray, zero_shot: np.ndarray, *,
                       Cs: Sequence[float] = C_GRID, weights: Sequence[float] = WEIGHT_GRID,
                       folds: int = FOLDS, seed: int = 0) -> NestedCombination:
    """Stratified outer CV of :func:`choose_combination`: in each outer fold, C and the weight are
    chosen on the training part alone (its own inner CV), then that choice labels the held-out part.
    The number it gives can be below zero-shot's (a choice made on a few photos can be wrong); the
    choice's own score on the folds it was chosen on cannot. Needs :func:`can_nest`."""
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    n_classes = zero_shot.shape[1]
    if not can_nest(classes, n_classes, folds):
        raise ValueError("every class needs at least 3 rows for a nested estimate")
    k = min(folds, int(np.bincount(classes, minlength=n_classes).min()))
    combined = np.zeros(len(classes), dtype=np.int64)
    probe = np.zeros(len(classes), dtype=np.int64)
    baseline = np.zeros(len(classes), dtype=np.int64)
    fold_C: list[float] = []
    fold_weights: list[float] = []
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(vectors, classes):
        combo = choose_combination(vectors[train], classes[train], zero_shot[train], Cs=Cs, weights=weights,
                                   folds=folds, seed=seed)
        with threadpool_limits(FIT_THREADS):
            coef, intercept = logit_matrix(fit_probe(vectors[train], classes[train], combo.C), n_classes)
            probe_logits = vectors[test] @ coef.T + intercept
            if combo.probe_C != combo.C:
                p_coef, p_intercept = logit_matrix(fit_probe(vectors[train], classes[train], combo.probe_C),
                                                   n_classes)
                probe_logits_alone = vectors[test] @ p_coef.T + p_intercept
            else:
                probe_logits_alone = probe_logits
        w = combo.weight
        combined[test] = ((1.0 - w) * zero_shot[test] + w * probe_logits).argmax(axis=1)
        probe[test] = probe_logits_alone.argmax(axis=1)
        baseline[test] = np.bincount(classes[train], minlength=n_classes).argmax()
        fold_C.append(combo.C)
        fold_weights.append(w)
    return NestedCombination(combined=combined, probe=probe, baseline=baseline, fold_C=fold_C,
                             fold_weights=fold_weights, folds=k)


def _balanced_log_loss(classes: np.ndarray, logits: np.ndarray) -> float:
    """Mean over classes of the mean ``-log p(true class)`` of the softmax of ``logits``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    true = -log_p[np.arange(len(classes)), classes]
    return float(np.mean([true[classes == c].mean() for c in np.unique(classes)]))


# -- levels of a numeric column ------------------------------------------------------------------
def parse_numbers(values: Sequence[str]) -> np.ndarray | None:
    """The values as finite floats, or None when one of them is not a number."""
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        try:
            out[i] = float(value)
        except ValueError:
            return None
        if not math.isfinite(out[i]):
            return None
    return out


def quantile_edges(numbers: np.ndarray, levels: int) -> list[float]:
    """Edges that cut ``numbers`` into ``levels`` groups of about equal size (fewer where many values
    are equal: ISO 100 is a third of a collection)."""
    qs = np.quantile(numbers, np.linspace(0, 1, levels + 1)[1:-1])
    return [float(e) for e in np.unique(qs) if e > numbers.min()]


def level_names(edges: Sequence[float]) -> list[str]:
    """Names of the levels the edges make: low/high, low/mid/high, else the ranges (``<100``,
    ``100-400``, ``>=400``)."""
    n = len(edges) + 1
    if n in LEVEL_NAMES:
        return list(LEVEL_NAMES[n])
    shown = [f"{e:g}" for e in edges]
    return [f"<{shown[0]}"] + [f"{a}-{b}" for a, b in zip(shown, shown[1:])] + [f">={shown[-1]}"]


def describe_levels(column: str, edges: Sequence[float], names: Sequence[str]) -> str:
    """``exif_iso: low < 800 <= high`` (a level holds values from its left edge, up to its right one)."""
    parts = [names[0]]
    for edge, name in zip(edges, names[1:]):
        parts.append(f"< {edge:g} <= {name}")
    return f"{column}: " + " ".join(parts)


def cut(numbers: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Level index of each number: how many edges are at or below it."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), numbers, side="right")


# -- learning from a table ------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingData:
    """What a table teaches: the vectors of the photos it names, their classes, and what was left out."""

    vectors: np.ndarray  # (rows, dim) float64 unit vectors
    classes: np.ndarray  # (rows,) class index into class_names
    class_names: list[str]
    file_ids: np.ndarray
    counts: dict[str, int]
    levels: str | None
    left_out: dict[str, int]
    rows_unmatched: int
    rows_without_value: int
    notes: list[str]


def training_data(index: "Index", table: str | os.PathLike[str], key: str, target: str, *,
                  bins: Sequence[float] | None = None, levels: int | None = None, rare: str = "error",
                  min_rows: int = FOLDS) -> TrainingData:
    """The photos ``table`` names (by ``key``) with their ``target`` values as classes (see
    :func:`learn_from_table` for levels and rare classes); errors name the table, column and fix."""
    from clipdex.export import KeyMatcher, describe_columns, read_table

    if rare not in RARE_CHOICES:
        raise ValueError(f"rare must be one of {', '.join(RARE_CHOICES)}, not {rare!r}")
    if min_rows < 2:
        raise ValueError("min_rows must be at least 2")
    where = str(table)
    header, rows = read_table(table, key)
    if target not in header:
        raise TableError(where, f"has no column {target!r}",
                         f"Columns: {describe_columns(header)}. Name the column to learn with --target.")
    found = index.searchable()
    matcher = KeyMatcher(found.paths)
    row_of = {p: i for i, p in enumerate(found.paths)}
    picked: dict[int, str] = {}
    unmatched = without_value = repeated = 0
    for row in rows:
        path = matcher.match(row.get(key) or "")
        if path is None:
            unmatched += 1
            continue
        value = " ".join((row.get(target) or "").split())
        if not value:
            without_value += 1
        elif row_of[path] in picked:
            repeated += 1
        else:
            picked[row_of[path]] = value
    if not picked:
        raise TableError(where, f"no row with a {target!r} value names a photo of index {index.path}",
                         f"Check that --key {key} names the photos (file stem, name or path) and that "
                         f"{target!r} has values.")
    positions = np.fromiter(picked.keys(), dtype=np.int64, count=len(picked))
    values = list(picked.values())
    notes = []
    if repeated:
        notes.append(f"{repeated} rows name a photo an earlier row named: the first row's value was used")
    level_text = None
    numbers = parse_numbers(values)
    if (bins is not None or levels is not None) and numbers is None:
        bad = next(v for v in values if parse_numbers([v]) is None)
        raise TableError(where, f"column {target!r} is not numeric (it holds {bad!r})",
                         "--bins and --levels cut numbers into levels; learn this column without them.")
    if numbers is not None and (bins is not None or levels is not None or len(set(numbers)) > MAX_LEVELS):
        edges = sorted({float(b) for b in bins}) if bins is not None else \
            quantile_edges(numbers, levels or DEFAULT_LEVELS)
        if not edges:
            value, n = Counter(numbers.tolist()).most_common(1)[0]
            raise TableError(where, f"column {target!r} cannot be cut into quantile levels: {n} of its "
                             f"{len(numbers)} values are {value:g}",
                             "Give the edges yourself with --bins (e.g. --bins 400,800), or choose another column.")
        names = level_names(edges)
        values = [names[i] for i in cut(numbers, edges)]
        how = f"--bins {','.join(f'{e:g}' for e in edges)}" if bins is not None else \
            f"automatic quantile levels (--levels {levels or DEFAULT_LEVELS}); --bins EDGES chooses edges"
        level_text = f"{describe_levels(target, edges, names)} ({how})"
    values = _canonical(values)
    _check_label_names(values, where, target)
    positions, values = _one_per_content(positions, values, found.hashes, notes)
    if not values:
        raise TableError(where, f"every photo the table names with a {target!r} value has copies with other values",
                         "Give identical photos one value (their vectors are the same).")
    counts = Counter(values)
    left_out: dict[str, int] = {}
    small = {v: n for v, n in counts.items() if n < min_rows}
    if small and rare == "error":
        ranked = sorted(small.items(), key=lambda item: (-item[1], item[0]))
        shown = ", ".join(f"{v!r} ({n})" for v, n in ranked[:MAX_NAMED]) + \
            (f" and {len(ranked) - MAX_NAMED} more" if len(ranked) > MAX_NAMED else "")
        raise TableError(where, f"column {target!r}: too few photos to learn and cross-validate these classes "
                         f"(at least {min_rows} each): {shown}",
                         "Leave them out with --rare drop, merge them into one class 'other' with --rare other, "
                         "or lower --min-rows (2 at least).")
    if small and rare == "other":
        merged = len(small)
        values = [OTHER if v in small else v for v in values]
        counts = Counter(values)
        small = {v: n for v, n in counts.items() if n < min_rows}
        notes.append(f"{merged} values with fewer than {min_rows} photos merged into '{OTHER}'"
                     + (" (still too few: left out)" if OTHER in small else ""))
    if small:  # rare="drop", or "other" still too small
        left_out = dict(sorted(small.items(), key=lambda item: (-item[1], item[0])))
        keep = [i for i, v in enumerate(values) if v not in small]
        positions, values = positions[keep], [values[i] for i in keep]
        counts = Counter(values)
    if len(counts) < 2:
        raise TableError(where, f"column {target!r} has only one class to learn "
                         f"({', '.join(f'{v!r} ({n})' for v, n in counts.items()) or 'none left'})",
                         "A classifier needs two classes at least: choose another column or other --bins.")
    classes = sorted(counts, key=lambda c: (-counts[c], c)) if level_text is None else \
        [n for n in level_names_in(values)]
    class_of = {c: i for i, c in enumerate(classes)}
    y = np.array([class_of[v] for v in values], dtype=np.int64)
    x = np.asarray(found.vectors[positions], dtype=np.float64)
    return TrainingData(vectors=x, classes=y, class_names=classes, file_ids=found.ids[positions],
                        counts={c: counts[c] for c in classes}, levels=level_text, left_out=left_out,
                        rows_unmatched=unmatched, rows_without_value=without_value, notes=notes)


def learn_from_table(index: "Index", name: str, table: str | os.PathLike[str], key: str, target: str, *,
                     bins: Sequence[float] | None = None, levels: int | None = None, rare: str = "error",
                     min_rows: int = FOLDS, folds: int = FOLDS, min_prob: float | None = None,
                     save_as: str | None = None, save: bool = True, seed: int = 0,
                     Cs: Sequence[float] = C_GRID) -> Learned:
    """Train a probe on the stored vectors of the photos ``table`` names (by ``key``) to predict its
    column ``target``, cross-validate it, then label every photo and store the result as label set
    ``save_as`` (default ``name``; ``name-learned`` where ``name`` is a zero-shot set, which stays).

    A numeric ``target`` is cut into levels: at ``bins`` (edges), else into ``levels`` quantile groups
    (default :data:`DEFAULT_LEVELS` when the column has more than :data:`MAX_LEVELS` distinct values).
    Classes with fewer than ``min_rows`` photos: ``rare`` says what happens ("error", "drop" them, or
    merge them into one class "other").
    """
    started = time.monotonic()
    min_prob = check_min_prob(min_prob)
    if folds < 2:
        raise ValueError("folds must be at least 2")
    stored_name = save_as or (name + LEARNED_SUFFIX if _is_zero_shot_set(index, name) else name)
    _check_set_name(stored_name)
    if save_as and _is_zero_shot_set(index, save_as):
        raise LabelSetError(f"label set {save_as!r}", "is a zero-shot set: a learned set never replaces one",
                            f"Choose another --save-as (e.g. {learned_name(save_as)}).")
    data = training_data(index, table, key, target, bins=bins, levels=levels, rare=rare, min_rows=min_rows)
    _check_replaceable(index, stored_name, table, target, explicit=save_as is not None)
    x, y, classes = data.vectors, data.classes, data.class_names
    cv = cross_validate_probe(x, y, Cs=Cs, folds=folds, seed=seed)
    notes = list(data.notes)
    if cv.fixed_folds:
        notes.append(f"{cv.fixed_folds} of the {cv.folds} folds kept a single photo of a class for training: "
                     f"their C was fixed at {FALLBACK_C:g} (no inner CV possible); --min-rows 3 or more avoids it")
    scores = {"probe": scores_of(y, cv.probe), "baseline": scores_of(y, cv.baseline)}
    zero_shot = _zero_shot_scores(index, name, data.file_ids, classes, y)
    if zero_shot is not None:
        scores["zero_shot"] = zero_shot
    C, model = choose_C(x, y, Cs, folds, seed=seed)
    coef, intercept = logit_matrix(model, len(classes))
    origin = {"kind": KIND, "source": FROM_TABLE, "scoring": SOFTMAX, "target": target,
              "table": os.path.abspath(table), "key": key,
              "levels": data.levels, "C": C, "classes": classes, "counts": data.counts,
              "metrics": {k: v.to_dict() for k, v in scores.items()}, "folds": cv.folds, "nested": cv.nested,
              "fold_C": cv.fold_C, "model": index.model_record().key, "learned_at": time.time(),
              "coef": _rounded(coef), "intercept": _rounded(intercept)}
    result = _predict(index.searchable(), LabelSet(name=stored_name, labels=tuple(Label(c, ()) for c in classes),
                                      templates=(), min_prob=min_prob, origin=origin), coef, intercept)
    if save:
        index.save_classification(result)
    return Learned(set_name=stored_name, source=FROM_TABLE, target=target, classes=classes, counts=data.counts,
                   folds=cv.folds, nested=cv.nested, C=C, scores=scores, photos=len(result.file_ids),
                   predicted=result.counts(), saved=save, seconds=time.monotonic() - started, fold_C=cv.fold_C,
                   levels=data.levels, table=str(table), left_out=data.left_out,
                   rows_unmatched=data.rows_unmatched, rows_without_value=data.rows_without_value,
                   notes=notes, result=result)


def level_names_in(values: Sequence[str]) -> list[str]:
    """The level names present in ``values``, in their order from low to high."""
    present = set(values)
    for names in sorted(LEVEL_NAMES.values(), key=len):  # the fewest levels that name them all, in order
        if present <= set(names):
            return [n for n in names if n in present]
    return sorted(present, key=_range_start)


def _range_start(name: str) -> float:
    """Where a range name (``<100``, ``100-400``, ``>=400``) starts, for ordering levels."""
    if name.startswith("<"):
        return -math.inf
    return float(name.removeprefix(">=").split("-")[0])


def _one_per_content(positions: np.ndarray, values: list[str], hashes: Sequence[str],
                     notes: list[str]) -> tuple[np.ndarray, list[str]]:
    """One row per content hash: identical files have identical vectors, and one of them in a training
    fold and another in the test fold would flatter the cross-validation. Copies that disagree keep
    their majority value; a tie leaves the content out (both said in ``notes``)."""
    groups: dict[str, list[int]] = {}
    for i, pos in enumerate(positions.tolist()):
        groups.setdefault(hashes[pos], []).append(i)
    if len(groups) == len(values):
        return positions, values
    keep: list[int] = []
    kept_values: list[str] = []
    majority = tie = 0
    for rows in groups.values():
        ranked = Counter(values[i] for i in rows).most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            tie += 1
            continue
        majority += len(ranked) > 1
        keep.append(next(i for i in rows if values[i] == ranked[0][0]))
        kept_values.append(ranked[0][0])
    copies = len(values) - len(groups)
    notes.append(f"{copies} photos are copies of another the table names (same content, same vector): one row "
                 "per content, so no copy is in a training fold while another is tested"
                 + (f"; {majority} with differing values kept their majority value" if majority else "")
                 + (f"; {tie} with a tie of values left out" if tie else ""))
    return positions[np.array(keep, dtype=np.int64)], kept_values


def _canonical(values: list[str]) -> list[str]:
    """Values that differ only in case or spacing are one class, spelled as first seen."""
    first: dict[str, str] = {}
    return [first.setdefault(v.casefold(), v) for v in values]


def _check_label_names(values: Sequence[str], where: str, target: str) -> None:
    for value in set(values):
        if value.casefold() == UNCERTAIN or MULTI_SEPARATOR in value:
            raise TableError(where, f"column {target!r} holds {value!r}, which cannot be a label "
                             f"({UNCERTAIN!r} is what a set says below its min_prob; {MULTI_SEPARATOR!r} joins "
                             "labels)", "Rename that value in the table.")


def _check_replaceable(index: "Index", name: str, table: str | os.PathLike[str], target: str, *,
                       explicit: bool) -> None:
    """Refuse to store a set learned from a table over stored set ``name`` unless that is a learned set
    too, and either learned from the same column of the same table (learning it again) or named on
    purpose (``explicit``: --save-as). Zero-shot and topics sets are never replaced."""
    if name not in _stored_sets(index):
        return
    stored = index.classification(name).label_set
    origin = stored.origin or {}
    if stored.kind not in REPLACEABLE_KINDS:
        raise LabelSetError(f"label set {name!r}", f"is a {stored.kind} set: a set learned from a table never "
                            "replaces one", "Store it under another name with --save-as NAME.")
    same = origin.get("source") == FROM_TABLE and origin.get("target") == target and \
        origin.get("table") == os.path.abspath(table)
    if not same and not explicit:
        was = (f"column {origin.get('target')!r} of {origin.get('table')}" if origin.get("source") == FROM_TABLE
               else f"the corrections of {origin.get('zero_shot_set')!r}")
        raise LabelSetError(f"label set {name!r}", f"was learned from {was}, not column {target!r} of "
                            f"{os.path.abspath(table)}", f"Replace it on purpose with --save-as {name}, or "
                            "choose another --save-as NAME.")


def _check_set_name(name: str) -> None:
    if not NAME.match(name) or name in RESERVED_SET_NAMES:
        raise LabelSetError(f"label set {name!r}", "is not usable as a label set name (letters, digits, '_' and "
                            f"'-', starting with a letter; not {' or '.join(RESERVED_SET_NAMES)})",
                            "Choose another NAME (or --save-as NAME).")


def _rounded(array: np.ndarray) -> list[Any]:
    return np.round(np.asarray(array, dtype=np.float64), COEF_DECIMALS).tolist()  # type: ignore[no-any-return]


def _stored_sets(index: "Index") -> list[str]:
    return index.label_sets()


def _is_zero_shot_set(index: "Index", name: str) -> bool:
    return name in _stored_sets(index) and index.classification(name).label_set.kind == "zero-shot"


def _zero_shot_scores(index: "Index", name: str, file_ids: np.ndarray, classes: list[str],
                      truth: np.ndarray) -> Scores | None:
    """Scores of stored zero-shot set ``name`` on the same photos, where its labels are the classes
    (ignoring case); None where there is no such set. A photo it calls ``uncertain`` counts as wrong."""
    if not _is_zero_shot_set(index, name):
        return None
    result = index.classification(name)
    label_of = {label.casefold(): i for i, label in enumerate(classes)}
    if {label.casefold() for label in result.labels} != set(label_of):
        return None
    row = {fid: i for i, fid in enumerate(result.file_ids)}
    keep = [j for j, fid in enumerate(file_ids.tolist()) if fid in row]
    if not keep:
        return None
    predicted = np.array([label_of.get(result.predicted[row[int(file_ids[j])]].casefold(), -1) for j in keep])
    return scores_of(truth[keep], predicted)


# -- learning from corrections --------------------------------------------------------------------
def learned_name(name: str) -> str:
    """Where what is learned from the corrections of zero-shot set ``name`` is stored."""
    return name + LEARNED_SUFFIX


def source_of(index: "Index", name: str) -> str:
    """The zero-shot set whose corrections a set learns from: ``name`` itself, or the set a
    corrections-learned ``name`` came from."""
    label_set = index.classification(name).label_set
    origin = label_set.origin or {}
    if label_set.kind == KIND and origin.get("source") == FROM_CORRECTIONS:
        return str(origin["zero_shot_set"])
    if label_set.kind != "zero-shot":
        raise LabelSetError(f"label set {name!r}", f"is a {label_set.kind} set, not a zero-shot one: it has no "
                            "prompts to combine corrections with",
                            "Learn from the corrections of a set made by `clipdex classify`, or learn this one "
                            "from a table (clipdex learn NAME --metadata TABLE --key COLUMN --target COLUMN).")
    return name


def corrections_of(index: "Index", name: str) -> dict[int, str]:
    """file id -> label, the corrections of zero-shot set ``name`` and of its learned set (the zero-shot
    set's own correction wins where both have one: it is what `clipdex evaluate NAME` scores against)."""
    out: dict[int, str] = {}
    names = [learned_name(name), name] if learned_name(name) in _stored_sets(index) else [name]
    for set_name in names:
        result = index.classification(set_name)
        for fid, truth in zip(result.file_ids, result.truth or []):
            if truth:
                out[fid] = truth
    return out


def _one_row_per_content(found: Any, corrected: dict[int, str]) -> dict[int, str]:
    """Row of ``found`` -> label, one row per content hash. A correction is stored by content, so every
    file with that content carries it: identical vectors that would land in a training fold and in the
    test fold at once, flattering the cross-validation. (One content cannot hold two truths: the zero-shot
    set's correction covers all its files, see :func:`corrections_of`.)"""
    row_of = {int(fid): i for i, fid in enumerate(found.ids.tolist())}
    seen: set[str] = set()
    out: dict[int, str] = {}
    for fid, label in corrected.items():
        row = row_of.get(fid)
        if row is None or found.hashes[row] in seen:
            continue
        seen.add(found.hashes[row])
        out[row] = label
    return out


def correction_counts(index: "Index", name: str) -> dict[str, int]:
    """Corrected photos per label of zero-shot set ``name`` (every label, 0 included), identical copies
    counted once (they teach nothing more)."""
    labels = index.classification(name).labels
    counts = Counter(_one_row_per_content(index.searchable(), corrections_of(index, name)).values())
    return {label: counts.get(label, 0) for label in labels}


@dataclass(frozen=True)
class CorrectionsInput:
    """What learning from corrections reads from the index (the web app reads it under the index's
    lock); :func:`learn_corrections` then works on it alone, the lock free, and stores nothing."""

    source: str
    label_set: LabelSet
    zero: Classification
    labels: list[str]
    counts: dict[str, int]  # corrected contents per label
    rows: np.ndarray  # rows of ``found``, one per corrected content
    classes: np.ndarray  # their corrected label (index into ``labels``)
    found: Any  # the index's Searchable photos
    min_prob: float | None
    encode_texts: TextEncoder | None  # None: the weights are not at hand
    encoder_error: str | None
    logit_scale: float
    logit_bias: float | None
    model_key: str


def read_corrections(index: "Index", name: str, *, min_prob: float | None = None) -> CorrectionsInput:
    """What :func:`learn_corrections` needs of zero-shot set ``name`` (or of the set its learned
    ``name`` came from); refuses a multi-label set and too few corrections (naming what to do)."""
    source = source_of(index, name)
    zero = index.classification(source)
    label_set = zero.label_set
    if label_set.multi_label:
        raise LabelSetError(f"label set {source!r}", "is multi-label; learning from corrections handles "
                            "single-label sets (one label per photo)", "Use a single-label set.")
    min_prob = check_min_prob(min_prob) if min_prob is not None else label_set.min_prob
    labels = zero.labels
    found = index.searchable()
    per_row = {r: label for r, label in _one_row_per_content(found, corrections_of(index, source)).items()
               if label in labels}
    counts = Counter(per_row.values())
    short = {label: counts.get(label, 0) for label in labels if counts.get(label, 0) < MIN_CORRECTIONS_PER_LABEL}
    if short:
        shown = ", ".join(f"{label} ({n})" for label, n in short.items())
        raise LabelSetError(f"label set {source!r}", f"has too few corrections to learn from: every label needs "
                            f"{MIN_CORRECTIONS_PER_LABEL} at least, and these have fewer: {shown} "
                            f"({len(per_row)} corrected photos in all, identical copies counted once)",
                            f"Correct more photos in `clipdex serve` (/labels/{source} lists the photos it is least "
                            f"sure of), or `clipdex learn {source} --next 20` lists them here.")
    record = index.model_record()
    encode: TextEncoder | None = None
    error = None
    try:
        encode = index.encoder.encode_texts
    except ModelError as e:
        error = str(e)
    return CorrectionsInput(source=source, label_set=label_set, zero=zero, labels=labels,
                            counts={label: counts.get(label, 0) for label in labels},
                            rows=np.fromiter(per_row.keys(), dtype=np.int64, count=len(per_row)),
                            classes=np.array([labels.index(v) for v in per_row.values()], dtype=np.int64),
                            found=found, min_prob=min_prob, encode_texts=encode, encoder_error=error,
                            logit_scale=record.logit_scale, logit_bias=record.logit_bias, model_key=record.key)


def learn_from_corrections(index: "Index", name: str, *, min_prob: float | None = None, folds: int = FOLDS,
                           save: bool = True, seed: int = 0, Cs: Sequence[float] = C_GRID,
                           weights: Sequence[float] = WEIGHT_GRID) -> Learned:
    """Combine zero-shot set ``name`` with a probe taught by its corrections (see the module docstring),
    cross-validated on the corrected photos, and store it as ``name-learned`` (``name`` stays zero-shot):
    :func:`read_corrections`, :func:`learn_corrections`, then the index stores :attr:`Learned.result`."""
    learned = learn_corrections(read_corrections(index, name, min_prob=min_prob), folds=folds, seed=seed,
                                Cs=Cs, weights=weights)
    if save:
        assert learned.result is not None
        index.save_classification(learned.result)
    return dataclasses.replace(learned, saved=save)


def learn_corrections(data: CorrectionsInput, *, folds: int = FOLDS, seed: int = 0, Cs: Sequence[float] = C_GRID,
                      weights: Sequence[float] = WEIGHT_GRID) -> Learned:
    """Learn from what :func:`read_corrections` read (no index, nothing stored: the labels of every
    photo are in :attr:`Learned.result`).

    Every label needs :data:`MIN_CORRECTIONS_PER_LABEL` corrected photos (one per content). The zero-shot
    logits come from the set's prompts, re-encoded; where the model's weights are not at hand, from the
    stored zero-shot probabilities (said in :attr:`Learned.prior` and the notes). Scores: ``combined`` and
    ``probe`` are nested (C and the weight chosen inside each outer fold: an honest estimate, which can be
    below zero-shot's); ``selection`` is the stored choice's score on the folds it was chosen on (never
    below zero-shot's there, as weight 0 is a choice; optimistic). With fewer than 3 corrected photos of a
    label there is no nested estimate: ``selection`` alone, said in the notes.
    """
    from threadpoolctl import threadpool_limits

    started = time.monotonic()
    found, labels, source = data.found, data.labels, data.source
    notes: list[str] = []
    zs_logits, prior, class_vectors = _zero_shot_logits(data, notes)
    have = np.flatnonzero(~np.isnan(zs_logits[:, 0]))
    rows, y = data.rows, data.classes
    if np.isnan(zs_logits[rows, 0]).any():
        keep = ~np.isnan(zs_logits[rows, 0])
        notes.append(f"{int((~keep).sum())} corrected photos have no stored zero-shot scores: left out")
        rows, y = rows[keep], y[keep]
    x = np.asarray(found.vectors[rows], dtype=np.float64)  # the corrected photos only
    combo = choose_combination(x, y, zs_logits[rows], Cs=Cs, weights=weights, folds=folds, seed=seed)
    scores = {"zero_shot": scores_of(y, combo.zero_shot), "selection": scores_of(y, combo.combined)}
    nested = can_nest(y, len(labels), folds)
    fold_C: list[float] = []
    fold_weights: list[float] = []
    if nested:
        honest = nested_combination(x, y, zs_logits[rows], Cs=Cs, weights=weights, folds=folds, seed=seed)
        scores.update(combined=scores_of(y, honest.combined), probe=scores_of(y, honest.probe),
                      baseline=scores_of(y, honest.baseline))
        fold_C, fold_weights = honest.fold_C, honest.fold_weights
    else:
        notes.append("a label has fewer than 3 corrected photos: no nested estimate (each outer fold's choice "
                     "needs 2 of every label to cross-validate on); the 'selection' row is the chosen weight's "
                     "score on the folds it was chosen on, not an estimate of new photos; correct more photos")
    with threadpool_limits(FIT_THREADS):
        coef, intercept = logit_matrix(fit_probe(x, y, combo.C), len(labels))
    w = combo.weight
    counts = data.counts
    origin: dict[str, Any] = {
        "kind": KIND, "source": FROM_CORRECTIONS, "scoring": SOFTMAX, "zero_shot_set": source, "target": source,
        "prior": prior, "weight": w, "C": combo.C, "classes": labels, "counts": counts,
        "metrics": {k: v.to_dict() for k, v in scores.items()}, "folds": combo.folds, "nested": nested,
        "fold_C": fold_C, "fold_weights": fold_weights, "model": data.model_key, "learned_at": time.time()}
    if class_vectors is not None:  # one linear model: the interpolation folded into the weights
        scale, bias = class_vectors[1], class_vectors[2]
        coef = (1.0 - w) * scale * class_vectors[0] + w * coef
        intercept = (1.0 - w) * (bias or 0.0) + w * intercept
    origin.update(coef=_rounded(coef), intercept=_rounded(intercept))
    label_set = data.label_set
    stored = LabelSet(name=learned_name(source), labels=label_set.labels, templates=label_set.templates,
                      min_prob=data.min_prob, origin=origin)
    if class_vectors is not None:
        result = _predict(found, stored, coef, intercept)
    else:
        logits = (1.0 - w) * zs_logits[have] + w * _logits(found.vectors, coef, intercept, have)
        result = _classification(stored, found, have, logits)
        if len(have) < len(found.ids):
            notes.append(f"{len(found.ids) - len(have)} photos indexed since `clipdex classify {source}` have no "
                         f"zero-shot scores and are not labelled: run it again, then `clipdex learn {source} "
                         "--predict`")
    if w == 0.0:
        notes.append("the corrections did not beat zero-shot on cross-validation: the learned set is zero-shot's "
                     "(weight 0); correct more photos, the least sure first")
    return Learned(set_name=stored.name, source=FROM_CORRECTIONS, target=source, classes=labels,
                   counts=counts, folds=combo.folds, nested=nested, C=combo.C, scores=scores,
                   photos=len(result.file_ids), predicted=result.counts(), saved=False,
                   seconds=time.monotonic() - started, fold_C=fold_C, fold_weights=fold_weights, weight=w,
                   prior=prior, notes=notes, result=result)


def _zero_shot_logits(data: CorrectionsInput, notes: list[str]
                      ) -> tuple[np.ndarray, str, tuple[np.ndarray, float, float | None] | None]:
    """Zero-shot logits of every searchable photo (rows of ``data.found``), where they came from, and
    (class vectors, logit_scale, logit_bias) when the prompts could be encoded. Rows without a stored
    zero-shot score (prior from stored probabilities only) are NaN."""
    from clipdex.classify import build_classifier

    error = data.encoder_error
    if data.encode_texts is not None:
        try:
            classifier = build_classifier(data.label_set, data.encode_texts, data.logit_scale, data.logit_bias)
        except ModelError as e:
            error = str(e)
    if error is not None or data.encode_texts is None:
        notes.append(f"the model's weights are not at hand ({str(error).split('. ')[0]}): the zero-shot side is "
                     "the stored zero-shot probabilities (log p), which give a softmax model's choice exactly; "
                     "photos indexed since that classify run cannot be labelled until it is run again")
        return _stored_logits(data.zero, data.found.ids)
    scale = float(classifier.logit_scale)
    bias = classifier.logit_bias
    class_vectors = classifier.class_vectors.astype(np.float64)
    logits = _logits(data.found.vectors, scale * class_vectors, np.full(len(class_vectors), bias or 0.0))
    return logits, "text-encoder", (class_vectors, scale, bias)


# -- predicting -----------------------------------------------------------------------------------
def _logits(vectors: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
            rows: np.ndarray | None = None) -> np.ndarray:
    """``vectors[rows] @ coef.T + intercept`` (all rows by default), :data:`LOGIT_CHUNK` rows at a time
    in float32: a million stored vectors are never copied whole (a float64 copy is 4 GB at 1M x 512)."""
    coef32 = np.asarray(coef, dtype=np.float32)
    n = len(vectors) if rows is None else len(rows)
    out = np.empty((n, coef32.shape[0]), dtype=np.float64)
    for start in range(0, n, LOGIT_CHUNK):
        part = vectors[start:start + LOGIT_CHUNK] if rows is None else vectors[rows[start:start + LOGIT_CHUNK]]
        out[start:start + LOGIT_CHUNK] = np.asarray(part, dtype=np.float32) @ coef32.T
    return out + np.asarray(intercept, dtype=np.float64)


def _predict(found: Any, label_set: LabelSet, coef: np.ndarray, intercept: np.ndarray) -> Classification:
    """Every searchable photo of ``found`` labelled by the linear model (softmax of ``x @ coef.T + intercept``)."""
    rows = np.arange(len(found.ids))
    return _classification(label_set, found, rows, _logits(found.vectors, coef, intercept))


def _classification(label_set: LabelSet, found: Any, rows: np.ndarray, logits: np.ndarray) -> Classification:
    probs = softmax(logits) if len(logits) else np.zeros((0, len(label_set.labels)))
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    confidence = probs[np.arange(len(probs)), best] if len(probs) else np.zeros(0)
    names = label_set.label_names
    predicted = [names[b] if label_set.min_prob is None or c >= label_set.min_prob else UNCERTAIN
                 for b, c in zip(best.tolist(), confidence.tolist())]
    paths = [found.paths[i] for i in rows.tolist()]
    fs_paths = [found.fs_path(i) for i in rows.tolist()] if found.fs_paths is not None else None
    return Classification(label_set=label_set, file_ids=[int(found.ids[i]) for i in rows.tolist()], paths=paths,
                          probs=probs.astype(np.float32), predicted=predicted,
                          confidence=confidence.astype(np.float32), fs_paths=fs_paths, scoring=SOFTMAX)


def predict_learned(index: "Index", name: str, *, min_prob: float | None = None) -> Classification:
    """Label every photo (those indexed since it learned too) with learned set ``name``'s stored model,
    without retraining, and store the result again; ``min_prob`` replaces the set's own when given."""
    label_set = index.classification(name).label_set
    origin = label_set.origin or {}
    if label_set.kind != KIND or "coef" not in origin:
        raise LabelSetError(f"label set {name!r}", f"is a {label_set.kind} set, not one `clipdex learn` made",
                            "Learn it first (clipdex learn NAME --metadata … or --from-corrections); zero-shot "
                            "sets are labelled again by `clipdex classify`.")
    if min_prob is not None:
        label_set = LabelSet(name=label_set.name, labels=label_set.labels, templates=label_set.templates,
                             min_prob=check_min_prob(min_prob), origin=origin)
    coef = np.asarray(origin["coef"], dtype=np.float64)
    intercept = np.asarray(origin["intercept"], dtype=np.float64)
    found = index.searchable()
    if origin.get("prior") == "stored-probabilities":
        zero = index.classification(str(origin["zero_shot_set"]))
        zs, _, _ = _stored_logits(zero, found.ids)
        have = np.flatnonzero(~np.isnan(zs[:, 0]))
        w = float(origin["weight"])
        logits = (1.0 - w) * zs[have] + w * _logits(found.vectors, coef, intercept, have)
        result = _classification(label_set, found, have, logits)
    else:
        result = _predict(found, label_set, coef, intercept)
    index.save_classification(result)
    return result


def _stored_logits(zero: Classification, ids: np.ndarray) -> tuple[np.ndarray, str, None]:
    """Zero-shot logits from a set's stored probabilities, by row of ``ids`` (NaN where it has none):
    ``log p`` of a softmax model (its logits up to a per-photo constant, which a softmax ignores),
    ``log(p / (1 - p))`` of a sigmoid model (its logits exactly)."""
    logits = np.full((len(ids), len(zero.labels)), np.nan)
    row = {int(fid): i for i, fid in enumerate(ids.tolist())}
    probs = np.clip(np.asarray(zero.probs, dtype=np.float64), PROB_FLOOR, 1.0)
    stored = np.log(probs) if zero.scoring != SIGMOID else np.log(probs) - np.log1p(-np.minimum(probs, 1 - 1e-7))
    for i, fid in enumerate(zero.file_ids):
        if fid in row:
            logits[row[fid]] = stored[i]
    return logits, "stored-probabilities", None


# -- active learning ------------------------------------------------------------------------------
def least_sure(index: "Index", name: str, n: int) -> list[Unsure]:
    """The ``n`` photos set ``name`` is least sure of, corrected ones left out, least sure first.

    For a zero-shot set that has a learned set (``name-learned``), the learned set's probabilities are
    used: what it would still get wrong is what is worth correcting. Single-label: the margin between the
    two most probable labels; multi-label: how near a label's probability is to the threshold.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    result = index.classification(name)
    try:
        source = source_of(index, name)
    except LabelSetError:
        source = None
    if source is not None and learned_name(source) in _stored_sets(index):
        result = index.classification(learned_name(source))
    done = set(corrections_of(index, source)) if source is not None else \
        {fid for fid, t in zip(result.file_ids, result.truth or []) if t}
    done |= _table_truth_ids(index, result.label_set.origin or {})
    probs = np.asarray(result.probs, dtype=np.float64)
    if not len(probs):
        return []
    if result.label_set.multi_label:
        margin = np.abs(probs - result.label_set.threshold).min(axis=1)
    elif probs.shape[1] == 1:
        margin = np.abs(probs[:, 0] - 0.5)
    else:
        top2 = -np.partition(-probs, 1, axis=1)[:, :2]
        margin = top2[:, 0] - top2[:, 1]
    order = np.argsort(margin, kind="stable")
    top = min(3, probs.shape[1])
    out = []
    for i in order.tolist():
        if result.file_ids[i] in done:
            continue
        ranked = np.argsort(-probs[i], kind="stable")[:top]
        out.append(Unsure(file_id=int(result.file_ids[i]), path=result.paths[i], label=result.predicted[i],
                          prob=float(result.confidence[i]), margin=float(margin[i]),
                          top=[(result.labels[j], float(probs[i, j])) for j in ranked]))
        if len(out) == n:
            break
    return out


def _table_truth_ids(index: "Index", origin: dict[str, Any]) -> set[int]:
    """Ids of the photos whose truth the table a set was learned from gives (their label is known:
    nothing to ask a person); empty for other sets, or when that table cannot be read any more."""
    from clipdex.export import KeyMatcher, read_table

    if origin.get("kind") != KIND or origin.get("source") != FROM_TABLE:
        return set()
    table, key, target = origin.get("table"), origin.get("key"), origin.get("target")
    if not (isinstance(table, str) and isinstance(key, str) and isinstance(target, str)):
        return set()
    try:
        header, rows = read_table(table, key)
    except (ClipdexError, OSError) as e:
        log.info("%s cannot be read (%s): photos it gives a value are not left out of the least sure", table, e)
        return set()
    if target not in header:
        return set()
    found = index.searchable()
    id_of = dict(zip(found.paths, found.ids.tolist()))
    return {int(id_of[path]) for path, _ in KeyMatcher(found.paths).values(rows, key, target)}


def learning_state(index: "Index", name: str, n_next: int = 12) -> dict[str, Any]:
    """What a label page shows about learning for set ``name``: where it came from, the corrections per
    label, whether it can learn from them (and what is missing), the last learned scores, and the photos
    it is least sure of."""
    label_set = index.classification(name).label_set
    origin = label_set.origin or {}
    state: dict[str, Any] = {"set": name, "kind": label_set.kind, "source": None, "learned_set": None,
                             "can_learn": False, "needs": None, "corrections": {}, "learned": None}
    try:
        source = source_of(index, name)
    except LabelSetError as e:
        source = None
        state["needs"] = str(e)
        if label_set.kind == KIND and origin.get("source") == FROM_TABLE:
            state["needs"] = (f"Corrections made here are ground truth for `clipdex evaluate {name}`, not learned "
                              f"from; to learn again from the table, run "
                              f"`clipdex learn {name} --metadata TABLE --key {origin.get('key')} --target "
                              f"{origin.get('target')} --save-as {name}`.")
    if source is not None and not index.classification(source).label_set.multi_label:
        counts = correction_counts(index, source)
        short = [f"{label} ({n})" for label, n in counts.items() if n < MIN_CORRECTIONS_PER_LABEL]
        state.update(source=source, corrections=counts, can_learn=not short,
                     needs=None if not short else f"every label needs {MIN_CORRECTIONS_PER_LABEL} corrections; "
                                                  f"fewer so far: {', '.join(short)}")
        if learned_name(source) in _stored_sets(index):
            state["learned_set"] = learned_name(source)
            origin = index.classification(learned_name(source)).label_set.origin or {}
    elif source is not None:
        state["needs"] = "learning from corrections handles single-label sets"
    if label_set.kind == KIND or state["learned_set"]:
        state["learned"] = {k: origin.get(k) for k in ("source", "target", "table", "levels", "C", "weight",
                                                        "prior", "metrics", "counts", "folds", "nested",
                                                        "learned_at")}
    state["labels"] = index.classification(source or name).labels
    state["correct_in"] = source or name  # where a correction made in the panel is recorded
    state["next"] = [u.to_dict() for u in least_sure(index, name, n_next)]
    return state

