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
CSV_COLUMNS = ["group", "keeper", "marked", "exact", "cosine", "phash_distance", "why", "id", "path", "size",
               "width", "height", "pixels", "taken_at"]
PIPE_WIDTH = 240  # columns of the table when stdout is not a terminal (a pipe, a file): paths are not folded


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
                   '"phash_distance", "why", "size", "width", "height", "pixels", "taken_at"}]}]}; "why": how '
                   'a member joined (exact, cosine, phash, time).')
@click.option("--csv", "as_csv", is_flag=True, help=f"Print CSV, one row per photo: {', '.join(CSV_COLUMNS)}.")
@click.option("--grid", "grid_dir", type=click.Path(file_okay=False),
              help="Draw a contact sheet per group into this folder (group-0001.jpg, ...), keeper first.")
@click.option("--move-extras", "move_dir", type=click.Path(file_okay=False),
              help="Move every group's photos but its keeper (and photos marked to keep in the web app) into "
                   "this folder, keeping their layout; journalled, `--undo` puts them back. Nothing is deleted.")
@click.option("--dry-run", is_flag=True, help="With --move-extras: say what would move where, move nothing.")
@click.option("--include-bursts", is_flag=True,
              help="With --move-extras: move burst frames too (photos grouped only by EXIF capture time, "
                   "which are other shots of the moment, not copies); left in place by default.")
