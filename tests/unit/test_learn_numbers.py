"""clipdex.learn's numbers without an index: levels, scores, probes, the zero-shot/probe combination."""

from __future__ import annotations

import numpy as np
import pytest

from clipdex.learn import (
    C_GRID,
    WEIGHT_GRID,
    _logits,
    can_nest,
    choose_combination,
    cross_validate_probe,
    cut,
    describe_levels,
    fit_probe,
    level_names,
    level_names_in,
    logit_matrix,
    nested_combination,
    parse_numbers,
    quantile_edges,
    scores_of,
)


def blobs(n_per: int, centres: int, dim: int = 16, spread: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``centres`` random directions, and their class."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim))
    x = np.concatenate([m + spread * rng.normal(size=(n_per, dim)) for m in means])
    y = np.repeat(np.arange(centres), n_per)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def test_levels_of_a_numeric_column() -> None:
    iso = np.array([100, 100, 100, 200, 400, 800, 1600, 3200], dtype=float)
    assert quantile_edges(iso, 2) == [300.0]
    assert quantile_edges(np.array([100.0] * 9 + [200.0]), 3) == []  # most values equal: no edge
    assert quantile_edges(np.array([5.0] * 10), 2) == []  # one value: nothing to cut
    assert level_names([800]) == ["low", "high"] and level_names([1, 2]) == ["low", "mid", "high"]
    assert level_names([100, 400, 800]) == ["<100", "100-400", "400-800", ">=800"]
    assert cut(iso, [800]).tolist() == [0, 0, 0, 0, 0, 1, 1, 1]  # 800 itself is high
    assert describe_levels("exif_iso", [800], ["low", "high"]) == "exif_iso: low < 800 <= high"
    assert level_names_in(["high", "low"]) == ["low", "high"]
    assert level_names_in([">=800", "<100", "100-400", "400-800"]) == ["<100", "100-400", "400-800", ">=800"]
    assert parse_numbers(["1", "2.5", "1e3"]) is not None and parse_numbers(["1", "Canon"]) is None
    assert parse_numbers(["nan"]) is None


def test_scores_follow_scikit_learn() -> None:
    truth = np.array([0, 0, 0, 1])
    always_zero = scores_of(truth, np.zeros(4, dtype=int))
    assert always_zero.accuracy == 0.75 and always_zero.balanced_accuracy == 0.5
    assert always_zero.macro_f1 == pytest.approx((6 / 7) / 2)  # F1 of class 0 is 6/7; class 1's is 0


def test_a_two_class_probe_gives_two_logits_with_its_softmax() -> None:
    x, y = blobs(20, 2)
    model = fit_probe(x, y, 1.0)
    coef, intercept = logit_matrix(model, 2)
    logits = x @ coef.T + intercept
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert np.allclose(p, model.predict_proba(x), atol=1e-8)


def test_cross_validation_is_out_of_fold_with_a_majority_baseline() -> None:
    x, y = blobs(15, 3)
    y = np.concatenate([y, np.zeros(15, dtype=int)])  # class 0 twice as frequent
    x = np.concatenate([x, blobs(15, 3, seed=1)[0][:15]])
    cv = cross_validate_probe(x, y, folds=5)
    assert cv.nested and cv.folds == 5 and len(cv.fold_C) == 5 and set(cv.fold_C) <= set(C_GRID)
    assert (cv.baseline == 0).all()  # the training folds' most frequent class
    assert scores_of(y, cv.baseline).balanced_accuracy == pytest.approx(1 / 3)
    fixed = cross_validate_probe(x, y, Cs=[0.316], folds=5)
    assert fixed.fold_C == [0.316] * 5
    with pytest.raises(ValueError, match="at least 2 rows"):
        cross_validate_probe(x[:16], np.array([0] * 15 + [1]))


def test_the_combination_never_scores_below_zero_shot_on_cv() -> None:
    x, y = blobs(6, 3, spread=0.6, seed=3)
    rng = np.random.default_rng(0)
    good_zero_shot = np.eye(3)[y] * 2.0 + rng.normal(0, 0.5, (len(y), 3))  # zero-shot that is mostly right
    useless_zero_shot = rng.normal(0, 1.0, (len(y), 3))
    for zero_shot in (good_zero_shot, useless_zero_shot):
        combo = choose_combination(x, y, zero_shot)
        zs = scores_of(y, combo.zero_shot).balanced_accuracy
        assert scores_of(y, combo.combined).balanced_accuracy >= zs
        assert combo.weight in WEIGHT_GRID and combo.C in C_GRID
        assert combo.grid[(C_GRID[0], 0.0)] == zs  # weight 0 is pure zero-shot, whatever C
    perfect = np.eye(3)[y] * 5.0
    assert scores_of(y, choose_combination(x, y, perfect).combined).balanced_accuracy == 1.0
    with pytest.raises(ValueError, match="start with 0"):
        choose_combination(x, y, perfect, weights=(0.5, 1.0))


def test_the_nested_estimate_chooses_inside_each_outer_fold() -> None:
    x, y = blobs(6, 3, spread=1.5, seed=3)
    zs = np.random.default_rng(4).normal(size=(len(y), 3))
    nested = nested_combination(x, y, zs, folds=3)
    assert nested.folds == 3 and len(nested.fold_weights) == 3 and set(nested.fold_weights) <= set(WEIGHT_GRID)
    assert set(nested.fold_C) <= set(C_GRID) and len(nested.combined) == len(y)
    # the selection's own score can only be at or above zero-shot's; the nested one is a fresh estimate
    selection = choose_combination(x, y, zs, folds=3)
    zs_score = scores_of(y, zs.argmax(axis=1)).balanced_accuracy
    assert scores_of(y, selection.combined).balanced_accuracy >= zs_score
    assert 0.0 <= scores_of(y, nested.combined).balanced_accuracy <= 1.0


def test_nesting_needs_three_rows_a_class() -> None:
    assert can_nest(np.array([0, 0, 0, 1, 1, 1]), 2, 5)
    assert not can_nest(np.array([0, 0, 1, 1, 1, 1]), 2, 5)  # 2 rows: each outer training part keeps 1
    assert not can_nest(np.array([0, 0, 0, 1, 1, 1]), 2, 2)  # 2 folds of 3 rows: a training part keeps 1
    with pytest.raises(ValueError, match="3 rows"):
        nested_combination(np.eye(4), np.array([0, 0, 1, 1]), np.zeros((4, 2)))


def test_a_class_of_two_rows_is_cross_validated_with_a_fixed_C() -> None:
    x, y = blobs(6, 2, seed=5)
    y = y.copy()
    y[:2] = 2  # a third class of 2 rows: each outer training part holds one of them
    cv = cross_validate_probe(x, y, folds=5)
    assert cv.folds == 2 and cv.fixed_folds == 2 and cv.fold_C == [10.0, 10.0]


def test_logits_in_chunks_match_the_whole_product(monkeypatch: pytest.MonkeyPatch) -> None:
    import clipdex.learn

    monkeypatch.setattr(clipdex.learn, "LOGIT_CHUNK", 7)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 16)).astype(np.float32)
    coef, intercept = rng.normal(size=(3, 16)), rng.normal(size=3)
    expected = vectors.astype(np.float64) @ coef.T + intercept
    np.testing.assert_allclose(_logits(vectors, coef, intercept), expected, rtol=1e-4, atol=1e-4)
    rows = np.array([49, 3, 20, 7, 8, 9, 10, 11, 12])
    np.testing.assert_allclose(_logits(vectors, coef, intercept, rows), expected[rows], rtol=1e-4, atol=1e-4)


def test_level_names_keep_their_order_from_low_to_high() -> None:
    from clipdex.learn import level_names_in

    assert level_names_in(["high", "mid", "low", "mid"]) == ["low", "mid", "high"]
    assert level_names_in(["high", "low"]) == ["low", "high"]
    assert level_names_in([">=400", "<100", "100-400"]) == ["<100", "100-400", ">=400"]
