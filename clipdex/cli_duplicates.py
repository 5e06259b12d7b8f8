"""clipdex's duplicates command (imported by clipdex.cli's main group when named, see its LAZY_COMMANDS):
``clipdex duplicates`` finds exact and near-duplicate photos (:mod:`clipdex.duplicates`), shows them,
draws them, and moves the extras aside (and back)."""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import TYPE_CHECKING

import click

from clipdex.cli import FiniteFloat, _Bar, _check_output, _console, _count, _size, _t, index_option, model_choice

if TYPE_CHECKING:
    from clipdex.duplicates import DuplicateGroup, DuplicateReport, DuplicateRule
    from clipdex.index import Index

MAX_K = 100
SHOWN_GROUPS = 50  # groups the table shows unless --limit says otherwise (--json and --csv give all)
CSV_COLUMNS = ["group", "keeper", "marked", "exact", "cosine", "phash_distance", "id", "path", "size", "width",
               "height", "pixels", "taken_at"]


@click.command("duplicates")
@index_option
@model_choice
@click.option("--device", help="Where calibration encodes altered copies: cuda, mps or cpu [default: best available].")
@click.option("--calibrate", is_flag=True,
              help="Calibrate the rule again on your photos (altered copies of a sample, encoded with the model, "
                   "against their nearest different photos) and store it for the model. The first run does it "
                   "by itself where the model's weights are at hand.")
@click.option("--calibration-photos", type=click.IntRange(2, 10_000), default=80, show_default=True,
              help="Photos altered (7 copies each) to calibrate.")
@click.option("--threshold", type=FiniteFloat(0.0, 1.0), metavar="COSINE",
              help="Photos at this cosine or above are copies, whatever else is calibrated; the pHash band "
                   "below it stays (see --no-phash).")
@click.option("--max-phash", type=click.IntRange(0, 64), help="pHash bits two copies may differ in (band below "
              "the copy cosine) [default: calibrated, else 10].")
@click.option("--no-phash", is_flag=True, help="Judge by cosine (and EXIF capture time) alone: nothing is decoded.")
@click.option("-k", "--neighbours", "k", type=click.IntRange(1, MAX_K), default=10, show_default=True,
              help="Nearest neighbours looked at for each photo (a larger group is still joined through them).")
@click.option("--folder", "folders", multiple=True, type=click.Path(file_okay=False),
              help="Only photos under this folder; repeatable.")
@click.option("--exact-only", is_flag=True, help="Only photos with the same content (byte-identical copies).")
@click.option("--min-size", type=click.IntRange(2, 1_000_000), default=2, show_default=True,
              help="Only groups of at least this many photos.")
@click.option("--limit", type=click.IntRange(1), help=f"Groups shown in the table [default: {SHOWN_GROUPS}].")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"rule", "rule_note", "keeper_rule", "photos", "extras", "search", "seconds", '
                   '"groups": [{"id", "size", "members": [{"id", "path", "keeper", "marked", "exact", "cosine", '
                   '"phash_distance", "size", "width", "height", "pixels", "taken_at"}]}]}.')
@click.option("--csv", "as_csv", is_flag=True, help=f"Print CSV, one row per photo: {', '.join(CSV_COLUMNS)}.")
@click.option("--grid", "grid_dir", type=click.Path(file_okay=False),
              help="Draw a contact sheet per group into this folder (group-0001.jpg, ...), keeper first.")
@click.option("--move-extras", "move_dir", type=click.Path(file_okay=False),
              help="Move every group's photos but its keeper (and photos marked to keep in the web app) into "
                   "this folder, keeping their layout; journalled, `--undo` puts them back. Nothing is deleted.")