@click.option("--undo", is_flag=True, help="Put back the photos of the last --move-extras run.")
def duplicates_cmd(index_dir: str | None, model: str | None, weights: str | None, model_config: str | None,
                   device: str | None, calibrate: bool, calibration_photos: int, threshold: float | None,
                   max_phash: int | None, no_phash: bool, k: int, folders: tuple[str, ...], exact_only: bool,
                   min_size: int, limit: int | None, as_json: bool, as_csv: bool, grid_dir: str | None,
                   move_dir: str | None, dry_run: bool, include_bursts: bool, undo: bool) -> None:
    """Find exact and near-duplicate photos: burst shots, resized or re-exported copies, crops.

    \b
    Two photos are copies when their cosine reaches the rule's copy cosine, or lies
    in the band below it and their perceptual hashes (pHash) or EXIF capture times
    confirm it. The rule is calibrated once per model on your own photos (needs the
    model's weights; imported embeddings use a stated default) and stored.
    Each group's keeper is said above the table (a photo marked in the web app
    first). Burst frames (same moment, not copies) move only with --include-bursts.
    clipdex never deletes a photo.
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
    if include_bursts and not move_dir:
        raise click.UsageError("--include-bursts goes with --move-extras DIR")
    if exact_only and calibrate:
        raise click.UsageError("--exact-only compares file contents; it takes no --calibrate")
    if grid_dir:
        _check_grid_dir(grid_dir)
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config, device=device) as index:
        if undo:
            _undo(index, as_json)
            return
        from clipdex.search.filters import check_folder

        roots = index.store.roots()
        chosen = [check_folder(os.path.abspath(os.path.expanduser(f)), roots, "`clipdex status` lists them")
                  for f in folders]
        if move_dir:
            from clipdex.duplicate_moves import check_destination

            check_destination(index, move_dir)  # before the work, a dry run too
        rule, note = _rule(index, calibrate and not exact_only, calibration_photos, threshold, max_phash, no_phash,
                           as_json or as_csv, exact_only)
        bar, phash_bar = _Bar("neighbours", "photos"), _Bar("pHash", "img")
        quiet = as_json or as_csv
        from clipdex.duplicates import find_duplicates, report_json

        try:
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
            _move(index, report, move_dir, dry_run, quiet, include_bursts)


def _check_grid_dir(folder: str) -> None:
    """--grid DIR must be a folder that exists or can be made, and written to (checked before the work)."""
    os.makedirs(folder, exist_ok=True)
    _check_output(os.path.join(folder, "group-0001.jpg"), "--grid", image=True)


def _rule(index: "Index", calibrate: bool, photos: int, threshold: float | None, max_phash: int | None,
          no_phash: bool, quiet: bool, exact_only: bool = False) -> tuple["DuplicateRule", str]:
    """The rule of this run: calibrated first where asked, or where never calibrated and nothing
    overrides it. Never for --exact-only (file contents decide: no model is loaded), nor by itself on a
    read-only index (the rule could not be stored: the default is used, said on stderr)."""
    from clipdex.duplicates import DuplicatesError, rule_for, stored_rule
    from clipdex.duplicates import calibrate as run_calibration

    err = _console(stderr=True)
    automatic = not exact_only and stored_rule(index) is None and threshold is None and not no_phash
    if automatic and not calibrate and index.store.readonly:
        err.print(f"note: not calibrated: the index is read-only ({index.store.readonly_reason or 'opened so'}), "
                  "so a calibrated rule could not be stored; using the default rule. --calibrate calibrates "
                  "anyway (on a writable index).", markup=False)
        automatic = False
    if calibrate or automatic:
        bar = _Bar("calibrating", "photos")
        try:
            rule = run_calibration(index, photos=photos, progress=None if quiet else bar,
                                   save=not index.store.readonly)
        except DuplicatesError as e:
            if calibrate or not e.no_weights:
                raise
            err.print(f"note: not calibrated ({e.problem}); using the default rule. Pass --weights FILE and "
                      "--calibrate to calibrate it on your photos, or --threshold COSINE.", markup=False)
        else:
            if rule.source != "calibrated":  # too few photos to measure anything: nothing stored
                err.print(f"note: {rule.note or 'not calibrated'}", markup=False)
                return rule_for(index, threshold=threshold, no_phash=no_phash, max_phash=max_phash)
            err.print(f"calibrated on your photos: {rule.describe()}", markup=False)
            err.print(f"  {rule.estimates()}", markup=False)
            if rule.by_alteration:
                err.print("  recall by alteration: " + ", ".join(f"{k} {v:.2f}" for k, v in rule.by_alteration.items()),
                          markup=False)
            if rule.note:
                err.print(f"  {rule.note}", markup=False)
            if index.store.readonly and threshold is None and max_phash is None and not no_phash:
                return rule, "calibrated on your photos just now; not stored (the index is read-only)"
        finally:
            bar.stop()
    return rule_for(index, threshold=threshold, no_phash=no_phash, max_phash=max_phash)


def _csv(report: "DuplicateReport") -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for g in report.groups:
        for m in g.members:
            writer.writerow([g.id, int(m.keeper), int(m.marked), int(m.exact), f"{m.cosine:.6f}",
                             "" if m.phash_distance is None else m.phash_distance, _why(m), m.file_id, m.path, m.size,
                             m.width or "", m.height or "", m.pixels or "", m.taken_at or ""])


def _table(report: "DuplicateReport", note: str, limit: int) -> None:
    from rich.table import Table

    out = _console()
    if not out.is_terminal:  # a pipe or a file: one line per photo, whatever the (guessed) width
        out.width = max(out.width, PIPE_WIDTH)
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
                            ("why", "left"), ("pixels", "right"), ("size", "right"), ("taken", "left")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("path", overflow="fold")
    for g in report.groups[:limit]:
        for m in g.members:
            mark = "keep" + (" *" if m.marked else "") if m.keeper else ("keep *" if m.marked else "")
            closeness = "" if m.keeper else "same file" if m.exact else f"{m.cosine:.4f}"
            bits = "" if m.keeper or m.phash_distance is None else str(m.phash_distance)
            table.add_row(str(g.id) if m.keeper else "", mark, closeness, bits, "" if m.keeper else _why(m),
                          f"{m.width}x{m.height}" if m.width and m.height else "?", _size(m.size),
                          (m.taken_at or "")[:16].replace("T", " "), _t(m.path))
        table.add_section()
    out.print(table)
    more = f" (the first {limit} shown; --limit N for more)" if len(report.groups) > limit else ""
    out.print(f"{_count(len(report.groups), 'group')}, {_count(report.extras, 'extra photo')} among "
              f"{_count(report.photos, 'photo')}{more}; {report.search}, {report.seconds:.1f} s. "
              "* marked to keep. `--move-extras DIR` moves the extras aside.", markup=False)


def _why(m: object) -> str:
    """How a member joined its group ("cosine+phash", "time", ...), '' where the finder does not say."""
    return "+".join(getattr(m, "why", ()) or ())


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


def _move(index: "Index", report: "DuplicateReport", folder: str, dry_run: bool, quiet: bool,
          include_bursts: bool) -> None:
    from clipdex.duplicate_moves import move_extras, plan_moves

    err = _console(stderr=True)
    if dry_run:
        plan = plan_moves(index, report.groups, folder, include_bursts=include_bursts)
        for f, target in plan.moves:
            err.print(f"would move {f.path} -> {target}", markup=False)
        for path, why in plan.skipped:
            err.print(f"would not move {path}: {why}", markup=False)
        err.print(f"dry run: {_count(len(plan.moves), 'photo')} would move to {plan.dest}; nothing was moved",
                  markup=False)
        return
    bar = _Bar("moving", "files")
    try:
        moved = move_extras(index, report.groups, folder, progress=None if quiet else bar,
                            include_bursts=include_bursts)
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
                               "moved_back": [{"from": a, "to": b} for a, b in report.moved],
                               "already_back": report.already_back, "without_vector": report.without_vector,
                               "left": [{"path": p, "why": w} for p, w in report.skipped]}, indent=2))
    else:
        already = f" ({report.already_back} were back already)" if report.already_back else ""
        _console().print(f"put back {_count(len(report.moved), 'photo')} of run {report.run}{already}; the index "
                         "shows them again.", markup=False)
    err = _console(stderr=True)
    for path, why in report.skipped:
        err.print(f"left: {path}: {why}", markup=False)
    if report.without_vector:
        err.print(f"warning: {_count(len(report.without_vector), 'photo')} came back without a vector (the index "
                  "was compacted since the move, which drops vectors no photo uses): search does not find them "
                  "until `clipdex index FOLDER` encodes them again, e.g. " + report.without_vector[0], markup=False)


COMMANDS: list[click.Command] = [duplicates_cmd]
