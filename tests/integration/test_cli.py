"""The command line, in-process through click's CliRunner (and a few real subprocesses)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from clipdex.cli import main
from tests.conftest import run_cli as run

README = Path(__file__).resolve().parents[2] / "README.md"


def test_index_search_status_round_trip(tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    idx = str(tmp_path / "idx")
    result = run("index", str(photos), "--index", idx, *model_args)
    assert result.exit_code == 0, result.output
    assert re.search(r"new\s+12", result.output) and "img/s" in result.output

    again = run("index", str(photos), "--index", idx, *model_args)
    assert re.search(r"unchanged\s+12", again.output) and re.search(r"new\s+0", again.output)

    table = run("search", "dog in the snow", "--index", idx, "-n", "3")  # the index's own model
    assert table.exit_code == 0, table.output
    assert table.output.count(str(photos)) == 3

    as_json = json.loads(run("search", "dog in the snow", "--index", idx, "-n", "3", "--json").output)
    assert as_json["query"] == "dog in the snow" and as_json["offset"] == 0 and as_json["count"] == 3
    assert [r["rank"] for r in as_json["results"]] == [1, 2, 3]
    assert all(-1 <= r["score"] <= 1 for r in as_json["results"])

    rows = list(csv.DictReader(io.StringIO(run("search", "music", "--index", idx, "--csv").output)))
    assert len(rows) == 10 and list(rows[0]) == ["rank", "score", "id", "path", "t"]
    assert all(int(r["id"]) > 0 for r in rows)

    status = run("status", "--index", idx)
    assert "12 indexed, 0 failed" in status.output and "clipdex-tiny" in status.output


def test_search_grid_writes_a_contact_sheet(tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    idx = str(tmp_path / "idx")
    run("index", str(photos), "--index", idx, *model_args)
    grid = tmp_path / "grid.jpg"
    result = run("search", "listen to music", "--index", idx, "-n", "6", "--grid", str(grid))
    assert result.exit_code == 0, result.output
    with Image.open(grid) as sheet:
        assert sheet.width > 3 * 224 and sheet.height > 2 * 224


def test_example_image_and_negative_terms(tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    idx = str(tmp_path / "idx")
    run("index", str(photos), "--index", idx, *model_args)
    example = sorted(photos.glob("*.jpg"))[0]
    hits = json.loads(run("search", "--image", str(example), "--index", idx, "--json", "-n", "1").output)
    assert hits["results"][0]["path"] == str(example)
    mixed = run("search", f"@{example.stem} + beach -people", "--index", idx, "--json")
    assert mixed.exit_code == 0 and json.loads(mixed.output)["count"] == 10


def test_errors_are_one_clear_line_and_exit_1(tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    missing = run("index", str(tmp_path / "nope"), "--index", str(tmp_path / "idx"), *model_args)
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert not (tmp_path / "idx").exists()

    unknown = run("index", str(photos), "--index", str(tmp_path / "idx"), "--model", "ViT-Q-99")
    assert unknown.exit_code == 1 and "clipdex models list" in unknown.output

    no_index = run("search", "dog", "--index", str(tmp_path / "none"))
    assert no_index.exit_code == 1 and "clipdex index PHOTO_DIR" in no_index.output

    run("index", str(photos), "--index", str(tmp_path / "idx"), *model_args)
    bad_query = run("search", "dog -", "--index", str(tmp_path / "idx"))
    assert bad_query.exit_code == 1 and "query" in bad_query.output


def test_missing_weights_fail_fast_and_say_how_to_supply_them(tmp_path: Path, photos: Path) -> None:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "clipdex", "index", str(photos), "--index",
                           str(tmp_path / "idx")], env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    message = proc.stderr
    assert "ViT-B-32" in message and str(tmp_path / "hf") in message
    assert "--weights FILE" in message and "hf download" in message
    assert elapsed < 30  # open_clip + torch import dominate; no hub retries
    assert not (tmp_path / "idx").exists()


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from click.testing import CliRunner; from clipdex.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "print('torch' in sys.modules, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_commands_in_modules_of_their_own_load_when_named() -> None:
    listing = run("--help")
    assert listing.exit_code == 0, listing.output
    for name, summary in (("export", "Write the index's vectors"), ("import", "Adopt the embeddings in DIR"),
                          ("compact", "Give back the disk space")):
        assert re.search(rf"^\s+{name}\s+{re.escape(summary)}", listing.output, re.MULTILINE), listing.output
    helped = run("import", "--help")
    assert helped.exit_code == 0 and "import [OPTIONS] DIR" in helped.output, helped.output
    assert run("nope").exit_code == 2  # an unknown name is still click's usage error


def test_command_modules_import_first_in_a_fresh_process() -> None:
    code = ("import sys; import clipdex.cli; lazy = 'clipdex.cli_interchange' in sys.modules; "
            "import clipdex.cli_interchange, clipdex.cli_compact; "
            "print(lazy, [c.name for c in clipdex.cli_interchange.COMMANDS + clipdex.cli_compact.COMMANDS])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "False ['export', 'import', 'compact']"
    for module in ("clipdex.cli_interchange", "clipdex.cli_compact"):  # before clipdex.cli: no import cycle
        alone = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        assert alone.returncode == 0, alone.stderr


def test_models_list_shows_the_registry() -> None:
    result = run("models", "list", "--json")
    rows = json.loads(result.output)
    default = [r for r in rows if r["default"]]
    assert default[0]["name"] == "ViT-B-32" and default[0]["pretrained"] == "openai"


def _commands(group: object, prefix: str = "") -> list[str]:
    """Every command's full name, the ones loaded on demand too (as `clipdex --help` lists them)."""
    import click

    assert isinstance(group, click.Group)
    ctx = click.Context(group)
    names = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            names += _commands(command, full + " ")
        else:
            names.append(full)
    return names