@click.option("--dry-run", is_flag=True, help="With --move-extras: say what would move, move nothing.")
@click.option("--undo", is_flag=True, help="Put back the photos of the last --move-extras run.")
def duplicates_cmd(index_dir: str | None, model: str | None, weights: str | None, model_config: str | None,
                   device: str | None, calibrate: bool, calibration_photos: int, threshold: float | None,
                   max_phash: int | None, no_phash: bool, k: int, folders: tuple[str, ...], exact_only: bool,
                   min_size: int, limit: int | None, as_json: bool, as_csv: bool, grid_dir: str | None,
                   move_dir: str | None, dry_run: bool, undo: bool) -> None:
    """Find exact and near-duplicate photos: burst shots, resized or re-exported copies, crops.

    \b
    Two photos are copies when their cosine reaches the rule's copy cosine, or lies
    in the band below it and their perceptual hashes (pHash) or EXIF capture times
    confirm it. The rule is calibrated once per model on your own photos (needs the
    model's weights; imported embeddings use a stated default) and stored.
    Each group's keeper: marked in the web app, else the most pixels, then the
    largest file, then the oldest capture time. clipdex never deletes a photo.
    \b
      clipdex duplicates                          groups, keeper first
      clipdex duplicates --grid sheets/           a contact sheet per group
      clipdex duplicates --move-extras ~/dupes    move the extras aside (journalled)
      clipdex duplicates --undo                   and back
    """
    from clipdex.index import Index

    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    if undo and (move_dir or calibrate or grid_dir):
        raise click.UsageError("--undo puts the last move back; it takes no --move-extras, --calibrate or --grid")
    if dry_run and not move_dir:
        raise click.UsageError("--dry-run goes with --move-extras DIR")
    if grid_dir:
        _check_grid_dir(grid_dir)
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config, device=device) as index:
        if undo:
            _undo(index, as_json)
            return
        rule, note = _rule(index, calibrate, calibration_photos, threshold, max_phash, no_phash, as_json or as_csv)
        bar, phash_bar = _Bar("neighbours", "photos"), _Bar("pHash", "img")
        quiet = as_json or as_csv
        from clipdex.duplicates import find_duplicates, report_json

        try:
            chosen = [os.path.abspath(os.path.expanduser(f)) for f in folders]
            report = find_duplicates(index, rule, k=k, folders=chosen,
                                     exact_only=exact_only, min_size=min_size, progress=None if quiet else bar,
                                     phash_progress=None if quiet else phash_bar)
        finally:
            bar.stop()
            phash_bar.stop()
        if grid_dir:
            _draw(report.groups, grid_dir)
        if as_json:
            click.echo(json.dumps(report_json(report, note), indent=2))
        elif as_csv:
            _csv(report)
        else:
            _table(report, note, limit or SHOWN_GROUPS)
        if grid_dir:
            _console(stderr=True).print(f"contact sheets: {len(report.groups)} in {grid_dir}", markup=False)
        if move_dir:
            _move(index, report, move_dir, dry_run, quiet)


def _check_grid_dir(folder: str) -> None:
    """--grid DIR must be a folder that exists or can be made, and written to (checked before the work)."""
    os.makedirs(folder, exist_ok=True)
    _check_output(os.path.join(folder, "group-0001.jpg"), "--grid", image=True)


def _rule(index: "Index", calibrate: bool, photos: int, threshold: float | None, max_phash: int | None,
          no_phash: bool, quiet: bool) -> tuple["DuplicateRule", str]:
    """The rule of this run: calibrated first where asked (or never calibrated and no --threshold)."""
    from clipdex.duplicates import DuplicatesError, rule_for, stored_rule
    from clipdex.duplicates import calibrate as run_calibration

    err = _console(stderr=True)
    if calibrate or (stored_rule(index) is None and threshold is None and not no_phash):
        bar = _Bar("calibrating", "photos")
        try:
            rule = run_calibration(index, photos=photos, progress=None if quiet else bar)
        except DuplicatesError as e:
            if calibrate or not e.no_weights:
                raise
            err.print(f"note: not calibrated ({e.problem}); using the default rule. Pass --weights FILE and "
                      "--calibrate to calibrate it on your photos, or --threshold COSINE.", markup=False)
        else:
            err.print(f"calibrated on your photos: {rule.describe()}", markup=False)
            err.print(f"  {rule.estimates()}", markup=False)
            if rule.by_alteration:
                err.print("  recall by alteration: " + ", ".join(f"{k} {v:.2f}" for k, v in rule.by_alteration.items()),
                          markup=False)
            if rule.note:
                err.print(f"  {rule.note}", markup=False)
        finally:
            bar.stop()
    return rule_for(index, threshold=threshold, no_phash=no_phash, max_phash=max_phash)


def _csv(report: "DuplicateReport") -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for g in report.groups:
        for m in g.members:
            writer.writerow([g.id, int(m.keeper), int(m.marked), int(m.exact), f"{m.cosine:.6f}",
                             "" if m.phash_distance is None else m.phash_distance, m.file_id, m.path, m.size,
                             m.width or "", m.height or "", m.pixels or "", m.taken_at or ""])


