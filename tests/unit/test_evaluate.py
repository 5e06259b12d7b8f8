"""Evaluation: truth labels matched to the set's labels; the rest reported, never counted."""

from __future__ import annotations

import pytest

from clipdex.errors import LabelSetError
from clipdex.evaluate import evaluate

LABELS = ["dawn", "day", "dusk", "night"]


def test_truth_is_matched_ignoring_case_and_spacing() -> None:
    result = evaluate(["day", "night", "dusk"], ["Day", " NIGHT ", "dusk"], LABELS)
    assert result.count == 3 and result.accuracy == 1.0
    assert result.classes == ["day", "dusk", "night"]
    assert result.excluded == {}


def test_truth_that_is_no_label_is_left_out_and_reported() -> None:
    predicted = ["day", "day", "night", "dusk", "dawn"]
    truth = ["day", "sunset", "night", "sunset", "noon"]
    result = evaluate(predicted, truth, LABELS)
    assert result.count == 2 and result.accuracy == 1.0
    assert result.excluded == {"sunset": 2, "noon": 1}
    assert "sunset" not in result.classes
    assert result.to_dict()["excluded"] == {"sunset": 2, "noon": 1}
    assert result.confusion.sum() == 2


def test_nothing_left_is_an_error_listing_the_values_and_the_labels() -> None:
    with pytest.raises(LabelSetError) as info:
        evaluate(["day", "night"], ["indoor", "outdoor"], LABELS)
    message = str(info.value)
    assert "'indoor' (1)" in message and "'outdoor' (1)" in message
    assert "dawn, day, dusk, night" in message and "--truth" in message


def test_empty_truth_is_not_excluded_and_without_labels_everything_counts() -> None:
    result = evaluate(["day", "night"], ["", "  "], LABELS)
    assert result.count == 0 and result.excluded == {}
    free = evaluate(["a", "b"], ["a", "c"])
    assert free.count == 2 and free.classes == ["a", "b", "c"]


def test_predictions_outside_the_labels_still_count_against_the_truth() -> None:
    result = evaluate(["uncertain", "day"], ["day", "day"], LABELS)
    assert result.count == 2 and result.accuracy == 0.5
    assert result.classes == ["day", "uncertain"]
