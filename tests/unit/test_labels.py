"""Label files and label sets: every mistake is one LabelSetError naming the file, set, line and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipdex.errors import LabelSetError
from clipdex.labels import check_min_prob, load_label_sets, make_label_set


def load(tmp_path: Path, name: str, text: str) -> list:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_label_sets(path)


def error(tmp_path: Path, name: str, text: str) -> str:
    with pytest.raises(LabelSetError) as info:
        load(tmp_path, name, text)
    message = str(info.value)
    assert name in message  # every error names the file
    return message


def test_a_background_string_is_one_prompt_not_one_per_character(tmp_path: Path) -> None:
    (tags,) = load(tmp_path, "s.toml", '[tags]\nlabels = ["dog", "snow"]\nmulti_label = true\n'
                                       'background = "a photo of nothing in particular"\n')
    assert tags.background == ("a photo of nothing in particular",)
    (tags,) = load(tmp_path, "s.yaml", "tags:\n  labels: [dog, snow]\n  multi_label: true\n"
                                       "  background: [a photo, an image]\n")
    assert tags.background == ("a photo", "an image")
    assert make_label_set("t", ["a"], multi_label=True, background="a b c").background == ("a b c",)


@pytest.mark.parametrize("labels", [
    ["yes", "no"], ["on", "off"], ["1.0", "2"], ["null", "~"], ["true", "false"], ["2020-01-01", "0x10"],
])
def test_yaml_plain_scalars_stay_the_text_written(tmp_path: Path, labels: list[str]) -> None:
    text = f"answer:\n  labels: [{', '.join(labels)}]\n  templates: ['{{}}']\n" \
           f"  synonyms:\n    {labels[0]}: [{labels[1]} or {labels[0]}]\n"
    (answer,) = load(tmp_path, "s.yaml", text)
    assert answer.label_names == labels
    assert answer.labels[0].prompts == (f"{labels[1]} or {labels[0]}",)


def test_yaml_settings_still_read_booleans_and_numbers(tmp_path: Path) -> None:
    (tags, time) = load(tmp_path, "s.yaml", "tags:\n  labels: [dog, snow]\n  multi_label: yes\n"
                                            "  threshold: 0.3\ntime:\n  labels: [day, night]\n  min_prob: .4\n")
    assert tags.multi_label is True and tags.threshold == 0.3
    assert time.min_prob == 0.4


@pytest.mark.parametrize("name, text, words", [
    ("p.toml", '[t]\nlabels = ["a", "b"]\nmin_prob = 7\n', ["line 3", "'t'", "min_prob 7", "between 0 and 1"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nmin_prob = -0.1\n', ["line 3", "min_prob"]),
    ("p.yaml", "t:\n  labels: [a, b]\n  multi_label: true\n  threshold: 7\n", ["line 4", "threshold 7"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nmulti_label = true\nthreshold = 1\n', ["threshold 1"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nmin_prob = "0.5"\n', ["min_prob '0.5' is not a number"]),
    ("p.yaml", "t:\n  labels: [a, b]\n  min_prob: '0.5'\n", ["min_prob '0.5' is not a number"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nmin_prob = true\n', ["min_prob True is not a number"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nmulti_label = "yes"\n', ["line 3", "multi_label 'yes'", "true"]),
    ("p.json", '{"t": {"labels": ["a", "b"],\n"multi_label": 1}}', ["line 2", "multi_label 1"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nmulti_label = true\nbackground = 3\n',
     ["line 4", "background must be a string or a list"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nmulti_label = true\nbackground = []\n', ["background is empty"]),
    ("p.toml", '[t]\nlabels = "a,b"\n', ["labels is one string", '["a", "b"]']),
    ("p.toml", '[t]\nlabels = 3\n', ["labels must be a list"]),
    ("p.toml", '[t]\nlabels = []\n', ["line 2", "labels is empty"]),
    ("p.toml", '[t]\ntemplates = ["{}"]\n', ["has no labels", "labels = ["]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\ntemplates = 5\n', ["line 3", "templates must be"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\ntemplates = ["a photo"]\n', ["'a photo' has no {}", "imagenet"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\ntemplates = []\n', ["templates is empty"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\n\n\ntreshold = 0.3\n', ["line 5", "unknown key 'treshold'",
                                                                   "Did you mean 'threshold'?"]),
    ("p.yaml", "t:\n  lables: [a, b]\n", ["line 2", "unknown key 'lables'", "Did you mean 'labels'?"]),
    ("p.toml", '[t]\nlabels = ["a", "b", "a"]\n', ["'a' appears more than once"]),
    ("p.toml", '[t]\nlabels = ["Day", "day "]\n', ["'Day' and 'day' differ only in case"]),
    ("p.toml", '[t]\nlabels = ["a", ""]\n', ["a label is empty"]),
    ("p.toml", '[t]\nlabels = [1, 2]\n', ["label 1 is a number", 'Quote it: "1"']),
    ("p.json", '{"t": {"labels": ["a", null]}}', ["label None is empty (null)"]),
    ("p.toml", '[t]\nlabels = ["a;b", "c"]\n', ["';'"]),
    ("p.toml", '[t]\nlabels = ["uncertain", "sure"]\n', ["'uncertain' is reserved"]),
    ("p.toml", '[t]\nlabels = ["a"]\n', ["only one label"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nthreshold = 0.3\n', ["threshold applies only to multi-label"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nmulti_label = true\nmin_prob = 0.3\n', ["min_prob applies only"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\n[t.synonyms]\nc = ["x"]\n', ["line 3", "label 'c' in synonyms"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nsynonyms = { a = 3 }\n', ["synonyms of 'a'"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\nprompts = ["x"]\n', ["prompts must be a table"]),
    ("p.toml", '[t]\nlabels = { a = "x", b = "y" }\nsynonyms = { a = "z" }\n', ["both in labels"]),
    ("p.toml", '[path]\nlabels = ["a", "b"]\n', ["'path' is a column"]),
    ("p.toml", '["bad name"]\nlabels = ["a", "b"]\n', ["not usable as a column name"]),
    ("p.toml", 't = 3\n', ["'t'", "is a number, not a table"]),
    ("p.yaml", "t:\n  labels: [a, b]\n  labels: [c, d]\n", ["line 3", "'labels' appears twice"]),
    ("p.json", '{"t": {"labels": ["a", "b"]},\n "t": {"labels": ["c", "d"]}}', ["line 2", "'t' appears twice"]),
    ("p.toml", '[t]\nlabels = ["a", "b"]\n[t]\nlabels = ["c", "d"]\n', ["not valid TOML", "line 3"]),
])
def test_label_file_mistakes_are_named_with_file_set_line_and_fix(tmp_path: Path, name: str, text: str,
                                                                   words: list[str]) -> None:
    message = error(tmp_path, name, text)
    for word in words:
        assert word in message
    assert message.rstrip().endswith((".", ")")) and ". " in message  # a fix follows the problem


def test_the_line_points_into_the_right_set(tmp_path: Path) -> None:
    text = '[one]\nlabels = ["a", "b"]\n\n[two]\nlabels = ["a", "b"]\nmin_prob = 2\n'
    assert "line 6, label set 'two'" in error(tmp_path, "p.toml", text)
    yaml_text = "one:\n  labels: [a, b]\ntwo:\n  labels: [a, b]\n  min_prob: 2\n"
    assert "line 5, label set 'two'" in error(tmp_path, "p.yaml", yaml_text)
    json_text = json.dumps({"one": {"labels": ["a", "b"]}, "two": {"labels": ["a", "b"], "min_prob": 2}},
                           indent=1)
    line = json_text.splitlines().index('  "min_prob": 2') + 1
    assert f"line {line}, label set 'two'" in error(tmp_path, "p.json", json_text)


def test_every_set_is_checked_even_when_only_one_is_used(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[good]\nlabels = ["a", "b"]\n[bad]\nlabels = ["a", "b"]\nmin_prob = 5\n')
    with pytest.raises(LabelSetError, match="'bad'"):
        load_label_sets(path, only=["good"])


def test_a_utf8_bom_and_synonym_tables_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[t]\nlabels = { dusk = ["dusk", "sunset"], day = "" }\n')
    (t,) = load_label_sets(path)
    assert t.label_names == ["dusk", "day"]
    assert t.labels[0].prompts == ("a photo of dusk.", "a photo of sunset.")
    assert t.labels[1].prompts == ("a photo of day.",)


@pytest.mark.parametrize("kwargs, words", [
    ({"threshold": 7, "multi_label": True}, ["threshold 7", "between 0 and 1"]),
    ({"threshold": 0.0, "multi_label": True}, ["threshold 0.0"]),
    ({"min_prob": 7}, ["min_prob 7"]),
    ({"min_prob": float("nan")}, ["min_prob nan"]),
    ({"multi_label": "yes"}, ["multi_label 'yes'"]),
    ({"background": [""], "multi_label": True}, ["background has an empty entry"]),
    ({"templates": "photo of"}, ["'photo of' has no {}"]),
])
def test_make_label_set_checks_what_the_cli_passes(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(LabelSetError) as info:
        make_label_set("t", ["a", "b"], **kwargs)
    for word in words:
        assert word in str(info.value)
    assert "label set 't'" in str(info.value)


def test_min_prob_from_the_command_line() -> None:
    assert check_min_prob(None) is None and check_min_prob(0) == 0.0 and check_min_prob(1) == 1.0
    with pytest.raises(LabelSetError, match="--min-prob: min_prob 7 is not a probability"):
        check_min_prob(7)
