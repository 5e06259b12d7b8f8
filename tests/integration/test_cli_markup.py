"""Text the user controls (folder and file names, queries, labels) is printed as it is.

rich reads "[...]" as markup: a folder named "x[/]y" crashed the summary and
every later `status`, and "[summer] trip" was shown as " trip".
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

from tests.conftest import run_cli as run
from tests.images import write_photos


def test_markup_in_folder_file_and_label_names_is_shown_as_text(tmp_path: Path, model_args: list[str]) -> None:
    root = tmp_path / "[summer] trip"
    hostile = root / "x[/]y"
    write_photos(root, 3)
    write_photos(hostile, 2, start=3)
    odd = hostile / "[bold]:smile:[red].jpg"
    shutil.copy(next(root.glob("*.jpg")), odd)
    idx = str(tmp_path / "idx")

    indexed = run("index", str(root), "--index", idx, *model_args)
    assert indexed.exit_code == 0, indexed.output
    assert str(root) in indexed.output and re.search(r"indexed\s+6", indexed.output)

    status = run("status", "--index", idx)
    assert status.exit_code == 0, status.output
    assert f"folders  {root}" in status.output

    found = run("search", "[/] [summer] trip", "--index", idx, "-n", "6")
    assert found.exit_code == 0, found.output
    assert "[/] [summer] trip" in found.output
    assert str(odd) in found.output and str(hostile) in found.output

    labelled = run("classify", "--name", "place", "--labels", "[/],[red]beach[/red],x[y]", "--index", idx)
    assert labelled.exit_code == 0, labelled.output
    assert "[red]beach[/red]" in labelled.output and "x[y]" in labelled.output

    table = tmp_path / "truth [1].csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "place"])
        for photo in sorted(root.rglob("*.jpg")):
            writer.writerow([str(photo), "[red]beach[/red]"])
    evaluated = run("evaluate", "place", "--metadata", str(table), "--key", "path", "--index", idx)
    assert evaluated.exit_code == 0, evaluated.output
    assert str(table) in evaluated.output and "[red]beach[/red]" in evaluated.output

    grid = tmp_path / "[grid].jpg"
    reviewed = run("review", "place", "--grid", str(grid), "--index", idx)
    assert reviewed.exit_code == 0 and str(grid) in reviewed.output and grid.exists()

    as_json = json.loads(run("search", "trip", "--index", idx, "--json", "-n", "6").output)
    assert str(odd) in [r["path"] for r in as_json["results"]]


def test_a_query_with_markup_shows_as_typed(tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    idx = str(tmp_path / "idx")
    run("index", str(photos), "--index", idx, *model_args)
    for query in ("dog [/]", "[bold]cat", "a\\[x]"):
        result = run("search", query, "--index", idx, "-n", "1")
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0].startswith(query)
