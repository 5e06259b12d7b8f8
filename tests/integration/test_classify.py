"""Zero-shot classification, label files, tables, review grids and evaluation."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipdex import Index
from clipdex import labels as labels_module
from clipdex.classify import build_classifier, classify, mean_direction
from clipdex.cli import main
from clipdex.errors import LabelSetError, ReviewOptionError
from clipdex.evaluate import evaluate
from clipdex.export import KeyMatcher
from clipdex.labels import builtin_templates, load_label_sets, make_label_set
from clipdex.review import draw_review

# The example in clipdex.labels' docstring: the test keeps the documentation true.
SETS_TOML = textwrap.dedent(labels_module.__doc__.split("::\n", 1)[1].split("\nOptional", 1)[0])


@pytest.fixture()
def indexed(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> Path:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
    return tmp_path / "idx"


def test_label_file_expands_synonyms_templates_and_prompts(tmp_path: Path) -> None:
    path = tmp_path / "sets.toml"
    path.write_text(SETS_TOML)
    time_set, space_set = load_label_sets(path)
    assert time_set.label_names == ["dawn", "day", "dusk", "night"]
    dusk = time_set.labels[2].prompts
    assert len(dusk) == 6 and "a photo taken during the twilight" in dusk
    assert len(builtin_templates()["imagenet"]) == 80
    assert space_set.labels[0].prompts == ("a photo taken inside a building",)
    assert len(space_set.labels[1].prompts) == 80


def test_yaml_and_json_label_files(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("pets:\n  labels: [cat, dog]\n  templates: ['a photo of a {}']\n")
    (tmp_path / "s.json").write_text(json.dumps({"pets": {"labels": ["cat", "dog"]}}))
    assert load_label_sets(tmp_path / "s.yaml")[0].labels[1].prompts == ("a photo of a dog",)
    assert load_label_sets(tmp_path / "s.json")[0].label_names == ["cat", "dog"]


@pytest.mark.parametrize("build, words", [
    (lambda: make_label_set("t", ["a", "b"], ["a photo"]), ["label set 't'", "{}"]),
    (lambda: make_label_set("t", ["only"]), ["only one label", "'t'"]),
    (lambda: make_label_set("t", ["a", "b", "a"]), ["'a' appears more than once"]),
    (lambda: make_label_set("t", ["a", "b"], synonyms={"c": ["x"]}), ["label 'c'", "not one of"]),
])
def test_bad_label_sets_name_the_set_the_label_and_the_problem(build, words: list[str]) -> None:
    with pytest.raises(LabelSetError) as info:
        build()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("name, text, words", [
    ("empty.toml", "  \n", ["empty"]),
    ("bad.toml", "[x]\nlabels = [\"a\", \n", ["not valid TOML", "line"]),
    ("bad.json", '{"x": {"labels": ["a", "b"]},\n "y": }', ["line 2"]),
    ("bad.yaml", "x:\n  labels: [a, b\n", ["line"]),
])
def test_bad_label_files_say_where(tmp_path: Path, name: str, text: str, words: list[str]) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(LabelSetError) as info:
        load_label_sets(tmp_path / name)
    for word in words:
        assert word in str(info.value)
    assert name in str(info.value)


def test_ensemble_is_the_mean_of_normalised_prompt_embeddings() -> None:
    rng = np.random.default_rng(0)
    table = {}

    def encode(texts):
        out = []
        for t in texts:
            table.setdefault(t, rng.normal(size=8).astype(np.float32))
            out.append(table[t] / np.linalg.norm(table[t]))
        return np.stack(out)

    label_set = make_label_set("t", ["a", "b"], ["x {}", "y {}", "z {}"])
    classifier = build_classifier(label_set, encode, logit_scale=100.0)
    expected = encode(["x a", "y a", "z a"]).mean(axis=0)
    assert np.allclose(classifier.class_vectors[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert np.allclose(mean_direction(np.eye(2, dtype=np.float32)), [2 ** -0.5, 2 ** -0.5])


def test_probabilities_are_a_softmax_over_the_logit_scale() -> None:
    label_set = make_label_set("t", ["a", "b", "c"])
    classes = np.eye(3, 4, dtype=np.float32)
    from clipdex.classify import Classifier

    vectors = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    result = classify(Classifier(label_set, classes, None, 10.0), vectors, [1, 2, 3], ["p", "q", "r"],
                      min_prob=0.5)
    assert result.probs.shape == (3, 3)
    assert np.allclose(result.probs.sum(axis=1), 1.0)
    logits = 10.0 * vectors @ classes.T
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(result.probs, expected, atol=1e-6)
    assert result.predicted == ["a", "b", "uncertain"]  # the last is a three-way tie
    assert result.top_k(2)[1] == [("b", pytest.approx(expected[1, 1])), ("a", pytest.approx(expected[1, 0]))]


def test_multi_label_judges_each_label_against_the_background() -> None:
    from clipdex.classify import Classifier

    label_set = make_label_set("tags", ["dog", "snow"], multi_label=True, threshold=0.5)
    classes = np.eye(2, 3, dtype=np.float32)
    background = np.array([0, 0, 1], dtype=np.float32)
    vectors = np.array([[0.7, 0.7, 0.14], [0.1, 0, 0.99]], dtype=np.float32)
    result = classify(Classifier(label_set, classes, background, 100.0), vectors, [1, 2], ["p", "q"])
    assert result.predicted == ["dog;snow", ""]
    assert result.counts() == {"dog": 1, "snow": 1, "(none)": 1}


def test_classify_from_stored_vectors_saves_and_exports(indexed: Path, tmp_path: Path) -> None:
    label_set = make_label_set("taken_time", ["dawn", "day", "dusk", "night"], ["a photo taken at {}"])
    with Index.open(indexed) as index:
        (result,) = index.classify([label_set])
        stored = index.classification("taken_time")
        assert index.label_sets() == ["taken_time"]
    assert result.probs.shape == (12, 4) and np.allclose(result.probs.sum(axis=1), 1, atol=1e-5)
    assert stored.paths == result.paths and stored.predicted == result.predicted
    assert np.allclose(stored.probs, result.probs)


def test_metadata_join_keeps_every_row_and_reports_extra_images(indexed: Path, tmp_path: Path,
                                                                photos: Path, model_args) -> None:
    stems = sorted(p.stem for p in photos.rglob("*.jpg"))
    table = tmp_path / "photos.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["photo_id", "note"])
        writer.writerow(["not-a-photo", "x"])
        for stem in stems[:10]:  # two photos have no row
            writer.writerow([stem, "y"])
    out = tmp_path / "joined.csv"
    result = CliRunner().invoke(main, ["classify", "--index", str(indexed), "--name", "taken_space",
                                       "--labels", "indoor,outdoor", "--template", "a photo taken {}",
                                       "--metadata", str(table), "--key", "photo_id",
                                       "--metadata-out", str(out), "--out", str(tmp_path / "p.parquet")])
    assert result.exit_code == 0, result.output
    assert "10 of 11 rows matched" in result.output and "2 photos without a row" in result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["photo_id", "note", "taken_space", "taken_space_prob",
                             "taken_space_prob_indoor", "taken_space_prob_outdoor"]
    assert rows[0]["taken_space"] == "" and rows[1]["taken_space"] in ("indoor", "outdoor")
    probs = float(rows[1]["taken_space_prob_indoor"]) + float(rows[1]["taken_space_prob_outdoor"])
    assert probs == pytest.approx(1.0, abs=1e-5)

    import pyarrow.parquet as pq

    parquet = pq.read_table(tmp_path / "p.parquet")
    assert parquet.num_rows == 12 and parquet.column_names[:3] == ["path", "photo_id", "taken_space"]


def test_key_matcher_by_stem_name_and_path() -> None:
    matcher = KeyMatcher(["/a/x/one.jpg", "/a/y/two.png", "/a/z/two.jpg"])
    assert matcher.match("one") == "/a/x/one.jpg"
    assert matcher.match("one.jpg") == "/a/x/one.jpg"
    assert matcher.match("y/two.png") == "/a/y/two.png"
    assert matcher.match("missing") is None
    with pytest.raises(Exception, match="matches 2 indexed photos"):
        matcher.match("two")


def test_review_grid_is_reproducible(indexed: Path, tmp_path: Path) -> None:
    with Index.open(indexed) as index:
        index.classify([make_label_set("taken_space", ["indoor", "outdoor"])])
    runner = CliRunner()
    for name in ("a.png", "b.png"):
        result = runner.invoke(main, ["review", "taken_space", "--index", str(indexed), "--grid",
                                      str(tmp_path / name), "--per-label", "4", "--seed", "3"])
        assert result.exit_code == 0, result.output
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.size == b.size and a.tobytes() == b.tobytes()
    assert a.height > 2 * 160  # two labels, one row each


def test_evaluation_metrics_on_a_hand_computed_case() -> None:
    truth = ["cat", "cat", "cat", "dog", "dog", "bird"]
    predicted = ["cat", "cat", "dog", "dog", "cat", "cat"]
    result = evaluate(predicted, truth, ["cat", "dog", "bird"])
    assert result.accuracy == pytest.approx(3 / 6)
    # recalls: cat 2/3, dog 1/2, bird 0/1
    assert result.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # precisions: cat 2/4, dog 1/2, bird 0 -> F1: cat 4/7, dog 1/2, bird 0
    assert result.macro_f1 == pytest.approx((4 / 7 + 1 / 2 + 0) / 3)
    assert result.confusion.tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert [c.support for c in result.per_class] == [3, 2, 1]


def test_evaluate_command_against_a_truth_column(indexed: Path, tmp_path: Path) -> None:
    with Index.open(indexed) as index:
        (result,) = index.classify([make_label_set("taken_space", ["indoor", "outdoor"])])
    table = tmp_path / "truth.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["photo_id", "space"])
        for i, path in enumerate(result.paths):
            writer.writerow([Path(path).stem, result.predicted[i] if i % 2 else ""])
    out = CliRunner().invoke(main, ["evaluate", "taken_space", "--index", str(indexed), "--metadata",
                                    str(table), "--key", "photo_id", "--truth", "space", "--json",
                                    "--heatmap", str(tmp_path / "cm.png")])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.output)
    assert metrics["count"] == 6 and metrics["accuracy"] == 1.0
    assert Image.open(tmp_path / "cm.png").format == "PNG"


def test_classify_errors(indexed: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["classify", "--index", str(indexed), "--name", "t", "--labels", "a,b",
                               "--template", "no placeholder"])
    assert bad.exit_code == 1 and "{}" in bad.output
    missing = runner.invoke(main, ["review", "nothing", "--index", str(indexed), "--grid", "x.png"])
    assert missing.exit_code == 1 and "clipdex classify" in missing.output


def test_a_bad_label_file_fails_before_any_index_or_model_is_touched(tmp_path: Path) -> None:
    sets = tmp_path / "sets.yaml"
    sets.write_text("answer:\n  labels: [yes, no]\n  min_prob: 7\n")
    result = CliRunner().invoke(main, ["classify", "--index", str(tmp_path / "no-index"), "--labels-file",
                                       str(sets)])
    assert result.exit_code == 1
    assert "sets.yaml line 3, label set 'answer': min_prob 7 is not a probability" in result.output
    assert not (tmp_path / "no-index").exists()


def test_yaml_yes_no_labels_classify_as_the_words(indexed: Path, tmp_path: Path) -> None:
    sets = tmp_path / "sets.yaml"
    sets.write_text("answer:\n  labels: [yes, no]\n  templates: ['{}']\n")
    with Index.open(indexed) as index:
        (result,) = index.classify(load_label_sets(sets))
    assert result.labels == ["yes", "no"] and set(result.predicted) <= {"yes", "no"}


def test_join_keeps_a_truth_column_named_like_the_set_and_evaluate_reads_it(
        indexed: Path, tmp_path: Path, photos: Path) -> None:
    stems = sorted(p.stem for p in photos.rglob("*.jpg"))
    table = tmp_path / "photos.csv"
    truth = ["indoor", "Outdoor ", "sunset", ""]
    with open(table, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(["photo_id", "taken_space", "note"])
        for i, stem in enumerate(stems):
            writer.writerow([stem, truth[i % 4], "ä"])
    runner = CliRunner()
    out = tmp_path / "joined.csv"
    joined = runner.invoke(main, ["classify", "--index", str(indexed), "--name", "taken_space", "--labels",
                                  "indoor,outdoor", "--metadata", str(table), "--key", "photo_id",
                                  "--metadata-out", str(out)])
    assert joined.exit_code == 0, joined.output
    assert out.read_bytes().startswith(b"\xef\xbb\xbfphoto_id;taken_space;note;taken_space_pred;")
    with open(out, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter=";"))
    assert [r[1] for r in rows[1:]] == [truth[i % 4] for i in range(len(stems))]  # the truth, untouched
    assert {r[3] for r in rows[1:]} <= {"indoor", "outdoor"}
    with Index.open(indexed) as index:
        evaluation, matched = index.evaluate("taken_space", out, "photo_id")
    assert evaluation.excluded == {"sunset": 3}
    assert evaluation.count == 6  # 3 indoor + 3 "Outdoor " (case and spaces ignored)
    assert matched >= evaluation.count
    metrics = runner.invoke(main, ["evaluate", "taken_space", "--index", str(indexed), "--metadata", str(out),
                                   "--key", "photo_id", "--json"])
    assert metrics.exit_code == 0, metrics.output
    assert json.loads(metrics.output)["excluded"] == {"sunset": 3}


def test_a_truth_column_of_another_set_is_an_error_naming_values_and_labels(indexed: Path,
                                                                           tmp_path: Path) -> None:
    with Index.open(indexed) as index:
        (result,) = index.classify([make_label_set("taken_space", ["indoor", "outdoor"])])
    table = tmp_path / "t.csv"
    table.write_text("photo_id,taken_space\n" + "".join(f"{Path(p).stem},night\n" for p in result.paths))
    out = CliRunner().invoke(main, ["evaluate", "taken_space", "--index", str(indexed), "--metadata",
                                    str(table), "--key", "photo_id"])
    assert out.exit_code == 1
    assert "'night' (12)" in out.output and "indoor, outdoor" in out.output


def test_review_with_a_huge_per_label_is_refused_and_a_large_one_stays_small(indexed: Path,
                                                                            tmp_path: Path) -> None:
    with Index.open(indexed) as index:
        index.classify([make_label_set("taken_space", ["indoor", "outdoor"])])
    runner = CliRunner()
    huge = runner.invoke(main, ["review", "taken_space", "--index", str(indexed), "--grid",
                                str(tmp_path / "huge.png"), "--per-label", "100000"])
    assert huge.exit_code != 0 and "per-label" in huge.output.replace("per_label", "per-label")
    assert not (tmp_path / "huge.png").exists()
    with Index.open(indexed) as index:
        result = index.classification("taken_space")
    with pytest.raises(ReviewOptionError, match="per_label 100000 is not between 1 and 500"):
        draw_review(result, tmp_path / "huge.png", per_label=100_000)
    assert not (tmp_path / "huge.png").exists()
    large = runner.invoke(main, ["review", "taken_space", "--index", str(indexed), "--grid",
                                 str(tmp_path / "large.png"), "--per-label", "500"])
    assert large.exit_code == 0, large.output
    assert Image.open(tmp_path / "large.png").width <= 8 + 12 * 168  # at most the 12 photos, not 500


def test_classify_min_prob_outside_zero_one_is_refused(indexed: Path) -> None:
    out = CliRunner().invoke(main, ["classify", "--index", str(indexed), "--name", "t", "--labels", "a,b",
                                    "--min-prob", "7"])
    assert out.exit_code != 0 and "min-prob" in out.output.replace("min_prob", "min-prob")
    threshold = CliRunner().invoke(main, ["classify", "--index", str(indexed), "--name", "t", "--labels",
                                          "a,b", "--multi-label", "--threshold", "7"])
    assert threshold.exit_code != 0 and "threshold" in threshold.output
    edge = CliRunner().invoke(main, ["classify", "--index", str(indexed), "--name", "t", "--labels",
                                     "a,b", "--multi-label", "--threshold", "1"])
    assert edge.exit_code == 1 and "threshold 1.0 is not a probability between 0 and 1 (exclusive)" in edge.output
    with Index.open(indexed) as index, pytest.raises(LabelSetError, match="min_prob 7"):
        index.classify([make_label_set("t", ["a", "b"])], min_prob=7)
