"""`clipdex search` filters (--folder, --after/--before, --label), --exact, and what status says."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.conftest import run_cli


def _paths(output: str) -> list[str]:
    return [r["path"] for r in json.loads(output)["results"]]


def _set_dates(index: str, photos: Path) -> None:
    """trip/ photos taken in 2019, the rest in 2022 (as EXIF would say)."""
    conn = sqlite3.connect(Path(index) / "catalog.sqlite", isolation_level=None)
    conn.execute("UPDATE files SET taken_at = '2022-05-01T10:00:00', taken_source = 'exif'")
    conn.execute("UPDATE files SET taken_at = '2019-08-15T18:30:00' WHERE path LIKE ?", (f"{photos}/trip/%",))
    conn.close()


def test_folder_and_date_filters(cli_index: str, photos: Path, model_args: list[str]) -> None:
    _set_dates(cli_index, photos)
    trip = str(photos / "trip")
    result = run_cli("search", "a photo", "--index", cli_index, *model_args, "--folder", trip, "--json")
    assert result.exit_code == 0, result.output
    found = _paths(result.output)
    assert len(found) == 2 and all(p.startswith(trip + "/") for p in found)

    before = run_cli("search", "a photo", "-n", "20", "--index", cli_index, *model_args, "--before", "2020",
                     "--json")
    assert sorted(_paths(before.output)) == sorted(found)
    after = run_cli("search", "a photo", "-n", "20", "--index", cli_index, *model_args, "--after", "2022-05",
                    "--json")
    assert len(_paths(after.output)) == 10 and not set(_paths(after.output)) & set(found)
    none = run_cli("search", "a photo", "--index", cli_index, *model_args, "--after", "2019-09",
                   "--folder", trip, "--json")
    assert _paths(none.output) == []


def test_label_filter_and_exact(cli_index: str, model_args: list[str]) -> None:
    classify = run_cli("classify", "--name", "taken_space", "--labels", "indoor,outdoor", "--index", cli_index,
                       *model_args)
    assert classify.exit_code == 0, classify.output
    results = {}
    for label in ("indoor", "outdoor"):
        out = run_cli("search", "a photo", "-n", "20", "--index", cli_index, *model_args,
                      "--label", f"taken_space={label}", "--json")
        assert out.exit_code == 0, out.output
        results[label] = set(_paths(out.output))
    assert not results["indoor"] & results["outdoor"]
    assert len(results["indoor"] | results["outdoor"]) == 12
    approximate = run_cli("search", "a photo", "-n", "12", "--index", cli_index, *model_args, "--json")
    exact = run_cli("search", "a photo", "-n", "12", "--index", cli_index, *model_args, "--exact", "--json")
    assert _paths(approximate.output) == _paths(exact.output)


def test_bad_filters_are_one_clear_line(cli_index: str, model_args: list[str], tmp_path: Path) -> None:
    cases = {
        ("--after", "last week"): "is not a date. Write it as 2021, 2021-06",
        ("--after", "2021-02-30"): "day 30 is not in that month",
        ("--folder", str(tmp_path / "elsewhere")): "is not a folder of this index",
        ("--label", "taken_space"): "write it as SET=LABEL",
        ("--label", "taken_space=indoor"): "has not been run",
    }
    for (option, value), message in cases.items():
        result = run_cli("search", "a photo", "--index", cli_index, *model_args, option, value,
                         catch_exceptions=True)
        assert result.exit_code != 0 and message in result.output, (option, value, result.output)
        assert "Traceback" not in result.output


def test_status_says_how_the_index_is_searched(cli_index: str) -> None:
    result = run_cli("status", "--index", cli_index)
    assert result.exit_code == 0, result.output
    assert "search   exact search (fewer than 100,000 photos)" in result.output


def test_a_folder_inside_the_index_without_photos_is_an_error(cli_index: str, photos: Path,
                                                              model_args: list[str]) -> None:
    result = run_cli("search", "a photo", "--index", cli_index, *model_args, "--folder", str(photos / "tirp"),
                     catch_exceptions=True)
    assert result.exit_code == 1 and "holds no indexed photo" in result.output, result.output
