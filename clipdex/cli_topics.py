"""clipdex's topics command (imported by clipdex.cli's main group when named, see its LAZY_COMMANDS):
``clipdex topics`` clusters the stored vectors into named topics (see :mod:`clipdex.topics`)."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from typing import TYPE_CHECKING

import click

from clipdex.cli import _Bar, _check_output, _console, _t, index_option, model_choice

if TYPE_CHECKING:
    from clipdex.topics import TopicsResult

GRID_PER_TOPIC = 8  # photos a topic's row of the overview sheet shows
MAX_GRID_PER_TOPIC = 100
GRID_THUMB_PX = 160
CSV_COLUMNS = ("number", "name", "named_by", "photos", "share", "second_name", "second_score", "candidates",
               "majority_labels", "typical_ids", "typical_paths")


@click.command("topics")
@click.option("-k", "--topics", "k", type=click.IntRange(2, 1000),
              help="How many topics [default: chosen by the best silhouette over a range that grows with "
                   "the collection, e.g. 8..32 for 1,000 photos].")
@click.option("--name", default="topics", show_default=True,
              help="Label set the topics are stored as (replaces an earlier topics set of that name).")
@click.option("--labels", "label_files", multiple=True, type=click.Path(dir_okay=False),
              help="Your own names for topics (repeatable): a label file (TOML, YAML, JSON; its labels with "
                   "their prompts) or a text file with one name a line. They join the built-in vocabulary.")
@click.option("--no-builtin", is_flag=True, help="Name topics only with --labels, not the built-in vocabulary.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed (same seed, same index: same topics).")
@click.option("--no-save", is_flag=True, help="Show the topics without storing them as a label set.")
@click.option("--grid", "grid_dir", type=click.Path(file_okay=False),
              help="Folder for contact sheets: topics.jpg (a row of typical photos per topic) and "
                   "topic-NN-NAME.jpg per topic.")
@click.option("--per-topic", type=click.IntRange(1, MAX_GRID_PER_TOPIC), default=GRID_PER_TOPIC, show_default=True,
              help="--grid: photos per topic in topics.jpg.")
@index_option
@model_choice
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"set", "model", "photos", "k": {"k", "method", "range", "silhouette"}, '
                   '"vocabulary", "naming_note", "topics": [{"number", "name", "named_by", "size", "typical", '
                   '"candidates", "majorities"}], ...}.')
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: one row per topic (" + ", ".join(CSV_COLUMNS) + ").")
def topics_cmd(k: int | None, name: str, label_files: tuple[str, ...], no_builtin: bool, seed: int,
               no_save: bool, grid_dir: str | None, per_topic: int, index_dir: str | None, model: str | None,
               weights: str | None, model_config: str | None, as_json: bool, as_csv: bool) -> None:
    """Find what the collection holds: cluster the stored vectors into topics and name them.

    \b
    clipdex topics                      k chosen automatically, stored as label set "topics"
    clipdex topics -k 12 --grid sheets/ 12 topics, a contact sheet per topic
    clipdex topics --labels mine.txt    your names compete with the built-in vocabulary

    No image is decoded. Names come from ~2,000 everyday objects, scenes and activities (and
    your --labels), encoded once per model and cached in the index; without the model's text
    encoder (imported vectors, no weights here) topics are numbered or named by your label
    sets' majority labels. The topics are a label set: `clipdex search --label topics=NAME`,
    `clipdex review topics --grid sheet.jpg`, `clipdex export`, and /topics in `clipdex serve`.
    """
    from clipdex.index import Index
    from clipdex.topics import check_set_name, find_topics, make_vocabulary

    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    if no_builtin and not label_files:
        raise click.UsageError("--no-builtin needs --labels FILE (the names to use instead)")
    check_set_name(name)
    make_vocabulary(label_files, builtin=False)  # the user's files are checked before any work
    if grid_dir:
        _check_grid_dir(grid_dir)
    quiet = as_json or as_csv
    choosing, encoding = _Bar("choosing k", "fits"), _Bar("naming", "prompts")
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config) as index:
        try:
            result = find_topics(index, k=k, name=name, seed=seed, label_files=label_files,
                                 builtin=not no_builtin, save=not no_save,
                                 progress=None if quiet else choosing, name_progress=None if quiet else encoding)
        finally:
            choosing.stop()
            encoding.stop()
    sheets = _draw_sheets(result, grid_dir, per_topic) if grid_dir else []
    if as_json:
        click.echo(json.dumps(dict(result.to_dict(), grids=sheets), indent=2))
        return
    if as_csv:
        _write_csv(result)
        return
    _print(result, sheets)


def _check_grid_dir(grid_dir: str) -> None:
    os.makedirs(grid_dir, exist_ok=True)
    _check_output(os.path.join(grid_dir, "topics.jpg"), "--grid", image=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "topic"


def _draw_sheets(result: TopicsResult, grid_dir: str, per_topic: int) -> list[str]:
    """The overview sheet (a row per topic) and one sheet per topic of its typical photos."""
    from clipdex.grid import Row, Tile, draw_grid, draw_rows

    fs_of = {i: result.classification.fs_path(r) for r, i in enumerate(result.classification.file_ids)}

    def tiles(topic_index: int, most: int) -> list[Tile]:
        t = result.topics[topic_index]
        return [Tile(p, os.path.basename(p), fs_path=fs_of.get(i)) for i, p in
                zip(t.typical[:most], t.typical_paths[:most])]

    rows = [Row(f"{t.number}. {t.name}   ({t.size} photos)", tiles(n, per_topic)) for n, t in enumerate(result.topics)]
    sheets = [draw_rows(rows, os.path.join(grid_dir, "topics.jpg"), thumb=GRID_THUMB_PX)]
    for n, t in enumerate(result.topics):
        path = os.path.join(grid_dir, f"topic-{t.number:02d}-{_slug(t.name)}.jpg")
        sheets.append(draw_grid(tiles(n, len(t.typical)), path, thumb=GRID_THUMB_PX))
    return sheets


def _write_csv(result: TopicsResult) -> None:
    total = max(1, len(result.classification.file_ids))
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for t in result.topics:
        second = t.candidates[1] if len(t.candidates) > 1 else ("", None)
        writer.writerow([t.number, t.name, t.named_by, t.size, f"{t.size / total:.4f}", second[0],
                         "" if second[1] is None else f"{second[1]:.4f}",
                         ";".join(f"{n}={s:.4f}" for n, s in t.candidates),
                         ";".join(f"{m.set_name}={m.label}" for m in t.majorities),
                         " ".join(map(str, t.typical)), ";".join(t.typical_paths)])


def _print(result: TopicsResult, sheets: list[str]) -> None:
    from rich.table import Table

    out = _console()
    total = max(1, len(result.classification.file_ids))
    table = Table(title=f"{len(result.topics)} topics of {total} photos ({result.model})", title_justify="left")
    also = [", ".join(f"{n} ({s:+.3f})" for n, s in t.candidates[1:3]) for t in result.topics]
    mine = [", ".join(f"{m.set_name}={m.label} {100 * m.share:.0f}%" for m in t.majorities) for t in result.topics]
    columns = [("#", "right"), ("name", "left"), ("photos", "right"), ("share", "right")]
    columns += [("next names", "left")] if any(also) else []
    columns += [("your labels", "left")] if any(mine) else []
    for column, justify in columns:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for t, a, m in zip(result.topics, also, mine):
        cells = [str(t.number), _t(t.name), str(t.size), f"{100 * t.size / total:.1f}%"]
        table.add_row(*cells, *([_t(a)] if any(also) else []), *([_t(m)] if any(mine) else []))
    out.print(table)
    named = {t.named_by for t in result.topics}
    if "vocabulary" in named:
        source = f"names from {_t(result.vocabulary)}" + (" (their vectors from the index's cache: nothing "
                                                           "encoded)" if result.cached_names else "")
    else:
        source = "named by your label sets' majority labels, else numbered" if "labels" in named else "numbered"
    out.print(f"{_t(result.choice.describe())}; {source}")
    if result.naming_note:
        out.print(f"[yellow]note:[/] {_t(result.naming_note)}")
        out.print(f"  why: {_t(result.naming_detail)}", style="dim")
    if result.saved:
        out.print(f"stored as label set {_t(result.name)!r}: `clipdex search --label {_t(result.name)}=NAME`, "
                  f"`clipdex review {_t(result.name)} --grid sheet.jpg`, /topics in `clipdex serve`", markup=True)
    else:
        out.print("not stored (--no-save, or a read-only index)")
    if result.stale_corrections:
        out.print(f"[yellow]note:[/] {result.stale_corrections} correction(s) made to an earlier {_t(result.name)!r} "
                  "name a topic that no longer exists; those photos show under no topic until corrected again "
                  "(or store these topics under another --name)")
    out.print(f"found in {result.seconds:.1f} s (stored vectors; no image decoded)")
    for sheet in sheets:
        out.print(f"grid: {sheet}", markup=False)


COMMANDS: list[click.Command] = [topics_cmd]
