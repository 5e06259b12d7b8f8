"""Zero-shot scores from stored image vectors: no image is decoded or encoded again.

For each label, its prompts are encoded, normalised, averaged and normalised
again (the ensemble of CLIP's paper and open_clip's zero-shot classifier).
Scores are the model's own, as it was trained:

- **softmax models** (CLIP, ``logit_bias`` None): probabilities are the softmax of
  ``logit_scale * cosine`` over the set's labels (the tutorial's
  ``logits_per_image.softmax``): they share 1.0 and say *which of these* labels
  fits best. In multi-label mode each label is judged on its own: a two-way
  softmax between the label and the set's background prompts, i.e.
  ``sigmoid(logit_scale * (cos_label - cos_background))``.
- **sigmoid models** (SigLIP, trained with a sigmoid loss, with a ``logit_bias``):
  every label gets its own ``sigmoid(logit_scale * cosine + logit_bias)``, an
  absolute *is this a photo of ...*; several labels or none can be likely. The
  prediction of a single-label set is the most likely label (``uncertain`` below
  ``min_prob``); a multi-label set turns on every label at its threshold. A
  set's background prompts are not used (not even encoded): the model's bias
  already calibrates each label against "not this label", and subtracting a
  background cosine would undo that calibration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from clipdex.errors import LabelSetError
from clipdex.labels import MULTI_SEPARATOR, UNCERTAIN, LabelSet, check_min_prob

# UNCERTAIN and MULTI_SEPARATOR live in clipdex.labels (labels are checked against them)
# and are imported from here by the rest of clipdex.

TextEncoder = Callable[[Sequence[str]], np.ndarray]

SOFTMAX = "softmax"  # CLIP: a softmax of logit_scale * cosine over a set's labels
SIGMOID = "sigmoid"  # SigLIP: sigmoid(logit_scale * cosine + logit_bias), each label on its own
SCORINGS = (SOFTMAX, SIGMOID)


def scoring_of(logit_bias: float | None) -> str:
    """How a model scores labels: :data:`SIGMOID` where it has a bias (SigLIP), else :data:`SOFTMAX`."""
    return SOFTMAX if logit_bias is None else SIGMOID


def describe_scores(scoring: str, multi_label: bool = False) -> str:
    """How to read a set's probabilities, for the line a user reads them under.

    Only a single-label set of a softmax model has probabilities that sum to 1.
    """
    if scoring == SIGMOID:
        return "scores: per-label sigmoid (SigLIP), each label on its own"
    if scoring != SOFTMAX:
        raise ValueError(f"unknown scoring {scoring!r}: one of {', '.join(SCORINGS)}")
    if multi_label:
        return "scores: each label against the set's background (softmax model)"
    return "scores: softmax over labels (they sum to 1)"


@dataclass
class Classifier:
    """A label set turned into class vectors (and, for a softmax model's multi-label set,
    a background vector); ``logit_bias`` is the model's (None: a softmax model)."""

    label_set: LabelSet
    class_vectors: np.ndarray  # (labels, dim), unit rows
    background: np.ndarray | None  # (dim,), unit
    logit_scale: float
    logit_bias: float | None = None

    @property
    def scoring(self) -> str:
        """:data:`SOFTMAX` or :data:`SIGMOID`."""
        return scoring_of(self.logit_bias)


def build_classifier(label_set: LabelSet, encode_texts: TextEncoder, logit_scale: float,
                     logit_bias: float | None = None) -> Classifier:
    """Encode every prompt of the set once, in one batch, and average per label.

    ``logit_bias`` is the model's bias (a sigmoid model, SigLIP) or None (a softmax
    model, CLIP). A sigmoid model needs no background prompts: they are not encoded.
    """
    prompts = [p for label in label_set.labels for p in label.prompts]
    background = list(label_set.background) if label_set.multi_label and logit_bias is None else []
    vectors = encode_texts(prompts + background)
    class_vectors = []
    start = 0
    for label in label_set.labels:
        class_vectors.append(mean_direction(vectors[start:start + len(label.prompts)]))
        start += len(label.prompts)
    back = mean_direction(vectors[start:]) if background else None
    bias = None if logit_bias is None else float(logit_bias)
    return Classifier(label_set, np.stack(class_vectors), back, float(logit_scale), bias)


def mean_direction(vectors: np.ndarray) -> np.ndarray:
    """Mean of unit vectors, normalised: an ensemble of prompts."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over each row (shifted by its maximum: no overflow)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise, for any logits: exp is only taken of -|x|
    (never overflows), and tiny probabilities keep their relative precision."""
    z = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