def test_every_command_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [c for c in _commands(main) if f"clipdex {c}" not in text]
    assert not missing, f"README lacks: {missing}"


def test_indexing_an_emptied_folder_says_why_every_photo_left(tmp_path: Path, photos: Path,
                                                              model_args: list[str]) -> None:
    import shutil

    idx = str(tmp_path / "idx")
    first = run("index", str(photos), "--index", idx, *model_args)
    assert first.exit_code == 0, first.output
    total = sum(1 for p in photos.rglob("*.jpg"))
    kept = tmp_path / "unmounted"
    shutil.move(str(photos), kept)  # the disk went away; its mount point stays, empty
    photos.mkdir()
    emptied = run("index", str(photos), "--index", idx, *model_args)
    assert emptied.exit_code == 0, emptied.output
    line = next(ln for ln in emptied.output.splitlines() if ln.strip().startswith("removed"))
    assert line.split()[1] == str(total)
    text = " ".join(emptied.output.split())
    assert "the folder is empty now, so all its photos left the index" in text
    assert "mount it and index again: nothing will be encoded again" in text
    photos.rmdir()
    shutil.move(str(kept), photos)
    back = run("index", str(photos), "--index", idx, *model_args, "--json")
    report = json.loads(back.output)
    assert back.exit_code == 0 and report["encoded"] == 0  # as the summary promised
    assert report["indexed_total"] == total
    again = run("index", str(photos), "--index", idx, *model_args)
    assert "left the index" not in again.output  # nothing removed, no note


def test_progress_bar_forgives_calls_out_of_order() -> None:
    from clipdex.cli import _Bar

    bar = _Bar("importing", "rows")
    bar.advance(5)  # before start: nothing to advance, no error
    bar.stop()  # never started: nothing to stop
    bar.start(10)
    bar.start(10)  # a second start adds no second bar
    assert len(bar.progress.tasks) == 1
    bar.advance(4)
    assert bar.progress.tasks[0].completed == 4
    bar.stop()
    assert bar.task is None and not bar.progress.tasks
    bar.advance(1)  # after stop: nothing
    bar(3, 6)  # (done, total) starts it again, fresh
    assert [(t.completed, t.total) for t in bar.progress.tasks] == [(3, 6)]
    bar.stop()
    bar.stop()