def _table(report: "DuplicateReport", note: str, limit: int) -> None:
    from rich.table import Table

    out = _console()
    out.print(f"rule: {report.rule.describe()} ({note})", markup=False)
    estimates = report.rule.estimates()
    if estimates:
        out.print(f"  {estimates}", markup=False)
    out.print(f"keeper: {report.keeper_rule}", markup=False)
    if not report.groups:
        out.print(f"no duplicates among {_count(report.photos, 'photo')} ({report.search}, {report.seconds:.1f} s)",
                  markup=False)
        return
    table = Table(show_edge=False, pad_edge=False, box=None)
    for column, justify in (("group", "right"), ("", "left"), ("cosine", "right"), ("pHash", "right"),
                            ("pixels", "right"), ("size", "right"), ("taken", "left")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("path", overflow="fold")
    for g in report.groups[:limit]:
        for m in g.members:
            mark = "keep" + (" *" if m.marked else "") if m.keeper else ("keep *" if m.marked else "")
            closeness = "" if m.keeper else "same file" if m.exact else f"{m.cosine:.4f}"
            bits = "" if m.keeper or m.phash_distance is None else str(m.phash_distance)
            table.add_row(str(g.id) if m.keeper else "", mark, closeness, bits,
                          f"{m.width}x{m.height}" if m.width and m.height else "?", _size(m.size),
                          (m.taken_at or "")[:16].replace("T", " "), _t(m.path))
        table.add_section()
    out.print(table)
    more = f" (the first {limit} shown; --limit N for more)" if len(report.groups) > limit else ""
    out.print(f"{_count(len(report.groups), 'group')}, {_count(report.extras, 'extra photo')} among "
              f"{_count(report.photos, 'photo')}{more}; {report.search}, {report.seconds:.1f} s. "
              "* marked to keep. `--move-extras DIR` moves the extras aside.", markup=False)


def _draw(groups: list["DuplicateGroup"], folder: str) -> None:
    from clipdex.grid import Row, Tile, draw_rows

    for g in groups:
        tiles = []
        for m in g.members:
            bits = "" if m.phash_distance is None else f"  pHash {m.phash_distance}"
            head = "KEEP" if m.keeper or m.marked else ("same file" if m.exact else f"cos {m.cosine:.4f}{bits}")
            tiles.append(Tile(m.path, f"{head}\n{m.path.rsplit('/', 1)[-1]}", fs_path=m.fs_path))
        draw_rows([Row(f"group {g.id}: {len(g.members)} photos", tiles)],
                  os.path.join(folder, f"group-{g.id:04d}.jpg"), columns=min(len(tiles), 8))


def _move(index: "Index", report: "DuplicateReport", folder: str, dry_run: bool, quiet: bool) -> None:
    from clipdex.duplicate_moves import move_extras

    err = _console(stderr=True)
    extras = [m for g in report.groups for m in g.extras]
    if dry_run:
        for m in extras:
            err.print(f"would move {m.path}", markup=False)
        err.print(f"dry run: {_count(len(extras), 'photo')} would move to {folder}; nothing was moved", markup=False)
        return
    bar = _Bar("moving", "files")
    try:
        moved = move_extras(index, report.groups, folder, progress=None if quiet else bar)
    finally:
        bar.stop()
    for path, why in moved.skipped:
        err.print(f"not moved: {path}: {why}", markup=False)
    err.print(f"moved {_count(len(moved.moved), 'photo')} to {os.path.abspath(folder)} (journal {moved.journal}); "
              "the index no longer shows them. `clipdex duplicates --undo` puts them back.", markup=False)


def _undo(index: "Index", as_json: bool) -> None:
    from clipdex.duplicate_moves import undo_moves

    bar = _Bar("moving back", "files")
    try:
        report = undo_moves(index, progress=None if as_json else bar)
    finally:
        bar.stop()
    if as_json:
        click.echo(json.dumps({"run": report.run, "journal": report.journal,
                               "moved_back": [{"from": a, "to": b} for a, b in report.moved]}, indent=2))
        return
    _console().print(f"put back {_count(len(report.moved), 'photo')} of run {report.run}; the index shows them "
                     "again.", markup=False)


COMMANDS: list[click.Command] = [duplicates_cmd]
