"""Predictions against ground truth: accuracy, balanced accuracy, macro-F1, confusion.

Definitions follow scikit-learn's: the classes are every label that occurs in
the truth or the predictions; balanced accuracy is the mean recall over the
classes present in the truth; macro-F1 the unweighted mean F1 over all classes
(0 where precision and recall are both 0).

Truth values are matched to the set's labels ignoring case and spacing
(``Day``, `` day `` and ``day`` are one label). A truth value that is still
not a label of the set (``sunset`` for dawn/day/dusk/night) is not counted:
its rows are left out and reported in :attr:`Evaluation.excluded`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from clipdex.errors import LabelSetError


@dataclass(frozen=True)
class ClassScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int  # photos whose truth is this label


@dataclass(frozen=True)
class Evaluation:
    """How well predictions match the truth on the photos that have both."""

    count: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    classes: list[str]
    per_class: list[ClassScore]
    confusion: np.ndarray  # rows: truth, columns: predicted, in ``classes`` order
    excluded: dict[str, int] = field(default_factory=dict)  # truth values that are no label -> rows

    def to_dict(self) -> dict[str, object]:
        return {
            "count": self.count, "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy, "macro_f1": self.macro_f1,
            "classes": self.classes, "per_class": [vars(c) for c in self.per_class],
            "confusion": self.confusion.tolist(), "excluded": dict(self.excluded),
        }


def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()


def evaluate(predicted: Sequence[str], truth: Sequence[str], label_order: Sequence[str] = ()) -> Evaluation:
    """Compare aligned lists of predicted and true labels (pairs with an empty truth are dropped).

    With ``label_order`` (the set's labels), each truth value is matched to a
    label ignoring case and spacing; rows whose truth is no label are left out
    and counted in ``excluded``. Raises :class:`~clipdex.errors.LabelSetError`
    when truth values were given but none is a label of the set.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions but {len(truth)} truth values")
    given = [(p, t.strip()) for p, t in zip(predicted, truth) if t.strip()]
    excluded: Counter[str] = Counter()
    if label_order:
        canonical = {_folded(label): label for label in label_order}
        pairs = []
        for p, t in given:
            label = canonical.get(_folded(t))
            if label is None:
                excluded[t] += 1
            else:
                pairs.append((p, label))
        if given and not pairs:
            shown = ", ".join(f"{value!r} ({n})" for value, n in excluded.most_common(10))
            more = f" and {len(excluded) - 10} more" if len(excluded) > 10 else ""
            raise LabelSetError("ground truth", f"no truth value is a label of the set: {shown}{more}",
                                f"The set's labels are: {', '.join(label_order)}. Check that the truth "
                                "column belongs to this label set (--truth COLUMN), or fix its values.")
    else:
        pairs = given
    seen = {t for _, t in pairs} | {p for p, _ in pairs}
    classes = [c for c in label_order if c in seen] + sorted(seen - set(label_order))
    position = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for p, t in pairs:
        confusion[position[t], position[p]] += 1
    correct = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    scores = []
    for i, label in enumerate(classes):
        precision = correct[i] / predicted_count[i] if predicted_count[i] else 0.0
        recall = correct[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(ClassScore(label, float(precision), float(recall), float(f1), int(support[i])))
    count = len(pairs)
    present = [s.recall for s in scores if s.support]
    return Evaluation(
        count=count,
        accuracy=float(correct.sum() / count) if count else 0.0,
        balanced_accuracy=float(np.mean(present)) if present else 0.0,
        macro_f1=float(np.mean([s.f1 for s in scores])) if scores else 0.0,
        classes=classes, per_class=scores, confusion=confusion,
        excluded=dict(excluded.most_common()))


def draw_confusion(evaluation: Evaluation, out: str | os.PathLike[str], title: str = "") -> str:
    """A PNG heatmap of the confusion matrix (rows normalised by truth, counts in cells)."""
    from PIL import Image, ImageDraw

    from clipdex.grid import _font

    classes = evaluation.classes
    n = max(1, len(classes))
    cell, margin_left, margin_top = 72, 150, 110
    width, height = margin_left + n * cell + 20, margin_top + n * cell + 40
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(13)
    draw.text((10, 8), title or "confusion matrix", fill=(0, 0, 0), font=_font(20))
    draw.text((margin_left, margin_top - 48), "predicted (columns)", fill=(80, 80, 80), font=small)
    draw.text((10, margin_top - 24), "truth (rows)", fill=(80, 80, 80), font=small)
    rows = evaluation.confusion.sum(axis=1, keepdims=True).clip(min=1)
    share = evaluation.confusion / rows
    for j, label in enumerate(classes):
        draw.text((margin_left + j * cell + 4, margin_top - 24), label[:9], fill=(0, 0, 0), font=small)
    for i, label in enumerate(classes):
        y = margin_top + i * cell
        draw.text((10, y + cell // 2 - 8), label[:18], fill=(0, 0, 0), font=font)
        for j in range(len(classes)):
            x = margin_left + j * cell
            level = float(share[i, j])
            colour = (int(255 - 200 * level), int(255 - 120 * level), 255)
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour)
            text = str(int(evaluation.confusion[i, j]))
            ink = (255, 255, 255) if level > 0.6 else (0, 0, 0)
            draw.text((x + cell // 2 - 4 * len(text), y + cell // 2 - 8), text, fill=ink, font=font)
    summary = (f"n={evaluation.count}  accuracy {evaluation.accuracy:.3f}  balanced "
               f"{evaluation.balanced_accuracy:.3f}  macro-F1 {evaluation.macro_f1:.3f}")
    draw.text((10, height - 30), summary, fill=(0, 0, 0), font=small)
    image.save(out)
    return os.fspath(out)