@dataclass
class Classification:
    """One label set's result for every photo, row-aligned with ``paths``.

    ``paths`` are display paths (a name that is not valid UTF-8 shows ``\\xNN``
    escapes): shown to people and written to tables. ``fs_paths`` are the paths
    to open, row-aligned; None means the same as ``paths``.
    """

    label_set: LabelSet
    file_ids: list[int]
    paths: list[str]
    probs: np.ndarray  # (photos, labels)
    predicted: list[str]  # a label, "uncertain", or labels joined by ";" (multi-label)
    confidence: np.ndarray  # probability of the predicted label (max over labels)
    truth: list[str] | None = None  # a person's corrections ("" where none), when any exist
    fs_paths: list[str] | None = None  # the real paths to open, when some differ from ``paths``
    scoring: str | None = None  # SOFTMAX or SIGMOID: how ``probs`` read (None: not known here)
    _members: dict[str, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def fs_path(self, i: int) -> str:
        """The path to open photo ``i`` by."""
        return self.fs_paths[i] if self.fs_paths is not None else self.paths[i]

    @property
    def labels(self) -> list[str]:
        return self.label_set.label_names

    @property
    def scores_text(self) -> str | None:
        """How to read ``probs`` (:func:`describe_scores`); None when the scoring is not known."""
        return None if self.scoring is None else describe_scores(self.scoring, self.label_set.multi_label)

    def check_label(self, label: str, *, allow_uncertain: bool = True) -> None:
        """Raise :class:`~clipdex.errors.LabelSetError` unless ``label`` is one of the set's
        (or ``uncertain``, where a filter may ask for it; a correction may not)."""
        check_label(self.label_set.name, self.labels, label, allow_uncertain=allow_uncertain)

    def members(self, label: str) -> np.ndarray:
        """Row indices of the photos with ``label`` (a correction wins), in row order.

        Worked out once for every label (one pass over the photos) and kept: filters,
        counts and browsing by label ask for it on every request.
        """
        if self._members is None:
            rows: dict[str, list[int]] = {}
            for i, labels in enumerate(self.effective_labels()):
                for name in labels:
                    rows.setdefault(name, []).append(i)
            self._members = {name: np.array(r, dtype=np.int64) for name, r in rows.items()}
        return self._members.get(label, np.zeros(0, dtype=np.int64))

    def effective_labels(self) -> list[list[str]]:
        """Each photo's labels: a person's correction wins over the prediction."""
        truth = self.truth or [""] * len(self.predicted)
        return [(t or p).split(MULTI_SEPARATOR) for p, t in zip(self.predicted, truth)]

    def top_k(self, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable labels of every photo, with their probabilities."""
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        names = self.labels
        return [[(names[j], float(self.probs[i, j])) for j in row] for i, row in enumerate(order)]

    def counts(self) -> dict[str, int]:
        """Photos per label (multi-label: per label that is on), labels in set order.

        A person's correction wins over the prediction, as in :meth:`effective_labels`
        (so the counts match what a filter by label finds).
        """
        ordered = {name: len(self.members(name)) for name in self.labels}
        for extra in (UNCERTAIN, ""):
            if len(self.members(extra)):
                ordered[extra or "(none)"] = len(self.members(extra))
        return ordered


def check_label(set_name: str, labels: Sequence[str], label: str, *, allow_uncertain: bool = True) -> None:
    """Raise :class:`~clipdex.errors.LabelSetError` unless ``label`` is one of ``labels`` of set
    ``set_name`` (or ``uncertain``, when ``allow_uncertain``); the message lists the choices."""
    allowed = [*labels, *([UNCERTAIN] if allow_uncertain else [])]
    if label not in allowed:
        raise LabelSetError(f"label set {set_name!r}", f"has no label {label!r}",
                            f"Pick one of: {', '.join(allowed)}.")


def classify(classifier: Classifier, vectors: np.ndarray, file_ids: Sequence[int],
             paths: Sequence[str], *, min_prob: float | None = None,
             fs_paths: Sequence[str] | None = None) -> Classification:
    """Probabilities and predictions for stored image vectors (N, dim), as the model scores
    (see the module docstring: softmax or per-label sigmoid).

    ``min_prob`` (in [0, 1]) overrides the set's own for a single-label set; below it
    a photo's prediction is ``uncertain``. ``fs_paths``: see :class:`Classification`.
    """
    min_prob = check_min_prob(min_prob, "min_prob")
    if fs_paths is not None and len(fs_paths) != len(paths):
        raise ValueError("fs_paths must be row-aligned with paths")
    label_set = classifier.label_set
    cosines = vectors.astype(np.float32, copy=False) @ classifier.class_vectors.T
    names = np.array(label_set.label_names, dtype=object)
    probs = _probabilities(classifier, vectors, cosines)
    if label_set.multi_label:
        on = probs >= label_set.threshold
        predicted = [MULTI_SEPARATOR.join(names[row]) for row in on]
        confidence = probs.max(axis=1) if len(probs) else np.zeros(0, np.float32)
    else:
        best = probs.argmax(axis=1)
        confidence = probs[np.arange(len(probs)), best]
        predicted = list(names[best])
        threshold = min_prob if min_prob is not None else label_set.min_prob
        if threshold is not None:
            predicted = [p if c >= threshold else UNCERTAIN for p, c in zip(predicted, confidence)]
    return Classification(label_set=label_set, file_ids=list(file_ids), paths=list(paths),
                          probs=probs.astype(np.float32), predicted=[str(p) for p in predicted],
                          confidence=np.asarray(confidence, dtype=np.float32),
                          fs_paths=list(fs_paths) if fs_paths is not None else None,
                          scoring=classifier.scoring)


def _probabilities(classifier: Classifier, vectors: np.ndarray, cosines: np.ndarray) -> np.ndarray:
    """(photos, labels) probabilities, computed in float64 (a large logit_scale times a
    float32 cosine would otherwise lose digits of the logit)."""
    scale = classifier.logit_scale
    cos = cosines.astype(np.float64)
    if classifier.logit_bias is not None:  # sigmoid model: every label on its own
        return sigmoid(scale * cos + classifier.logit_bias)
    if classifier.label_set.multi_label:  # softmax model: each label against the background
        assert classifier.background is not None
        margin = cos - (vectors @ classifier.background).astype(np.float64)[:, None]
        return sigmoid(scale * margin)
    return softmax(scale * cos)
