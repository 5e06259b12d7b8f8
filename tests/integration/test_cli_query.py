"""Queries on the command line: words that start with '-', weights, paging through copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clipdex.cli import _query_after_separator, main, search_cmd
from tests.conftest import run_cli as run


@pytest.fixture()
def idx(cli_index: str) -> str:
    return cli_index


@pytest.mark.parametrize("args, expected", [
    (["-people + beach", "--index", "i"], ["--index", "i", "--", "-people + beach"]),
    (["beach", "-people", "-n", "3"], ["-n", "3", "--", "beach", "-people"]),
    (["--", "-people", "beach"], ["--", "-people", "beach"]),
    (["--limit=3", "-hat", "--json"], ["--limit=3", "--json", "--", "-hat"]),
    (["-n", "-5", "dog"], ["-n", "-5", "--", "dog"]),  # an option's value stays its value
    (["dog", "-", "cat"], ["--", "dog", "-", "cat"]),
    (["-mountains"], ["--", "-mountains"]),  # not "-m ountains"
    (["--json", "dog", "--", "--json"], ["--json", "--", "dog", "--json"]),
    (["--help"], ["--help"]),
    (["-n2", "dog"], ["-n", "2", "--", "dog"]),  # a number glued to -n is its value
    (["dog", "-n20"], ["-n", "20", "--", "dog"]),
    (["-n0", "dog"], ["-n", "0", "--", "dog"]),  # still the option: click says 0 is out of range
    (["-n", "2", "dog"], ["-n", "2", "--", "dog"]),
    (["--limit=2", "dog"], ["--limit=2", "--", "dog"]),
    (["--limit", "2", "dog"], ["--limit", "2", "--", "dog"]),
    (["-nature", "dog"], ["--", "-nature", "dog"]),  # text glued to -n is a word
    (["-mViT-B-32", "dog"], ["--", "-mViT-B-32", "dog"]),  # -m never takes a glued value
    (["-happy", "dog"], ["--", "-happy", "dog"]),  # -h is a flag: never combined with text
    (["-people"], ["--", "-people"]),
    (["--nothing=1", "dog"], ["--", "--nothing=1", "dog"]),
])
def test_words_that_are_not_options_go_to_the_query(args: list[str], expected: list[str]) -> None:
    ctx = click.Context(search_cmd)
    assert _query_after_separator(search_cmd.get_params(ctx), args) == expected


def test_queries_that_start_with_minus_search_and_pages_join(idx: str) -> None:
    rankings = []
    for args in (["-people + beach"], ["beach", "-people"], ["-people", "beach"],
                 ["--", "-people", "beach"], ["--", "-people + beach"], ["--", "beach -people"]):
        result = run("search", "--index", idx, "--json", "-n", "4", *args)
        assert result.exit_code == 0, (args, result.output)
        data = json.loads(result.output)
        assert data["count"] == 4
        rankings.append([r["path"] for r in data["results"]])
    assert all(r == rankings[0] for r in rankings)  # the same query, however it was written

    whole = json.loads(run("search", "sunset", "--index", idx, "--json", "-n", "12").output)["results"]
    pages = []
    for offset in range(0, 12, 5):
        page = json.loads(run("search", "sunset", "--index", idx, "--json", "-n", "5",
                              "--offset", str(offset)).output)
        assert page["offset"] == offset
        pages += page["results"]
    assert pages == whole  # CLI pages join up


def test_help_still_works_and_documents_the_separator() -> None:
    result = run("search", "--help")
    assert result.exit_code == 0
    assert "clipdex search -- -people beach" in result.output and "-people + beach" in result.output


def test_huge_weights_negative_offset_and_bad_limits_are_refused(idx: str) -> None:
    for query in ("1e20*dog", "dog + 1000*cat", "100000000000000000000*dog"):
        result = run("search", query, "--index", idx)
        assert result.exit_code == 1, result.output
        assert "error:" in result.output and "weights go up to 100" in result.output
    for args, option in ((["--offset", "-1"], "--offset"), (["-n", "0"], "-n"), (["-n", "-3"], "-n"),
                         (["-n", "10001"], "-n")):
        result = run("search", "dog", "--index", idx, *args)
        assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output


def test_paging_through_copies_gives_every_photo_once(tmp_path: Path, photos: Path,
                                                      model_kwargs: dict[str, str]) -> None:
    """Four copies of each photo tie exactly; pages of 3 must neither repeat nor skip one."""
    from clipdex import Index

    for copy in range(1, 4):
        folder = photos / f"copy{copy}"
        folder.mkdir()
        for original in photos.glob("*.jpg"):
            shutil.copy(original, folder / original.name)
    with Index.open(tmp_path / "copies", create=True, **model_kwargs) as index:
        index.add(photos)
        total = index.status().indexed
        assert total == 4 * 10 + 2
        everything = index.search("a photo", k=total)
        paged = [hit for offset in range(0, total, 3) for hit in index.search("a photo", k=3, offset=offset)]
    assert [h.path for h in paged] == [h.path for h in everything]
    assert len({h.path for h in paged}) == total
    assert [h.rank for h in paged] == list(range(1, total + 1))
    # copies score the same, and equal scores come in path order
    for a, b in zip(everything, everything[1:]):
        assert a.score > b.score or (a.score == b.score and a.path < b.path)
    by_score: dict[float, list[str]] = {}
    for hit in everything:
        by_score.setdefault(hit.score, []).append(hit.path)
    assert max(len(paths) for paths in by_score.values()) >= 4


@pytest.mark.parametrize("args", [["dog", "-n"], ["-n"], ["dog", "--limit"], ["dog", "-n", "--", "cat"],
                                  ["dog", "--index"]])
def test_an_option_without_its_value_fails_as_click_fails_it(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["search", *args])
    assert result.exit_code == 2, result.output
    option = next(a for a in args if a.startswith("-") and a != "--")
    assert f"Option '{option}' requires an argument." in result.output
    assert "is not a valid integer" not in result.output


def test_every_way_of_writing_the_limit_limits(idx: str) -> None:
    expected = [r["path"] for r in json.loads(run("search", "dog", "--index", idx, "--json", "-n", "2")
                                              .output)["results"]]
    assert len(expected) == 2
    for args in (["-n2", "dog"], ["dog", "-n2"], ["-n", "2", "dog"], ["--limit=2", "dog"],
                 ["--limit", "2", "dog"], ["dog", "--limit", "2"]):
        result = run("search", "--index", idx, "--json", *args)
        assert result.exit_code == 0, (args, result.output)
        data = json.loads(result.output)
        assert data["query"] == "dog", args  # nothing of the option leaked into the query
        assert [r["path"] for r in data["results"]] == expected, args
    text = run("search", "-n2", "dog", "--index", idx)
    assert text.exit_code == 0 and text.output.splitlines()[0] == "dog  (2 results)"
    for args, query in ((["-mountains", "dog"], "-mountains dog"), (["dog", "-people"], "dog -people")):
        data = json.loads(run("search", "--index", idx, "--json", *args).output)
        assert data["query"] == query and data["count"] == 10


def test_help_states_when_a_glued_value_counts() -> None:
    text = " ".join(run("search", "--help").output.split())
    assert "-n5" in text and '"-mountains" is a query word' in text


def test_a_name_that_is_not_utf8_works_in_an_image_term_as_clipdex_shows_it(
        tmp_path: Path, model_args: list[str]) -> None:
    import io
    import os

    from tests.images import photo

    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, raw in enumerate((b"caf\xe9.jpg", b"plain.jpg", b"other.jpg")):
        buffer = io.BytesIO()
        photo(seed, 96, 64).save(buffer, "JPEG")
        with open(os.fsencode(str(folder)) + b"/" + raw, "wb") as f:
            f.write(buffer.getvalue())
    index = str(tmp_path / "idx")
    assert run("index", str(folder), "--index", index, *model_args).exit_code == 0
    listed = json.loads(run("search", "a photo", "--index", index, "--json").output)["results"]
    shown = next(r["path"] for r in listed if r["path"].endswith(".jpg") and "\\x" in r["path"])
    assert shown == f"{folder}/caf\\xe9.jpg"  # the display form: a backslash, x, e, 9
    for term in ("@caf\\xe9.jpg", "@caf\\xe9", f"@{shown}", f'"@{shown}"'):
        for args in ([term], [term, "+", "snow"]):
            result = run("search", *args, "--index", index, "--json", "-n", "1")
            assert result.exit_code == 0, (args, result.output)
            data = json.loads(result.output)
            if len(args) == 1:  # the photo itself is its own best match
                assert data["results"][0]["path"] == shown, args
            assert "caf\\xe9" in data["query"], args  # not "cafxe9": the backslash survived
