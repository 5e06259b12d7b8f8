"""The ``clipdex`` command: a thin layer over the library.

Commands parse options, call the library, and draw its results; errors of
the library (:class:`~clipdex.errors.ClipdexError`) become one red line and
exit code 1. Heavy modules (torch, open_clip) are imported inside commands,
so ``clipdex --help`` answers at once.
"""

from __future__ import annotations

import csv
import json
import shlex
import sys
from typing import Any, Callable, TypeVar

import click

from clipdex.errors import ClipdexError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR = 1


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def index_option(f: F) -> F:
    return click.option("--index", "index_dir", type=click.Path(file_okay=False),
                        envvar="CLIPDEX_INDEX",
                        help="Index folder [default: $CLIPDEX_INDEX or ~/.local/share/clipdex/index].")(f)


def model_options(f: F) -> F:
    options = [
        click.option("--model", "-m", help="Registry name (see `clipdex models list`) or "
                     "ARCH/PRETRAINED of any open_clip model. Default: the index's model, else ViT-B-32."),
        click.option("--weights", type=click.Path(dir_okay=False),
                     help="Local checkpoint file (offline or fine-tuned weights)."),
        click.option("--model-config", type=click.Path(dir_okay=False),
                     help="open_clip model-config JSON of a custom architecture (needs --weights)."),
        click.option("--device", help="cuda, mps or cpu [default: best available]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class ClipdexGroup(click.Group):
    """Turns library errors into a clear message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClipdexError as e:
            _console(stderr=True).print(f"[bold red]error:[/] {click.style('', reset=True)}", end="")
            click.echo(str(e), err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=ClipdexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipdex")
def main() -> None:
    """clipdex: search and label photo collections with CLIP (open_clip).

    \b
    clipdex index ~/Pictures            embed every photo once (incremental)
    clipdex search "dog in the snow"    find photos by meaning
    clipdex status                      what the index holds
    """


# -- index -------------------------------------------------------------------
class _Bar:
    """Rich progress bar that shows images/s and an ETA."""

    def __init__(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=_console(stderr=True), transient=False)
        self.task: Any = None

    def start(self, total: int) -> None:
        if total:
            self.progress.start()
            self.task = self.progress.add_task("index", total=total, rate="")

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)
        speed = self.progress.tasks[0].speed
        if speed:
            self.progress.update(self.task, rate=f"{speed:.1f} img/s")

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


@main.command("index")
@click.argument("photo_dir", type=click.Path())
@index_option
@model_options
@click.option("--batch-size", default=32, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=int, help="Decoding threads [default: CPU cores, at most 8].")
@click.option("--max-megapixels", default=178.0, show_default=True,
              help="Refuse larger images (decompression-bomb guard).")
@click.option("--retry-failed", is_flag=True, help="Try files that failed before again.")
@click.option("--add-model", is_flag=True,
              help="Add this model's vectors to an index that holds another model's.")
@click.option("--wait", is_flag=True, help="Wait for another indexing run on this index to finish.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index_cmd(photo_dir: str, index_dir: str | None, model: str | None, weights: str | None,
              model_config: str | None, device: str | None, batch_size: int, workers: int | None,
              max_megapixels: float, retry_failed: bool, add_model: bool, wait: bool,
              as_json: bool) -> None:
    """Embed every photo under PHOTO_DIR (recursively) into the index.

    Runs are incremental: unchanged files are skipped, new and changed ones
    encoded, deleted ones dropped, renamed ones keep their vectors. A killed
    run keeps every finished batch; run the command again to resume.
    """
    from clipdex.index import Index
    from clipdex.indexer import IndexSettings, check_folder

    check_folder(photo_dir)  # before anything is created
    _check_weights_before_creating(index_dir, model, weights, model_config)
    settings = IndexSettings(batch_size=batch_size, max_megapixels=max_megapixels,
                             retry_failed=retry_failed)
    if workers:
        settings.workers = workers
    bar = _Bar()
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config,
                    device=device, create=True) as index:
        try:
            report = index.add(photo_dir, settings=settings, progress=None if as_json else bar,
                               allow_new_model=add_model, wait=wait)
        finally:
            bar.stop()
    if as_json:
        data = {k: v for k, v in vars(report).items() if k != "failed"}
        data["failed"] = [vars(f) for f in report.failed]
        data["images_per_second"] = report.images_per_second
        click.echo(json.dumps(data, indent=2))
        return
    out = _console()
    out.print(f"[bold]{report.root}[/] with [bold]{report.model}[/] -> {index_dir or 'default index'}")
    out.print(f"  indexed   {report.indexed_total:>7}  photos in this folder")
    out.print(f"  new       {report.new:>7}")
    out.print(f"  changed   {report.changed:>7}")
    out.print(f"  reused    {report.reused:>7}  (moved, renamed or duplicate: vector reused)")
    out.print(f"  unchanged {report.unchanged:>7}")
    out.print(f"  removed   {report.removed:>7}")
    out.print(f"  skipped   {len(report.failed):>7}")
    rate = f", {report.images_per_second:.1f} img/s" if report.encoded else ""
    out.print(f"  encoded {report.encoded} in {report.seconds:.1f} s{rate}")
    if report.failed:
        out.print("[bold yellow]skipped files:[/]")
        for failure in report.failed[:20]:
            out.print(f"  {failure.path}: {failure.reason}", markup=False)
        if len(report.failed) > 20:
            out.print(f"  … and {len(report.failed) - 20} more (clipdex status --failures)")


def _check_weights_before_creating(index_dir: str | None, model: str | None, weights: str | None,
                                   model_config: str | None) -> None:
    """A first run with unavailable weights must fail before it creates an index."""
    from pathlib import Path

    from clipdex.models.registry import resolve_model
    from clipdex.models.weights import locate_weights
    from clipdex.settings import default_index_dir
    from clipdex.store.catalog import CATALOG_NAME

    if not (Path(index_dir) if index_dir else default_index_dir()).joinpath(CATALOG_NAME).exists():
        locate_weights(resolve_model(model, weights, model_config))


# -- search ------------------------------------------------------------------
@main.command("search", context_settings={"ignore_unknown_options": True})
@click.argument("query", nargs=-1, type=click.UNPROCESSED)
@click.option("-n", "--limit", "k", default=10, show_default=True, help="How many results.")
@click.option("--offset", default=0, show_default=True, help="Skip this many results (paging).")
@click.option("--image", "images", multiple=True, type=click.Path(),
              help="Add an example image (file or indexed photo); repeatable.")
@index_option
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print results as CSV.")
@click.option("--grid", type=click.Path(dir_okay=False), help="Also draw a contact sheet to this file.")
def search_cmd(query: tuple[str, ...], k: int, offset: int, images: tuple[str, ...],
               index_dir: str | None, model: str | None, weights: str | None,
               model_config: str | None, device: str | None, as_json: bool, as_csv: bool,
               grid: str | None) -> None:
    """Find photos by meaning: text, example images, or both.

    \b
    Quote the query; its syntax:
      clipdex search "dog in the snow"
      clipdex search "beach -people"            minus a term
      clipdex search '"red car" + night'        several terms
      clipdex search "2*snow + dog"             weights
      clipdex search "@photos/dog.jpg + snow"   an example image (file or indexed photo)
    """
    from clipdex.index import Index

    text = " ".join(shlex.quote(q) if " " in q else q for q in query) if len(query) > 1 else "".join(query)
    for image in images:
        text = f"{text} + {shlex.quote('@' + image)}" if text else shlex.quote("@" + image)
    if not text.strip():
        raise click.UsageError("give a query, e.g. clipdex search \"dog in the snow\"")
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config,
                    device=device) as index:
        results = index.search(text, k=k, offset=offset)
    if grid:
        from clipdex.grid import Tile, draw_grid

        draw_grid([Tile(r.path, f"#{r.rank}  {r.score:.3f}\n{_name(r.path)}") for r in results], grid)
    if as_json:
        click.echo(json.dumps([vars(r) for r in results], indent=2))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["rank", "score", "path"])
        writer.writerows([r.rank, f"{r.score:.6f}", r.path] for r in results)
    else:
        out = _console()
        out.print(f"[bold]{text}[/]  ({len(results)} results)", markup=True)
        out.print(f"[dim]{'rank':>5}  {'score':>6}  path[/]")
        for r in results:
            out.print(f"{r.rank:>5}  {r.score:>6.3f}  {r.path}", markup=False)
        if grid:
            _console(stderr=True).print(f"contact sheet: {grid}")


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# -- status ------------------------------------------------------------------
@main.command("status")
@index_option
@click.option("--failures", "all_failures", is_flag=True, help="List every failed file.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status_cmd(index_dir: str | None, all_failures: bool, as_json: bool) -> None:
    """Show an index's models, counts and failures."""
    from clipdex.index import Index

    with Index.open(index_dir) as index:
        status = index.status()
        failures = index.failures()
    if as_json:
        data = {"path": status.path, "roots": status.roots, "indexed": status.indexed,
                "failed": status.failed, "models": [vars(m) for m in status.models],
                "failures": [{"path": f.path, "reason": f.reason} for f in failures]}
        click.echo(json.dumps(data, indent=2))
        return
    out = _console()
    out.print(f"[bold]index[/]   {status.path}")
    out.print(f"folders  {', '.join(status.roots) or '-'}")
    out.print(f"photos   {status.indexed} indexed, {status.failed} failed")
    for m in status.models:
        out.print(f"model    {m.name} ({m.key}), {m.dim}-d {m.precision}: {m.photos} photos")
    shown = failures if all_failures else failures[:20]
    if shown:
        out.print("[bold yellow]failures:[/]")
        for f in shown:
            out.print(f"  {f.path}: {f.reason}", markup=False)
        if len(failures) > len(shown):
            out.print(f"  … and {len(failures) - len(shown)} more (--failures lists all)")


# -- models ------------------------------------------------------------------
@main.group("models")
def models_group() -> None:
    """The model registry."""


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models_list_cmd(as_json: bool) -> None:
    """Show registry models and whether their weights are on this machine."""
    from clipdex.errors import ModelError
    from clipdex.models.registry import ModelSpec, default_model_name, list_models
    from clipdex.models.weights import locate_weights

    rows = []
    for entry in list_models():
        spec = ModelSpec(name=entry.name, arch=entry.arch, pretrained=entry.pretrained)
        try:
            where = locate_weights(spec, download=False)
        except ModelError:
            where = ""
        rows.append({"name": entry.name, "arch": entry.arch, "pretrained": entry.pretrained,
                     "aliases": list(entry.aliases), "description": entry.description,
                     "default": entry.name == default_model_name(), "local": where})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("name", "open_clip model", "weights", "description"):
        table.add_column(col)
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        table.add_row(name, f"{r['arch']}/{r['pretrained']}", "local" if r["local"] else "download",
                      r["description"])
    _console().print(table)
    _console().print("Any open_clip ARCH/PRETRAINED pair also works, and --weights FILE "
                     "(--model-config FILE.json) for local or custom models.")


if __name__ == "__main__":  # pragma: no cover
    main()
