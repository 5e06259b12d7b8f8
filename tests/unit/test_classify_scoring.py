"""The model's own scoring: softmax over labels (CLIP) or each label's sigmoid with a bias (SigLIP)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from clipdex.classify import (
    SIGMOID,
    SOFTMAX,
    UNCERTAIN,
    Classifier,
    build_classifier,
    classify,
    describe_scores,
    scoring_of,
    sigmoid,
)
from clipdex.labels import make_label_set

DIM = 8


def reference_sigmoid(x: np.ndarray) -> np.ndarray:
    """The textbook logistic function in float64 (exact enough where it does not overflow)."""
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class PromptTable:
    """A text encoder for the maths: a fixed random unit vector per prompt, and the prompts asked for."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.table: dict[str, np.ndarray] = {}
        self.asked: list[str] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.asked += list(texts)
        for text in texts:
            self.table.setdefault(text, self.rng.normal(size=DIM))
        return unit(np.stack([self.table[t] for t in texts]))


def photos(count: int, seed: int = 1) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(count, DIM)))


def test_sigmoid_with_a_bias_matches_numpy_per_label() -> None:
    label_set = make_label_set("time", ["dawn", "day", "dusk", "night"], ["a photo at {}"])
    classifier = build_classifier(label_set, PromptTable(), logit_scale=10.0, logit_bias=-2.5)
    vectors = photos(50)
    result = classify(classifier, vectors, list(range(50)), [f"p{i}" for i in range(50)])

    expected = reference_sigmoid(10.0 * vectors @ classifier.class_vectors.T - 2.5)
    np.testing.assert_allclose(result.probs, expected, rtol=1e-5, atol=1e-7)
    assert result.scoring == SIGMOID and classifier.scoring == SIGMOID
    best = expected.argmax(axis=1)
    assert result.predicted == [label_set.label_names[j] for j in best]
    np.testing.assert_allclose(result.confidence, expected[np.arange(50), best], rtol=1e-5)
    assert not np.allclose(result.probs.sum(axis=1), 1.0)  # each label on its own: no shares of 1


