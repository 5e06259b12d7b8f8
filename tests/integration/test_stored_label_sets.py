"""Labels computed elsewhere (topics, a learned probe) stored as a label set: they round-trip
with their origin, and filters, review and the web read them like a zero-shot set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clipdex import Index, SearchFilter
from clipdex.classify import SOFTMAX, Classification
from clipdex.labels import Label, LabelSet, label_set_from_json


def _computed(idx: Index, name: str = "parity") -> Classification:
    found = idx.searchable()
    ids = found.ids.tolist()
    probs = np.array([[0.9, 0.1] if i % 2 else [0.2, 0.8] for i in ids], dtype=np.float32)
    predicted = ["odd" if i % 2 else "even" for i in ids]
    label_set = LabelSet(name, (Label("odd", ()), Label("even", ())), templates=(),
                         origin={"kind": "learned", "target": "id parity", "weights": [[0.5, -0.5]]})
    return Classification(label_set=label_set, file_ids=ids, paths=found.paths, probs=probs, predicted=predicted,
                          confidence=probs.max(axis=1))


def test_origin_round_trips_through_json() -> None:
    plain = LabelSet("space", (Label("indoor", ("a photo taken indoors",)),))
    assert plain.kind == "zero-shot" and "origin" not in plain.to_json()
    assert label_set_from_json(plain.to_json()) == plain
    learned = replace(plain, origin={"kind": "topics", "k": 3})
    back = label_set_from_json(learned.to_json())
    assert back.origin == {"kind": "topics", "k": 3} and back.kind == "topics"


def test_saved_classification_reads_back_and_filters(web_index: Index) -> None:
    idx = web_index
    result = _computed(idx)
    idx.save_classification(result)
    assert "parity" in idx.label_sets()
    stored = idx.classification("parity")
    assert stored.label_set.origin == result.label_set.origin and stored.scoring == SOFTMAX
    by_id = dict(zip(stored.file_ids, stored.predicted))
    assert by_id == dict(zip(result.file_ids, result.predicted))
    odd = idx.search("a photo", k=50, filters=SearchFilter(label=("parity", "odd")))
    assert odd and all(r.file_id % 2 for r in odd)


def test_saving_again_replaces_and_unknown_ids_are_refused(web_index: Index, tmp_path: Path) -> None:
    idx = web_index
    first = _computed(idx)
    idx.save_classification(first)
    flipped = replace(first, predicted=["even" if p == "odd" else "odd" for p in first.predicted])
    idx.save_classification(flipped)
    assert dict(zip(idx.classification("parity").file_ids, idx.classification("parity").predicted)) == dict(
        zip(flipped.file_ids, flipped.predicted))
    with pytest.raises(ValueError, match="not searchable"):
        idx.save_classification(replace(first, file_ids=[10**9, *first.file_ids[1:]]))
