"""clipdex's compact commands (imported by clipdex.cli's main group when named, see its LAZY_COMMANDS):
``clipdex compact`` gives back the vector rows no indexed photo uses any more
(see :mod:`clipdex.store.compact`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from clipdex.cli import _Bar, _console, _size, _t, index_option

if TYPE_CHECKING:
    from clipdex.store.compact import CompactReport


class _ModelBars:
    """A fresh progress bar for each model compacted (the compaction reports (done, total) per
    model: done going back means the next model)."""

    def __init__(self) -> None:
        self.bar = _Bar("compacting", "rows")
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if done < self.last:
            self.bar.stop()
        self.last = done
        self.bar(done, total)

    def stop(self) -> None:
        self.bar.stop()
        self.last = -1


@click.command("compact")
@index_option
@click.option("--wait", is_flag=True, help="Wait for another process writing the index to finish.")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"index", "models": [{"key", "name", "rows_before", "rows_after", '
                   '"bytes_reclaimed", "vectors_file", "generation"}], "rows_before", "rows_after", '
                   '"bytes_reclaimed", "leftovers", "seconds"}.')
def compact_cmd(index_dir: str | None, wait: bool, as_json: bool) -> None:
    """Give back the disk space of vectors no indexed photo uses any more.

    Removed, changed and replaced photos leave their vectors behind (a photo
    moved back reuses its vector). `clipdex status` says how much compacting
    frees. Each model's vector file is rewritten with the vectors in use, then
    the approximate search index is rebuilt. Safe to interrupt or kill at any
    point: the index stays searchable, and the next run cleans up.
    """
    from clipdex.index import Index

    bars = _ModelBars()
    search_bar = _Bar("search index", "rows")
    with Index.open(index_dir) as index:
        try:
            # Rows are renumbered, then what is built on them (the search index) rebuilt.
            report = index.compact(None if as_json else bars, None if as_json else search_bar, wait=wait)
        finally:
            bars.stop()
            search_bar.stop()
    if as_json:
        click.echo(json.dumps(compact_json(report), indent=2))
        return
    out = _console()
    out.print(f"[bold]compacted[/] {_t(report.index)} in {report.seconds:.1f} s")
    for m in report.models:
        if m.compacted:
            out.print(f"  {m.name}: {m.rows_before:,} -> {m.rows_after:,} vectors, "
                      f"{_size(m.bytes_reclaimed)} freed", markup=False)
        else:
            out.print(f"  {m.name}: {m.rows_after:,} vectors, all in use (nothing to free)", markup=False)
    if report.leftovers:
        out.print(f"  removed {len(report.leftovers)} leftover file(s) of an interrupted run: "
                  f"{', '.join(report.leftovers)}", markup=False)
    out.print(f"  {_size(report.bytes_reclaimed)} freed in all")


def compact_json(report: "CompactReport") -> dict[str, Any]:
    """The JSON form of a compaction's report."""
    return {
        "index": report.index,
        "models": [{"key": m.key, "name": m.name, "rows_before": m.rows_before, "rows_after": m.rows_after,
                    "bytes_reclaimed": m.bytes_reclaimed, "vectors_file": m.vectors_file,
                    "generation": m.generation} for m in report.models],
        "rows_before": report.rows_before,
        "rows_after": report.rows_after,
        "bytes_reclaimed": report.bytes_reclaimed,
        "leftovers": report.leftovers,
        "seconds": round(report.seconds, 3),
    }


COMMANDS: list[click.Command] = [compact_cmd]
