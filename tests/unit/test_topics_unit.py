"""Topics without a model: the vocabulary data, k's range and choice, assignment, naming, majorities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipdex.classify import Classification
from clipdex.errors import LabelSetError
from clipdex.labels import Label, LabelSet
from clipdex.topics import (
    KIND_TEMPLATES,
    VOCABULARY_FILE,
    _majorities,
    _names,
    assign,
    builtin_concepts,
    check_set_name,
    choose_k,
    k_range,
    make_vocabulary,
    name_scores,
    unique_names,
    user_concepts,
)


def blobs(k: int, per: int, dim: int = 32, spread: float = 0.08, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` tight groups of unit vectors around random unit centres, and each row's group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(k), per)
    x = centres[truth] + spread * rng.normal(size=(k * per, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def test_builtin_vocabulary_is_clean_data_with_its_sources() -> None:
    concepts = builtin_concepts()
    assert 1900 <= len(concepts) <= 3000
    folded = [c.name.casefold() for c in concepts]
    assert len(set(folded)) == len(folded)  # unique ignoring case: they become labels of one set
    assert all(";" not in c.name and c.name.strip() == c.name and c.name for c in concepts)
    assert {c.kind for c in concepts} <= set(KIND_TEMPLATES)
    assert {c.source for c in concepts} == {"coco", "places365", "imagenet", "kinetics400", "clipdex"}
    by_name = {c.name: c for c in concepts}
    assert by_name["hockey arena"].source == "places365" and "_" not in "".join(folded)
    assert by_name["person"].prompts == ("a photo of a person.", "a photo of the person.")
    assert by_name["abseiling"].prompts[0] == "a photo of a person abseiling."
    sources = (VOCABULARY_FILE.parent / "SOURCES.md").read_text()
    for source in ("coco", "places365", "imagenet", "kinetics400", "clipdex", "licence"):
        assert source in sources


def test_users_concepts_from_text_and_label_files(tmp_path: Path) -> None:
    text = tmp_path / "mine.txt"
    text.write_text("grandma's garden  # the allotment\n\nour boat\n")
    assert [c.name for c in user_concepts(text)] == ["grandma's garden", "our boat"]
    toml = tmp_path / "sets.toml"
    toml.write_text('[pets]\nlabels = ["Rex", "Tom"]\nprompts = { Rex = ["a photo of our dog"] }\n')
    rex = user_concepts(toml)[0]
    assert rex.name == "Rex" and rex.prompts == ("a photo of our dog",)
    vocabulary = make_vocabulary([text, toml])
    assert vocabulary.names[:4] == ["grandma's garden", "our boat", "Rex", "Tom"]
    assert "clipdex built-in" in vocabulary.description and "mine.txt (2)" in vocabulary.description
    assert make_vocabulary([text], builtin=False).names == ["grandma's garden", "our boat"]
    assert make_vocabulary([text]).digest() != make_vocabulary([toml]).digest()
    bad = tmp_path / "bad.txt"
    bad.write_text("a;b\n")
    with pytest.raises(LabelSetError, match=r"bad\.txt line 1"):
        user_concepts(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(LabelSetError, match="names no concept"):
        user_concepts(empty)


def test_k_range_grows_with_the_collection() -> None:
    assert k_range(2) == (2, 2) and choose_k(blobs(2, per=1)[0]).k == 2  # one candidate: no silhouette
    assert k_range(18) == (2, 4)
    assert k_range(1000) == (8, 32)
    low, high = k_range(100_000)
    assert (low, high) == (30, 60)
    assert k_range(1_000_000) == (30, 60)
    for n in (3, 10, 50, 500, 5000):
        low, high = k_range(n)
        assert 2 <= low <= high <= n - 1


@pytest.mark.parametrize("k", [3, 5])
def test_choose_k_finds_well_separated_groups(k: int) -> None:
    x, _ = blobs(k, per=12)
    choice = choose_k(x, seed=0)
    assert choice.k == k and choice.method == "silhouette"
    assert choice.low <= k <= choice.high and set(choice.scores) == set(range(choice.low, choice.high + 1))


def test_assign_is_nearest_unit_centroid_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import clipdex.topics as topics

    x, truth = blobs(4, per=10)
    centroids = np.stack([x[truth == g].mean(0) for g in range(4)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    monkeypatch.setattr(topics, "ASSIGN_CHUNK", 7)  # several chunks, one short
    labels, cosines = assign(x, centroids)
    assert (labels == truth).all() and cosines.shape == (40, 4)
    assert np.allclose(cosines, x @ centroids.T, atol=1e-6)


def test_names_tell_topics_apart_and_are_unique() -> None:
    rng = np.random.default_rng(1)
    concepts = rng.normal(size=(50, 16)).astype(np.float32)
    concepts /= np.linalg.norm(concepts, axis=1, keepdims=True)
    generic = concepts.mean(0)  # a concept close to every topic ("a photo") must not win
    concepts[0] = generic / np.linalg.norm(generic)
    centroids = concepts[[5, 6, 7]] * 0.8 + 0.6 * concepts[0]
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    scores = name_scores(centroids, concepts)
    assert list(unique_names(scores)) == [5, 6, 7]
    # Two topics whose best concept is the same: the assignment gives each its own name.
    twins = np.stack([concepts[5], concepts[5] * 0.9 + concepts[8] * 0.1])
    chosen = unique_names(name_scores(twins / np.linalg.norm(twins, axis=1, keepdims=True), concepts))
    assert len(set(chosen.tolist())) == 2


def _stored(name: str, labels: list[str], predicted: list[str], truth: list[str] | None = None) -> Classification:
    n = len(predicted)
    return Classification(LabelSet(name, tuple(Label(x, (x,)) for x in labels)), list(range(1, n + 1)),
                          [f"p{i}.jpg" for i in range(n)], np.zeros((n, len(labels)), np.float32), predicted,
                          np.ones(n, np.float32), truth=truth)


def test_majority_labels_name_topics_without_a_text_encoder() -> None:
    assigned = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    ids = np.arange(1, 11)
    stored = {"space": _stored("space", ["indoor", "outdoor"],
                               ["indoor"] * 3 + ["outdoor"] + ["outdoor"] * 4 + ["indoor", "outdoor"],
                               truth=[""] * 3 + ["indoor"] + [""] * 6)}  # a correction wins
    majorities = _majorities(ids, assigned, 3, stored)
    assert [(m.label, m.share) for m in majorities[0]] == [("indoor", 1.0)]
    assert [(m.label, m.share) for m in majorities[1]] == [("outdoor", 1.0)]
    assert majorities[2] == []  # 50/50 is not a majority
    centroids = np.eye(3, 8, dtype=np.float32)
    from clipdex.topics import Vocabulary

    names, named_by, _ = _names(centroids, None, Vocabulary((), "none"), majorities)
    assert names == ["indoor", "outdoor", "topic 3"] and named_by == ["labels", "labels", "number"]
    twice = _names(centroids, None, Vocabulary((), "none"), [majorities[0], majorities[0], []])[0]
    assert twice == ["indoor", "indoor (2)", "topic 3"]  # labels must be unique


def test_set_name_is_checked() -> None:
    check_set_name("topics_2024")
    for bad in ("", "two words", "path", "9lives"):
        with pytest.raises(LabelSetError):
            check_set_name(bad)