def test_without_a_bias_scores_stay_a_softmax_over_labels() -> None:
    label_set = make_label_set("time", ["dawn", "day", "dusk"], ["a photo at {}"])
    classifier = build_classifier(label_set, PromptTable(), logit_scale=100.0)
    vectors = photos(20)
    result = classify(classifier, vectors, list(range(20)), [f"p{i}" for i in range(20)])

    logits = 100.0 * vectors.astype(np.float64) @ classifier.class_vectors.T.astype(np.float64)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(result.probs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert classifier.logit_bias is None and result.scoring == SOFTMAX


def test_huge_logits_neither_overflow_nor_lose_small_probabilities() -> None:
    x = np.array([-1e308, -1e4, -745.0, -50.0, 0.0, 50.0, 1e4, 1e308])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = sigmoid(x)
    assert p[0] == 0.0 and p[-1] == 1.0 and p[4] == 0.5
    assert p[3] == pytest.approx(np.exp(-50.0), rel=1e-12)  # 1 - (1 - tiny) would give 0
    assert np.all(np.diff(p) >= 0)

    label_set = make_label_set("t", ["a", "b"], ["{}"])
    classifier = build_classifier(label_set, PromptTable(), logit_scale=1e6, logit_bias=-1e5)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        result = classify(classifier, photos(10), list(range(10)), [f"p{i}" for i in range(10)])
    assert np.all(np.isfinite(result.probs)) and np.all((result.probs >= 0) & (result.probs <= 1))


def test_a_photo_none_of_whose_labels_is_likely_is_uncertain() -> None:
    label_set = make_label_set("time", ["dawn", "day", "dusk", "night"], ["{}"])
    table = PromptTable()
    classifier = build_classifier(label_set, table, logit_scale=10.0, logit_bias=-10.0)
    vectors = np.concatenate([classifier.class_vectors[1:2], photos(3)])  # a 'day' photo, 3 unlike any
    ids, paths = [0, 1, 2, 3], ["day", "x", "y", "z"]

    result = classify(classifier, vectors, ids, paths, min_prob=0.3)
    assert result.probs[0, 1] == pytest.approx(reference_sigmoid(np.array(0.0))[()])  # cos 1: 10 - 10
    assert result.predicted[0] == "day"
    assert result.predicted[1:] == [UNCERTAIN] * 3  # a softmax would still hand out 1.0 among them
    assert np.all(result.probs[1:] < 0.3)
    without = classify(classifier, vectors, ids, paths)
    assert UNCERTAIN not in without.predicted  # no min_prob: the most likely label, however unlikely

    strict = make_label_set("time", ["dawn", "day", "dusk", "night"], ["{}"], min_prob=0.6)
    own = classify(build_classifier(strict, table, 10.0, -10.0), vectors, ids, paths)
    assert own.predicted == [UNCERTAIN] * 4  # the set's own min_prob: 0.5 < 0.6 for 'day' too


def test_multi_label_with_a_bias_uses_each_labels_own_sigmoid_and_no_background() -> None:
    label_set = make_label_set("tags", ["dog", "snow", "car"], ["a photo of {}"], multi_label=True,
                               threshold=0.5, background=["a photo of something"])
    table = PromptTable()
    classifier = build_classifier(label_set, table, logit_scale=20.0, logit_bias=-10.0)
    assert classifier.background is None
    assert "a photo of something" not in table.asked  # not even encoded
    dog, snow = classifier.class_vectors[0], classifier.class_vectors[1]
    vectors = np.stack([dog, unit((dog + snow)[None])[0], photos(1)[0]])

    result = classify(classifier, vectors, [1, 2, 3], ["dog", "both", "none"])
    expected = reference_sigmoid(20.0 * vectors @ classifier.class_vectors.T - 10.0)
    np.testing.assert_allclose(result.probs, expected, rtol=1e-5, atol=1e-7)
    on = expected >= 0.5
    assert result.predicted == [";".join(n for n, o in zip(label_set.label_names, row) if o) for row in on]
    assert result.predicted[0].split(";")[0] == "dog"
    np.testing.assert_allclose(result.confidence, expected.max(axis=1), rtol=1e-5)


def test_multi_label_without_a_bias_is_still_judged_against_the_background() -> None:
    label_set = make_label_set("tags", ["dog", "snow"], ["{}"], multi_label=True, threshold=0.5,
                               background=["something"])
    table = PromptTable()
    classifier = build_classifier(label_set, table, logit_scale=100.0)
    assert classifier.background is not None and "something" in table.asked
    vectors = photos(6)
    result = classify(classifier, vectors, list(range(6)), [str(i) for i in range(6)])
    margin = vectors @ classifier.class_vectors.T - (vectors @ classifier.background)[:, None]
    np.testing.assert_allclose(result.probs, reference_sigmoid(100.0 * margin), rtol=1e-5, atol=1e-7)


def test_an_empty_index_part_classifies_to_nothing_with_a_bias() -> None:
    label_set = make_label_set("t", ["a", "b"], ["{}"])
    result = classify(build_classifier(label_set, PromptTable(), 10.0, -5.0), np.zeros((0, DIM), np.float32),
                      [], [])
    assert result.probs.shape == (0, 2) and result.predicted == []


def test_scores_are_described_as_the_model_computes_them() -> None:
    assert scoring_of(None) == SOFTMAX and scoring_of(-10.0) == SIGMOID and scoring_of(0.0) == SIGMOID
    assert describe_scores(SIGMOID) == describe_scores(SIGMOID, multi_label=True)
    assert "per-label sigmoid (SigLIP)" in describe_scores(SIGMOID)
    assert "sum to 1" not in describe_scores(SIGMOID)
    assert "softmax over labels" in describe_scores(SOFTMAX) and "sum to 1" in describe_scores(SOFTMAX)
    assert "sum to 1" not in describe_scores(SOFTMAX, multi_label=True)
    with pytest.raises(ValueError, match="unknown scoring"):
        describe_scores("tanh")
    label_set = make_label_set("t", ["a", "b"], ["{}"])
    result = classify(Classifier(label_set, np.eye(2, DIM, dtype=np.float32), None, 10.0, -1.0),
                      photos(2), [1, 2], ["p", "q"])
    assert result.scores_text == describe_scores(SIGMOID)
