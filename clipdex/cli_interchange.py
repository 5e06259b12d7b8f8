"""clipdex's interchange commands (imported by clipdex.cli's main group when named, see its LAZY_COMMANDS):
``clipdex export DIR`` and ``clipdex import DIR``, in clip-retrieval's layout
(see :mod:`clipdex.interchange`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from clipdex.cli import EXIT_INTERRUPTED, _Bar, _console, _fail, _t, index_option
from clipdex.store.vectors import STORAGE_OPTIONS, stored_name

if TYPE_CHECKING:
    from clipdex.interchange import ImportReport

MAX_SHARD_ROWS = 100_000_000


@click.command("export")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False))
@index_option
@click.option("--model", "-m", help="Export this model's vectors: its name as `clipdex status` shows it, or a "
              "registry name, ARCH/PRETRAINED, hf:OWNER/NAME or hf:/folder [default: the index's model].")
@click.option("--shard-rows", type=click.IntRange(1, MAX_SHARD_ROWS), default=100_000, show_default=True,
              help="Photos per shard (one .npy and one .parquet each).")
@click.option("--overwrite", is_flag=True, help="Replace an export already in DIR.")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"folder", "model", "dim", "rows", "shards", "columns", "seconds"}.')
def export_cmd(out_dir: str, index_dir: str | None, model: str | None, shard_rows: int, overwrite: bool,
               as_json: bool) -> None:
    """Write the index's vectors and photo metadata to DIR as clip-retrieval does.

    \b
    DIR/img_emb/img_emb_N.npy          float16 unit vectors, one row per photo (by path)
    DIR/metadata/metadata_N.parquet    image_path, id, path, width, height, size, mtime,
                                       taken_at, sha256, and per label set its label
                                       (a correction wins) and <set>_prob
    Readable by clip-retrieval, autofaiss and embedding-reader (file_format="parquet_npy"),
    and by `clipdex import`. Photos in folders that are gone are left out.
    """
    from clipdex.index import Index
    from clipdex.interchange import export_embeddings

    bar = _Bar("exporting", "rows")
    with Index.open(index_dir) as index:
        try:
            report = export_embeddings(index, out_dir, model=model, shard_rows=shard_rows, overwrite=overwrite,
                                       progress=None if as_json else bar)
        finally:
            bar.stop()
    if as_json:
        from clipdex import serialize

        click.echo(json.dumps(serialize.export_report(report), indent=2))
        return
    out = _console()
    out.print(f"exported {report.rows} photos of [bold]{_t(report.model)}[/] ({report.dim}-d) to "
              f"{_t(report.folder)} in {report.shards} shard{'s' if report.shards != 1 else ''}, "
              f"{report.seconds:.1f} s")
    out.print(f"  columns: {', '.join(report.columns)}", markup=False)


@click.command("import")
@click.argument("source", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@index_option
@click.option("--model", "-m", help="The model that made the vectors: registry name, ARCH/PRETRAINED of any open_clip "
              "model, or a Transformers checkpoint, hf:OWNER/NAME or hf:/folder. Its weights are not needed; "
              "where they are on this machine, its scoring (SigLIP's bias) is read from them.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local checkpoint of that model.")
@click.option("--model-config", type=click.Path(dir_okay=False),
              help="open_clip model-config JSON of a custom architecture (needs --weights).")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Folder that relative image_path values start from, and where features.npy's ids "
                   "are files (<id>.jpg, …).")
@click.option("--add-model", is_flag=True, help="Add this model's vectors to an index that holds another model's.")
@click.option("--wait", is_flag=True, help="Wait for another process writing the index to finish.")
@click.option("--storage", type=click.Choice(list(STORAGE_OPTIONS)), default=None,
              help="How a model new to the index stores vectors: fp16 halves the vector file (clip-retrieval's "
                   "vectors are float16 already) [default: fp32; a model the index holds keeps its own].")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"source", "model", "layout", "rows", "imported", "vectors_added", "reused", '
                   '"skipped", "skipped_rows", "shards", "shards_imported", "shards_done_before", "roots", '
                   '"seconds", "search_seconds"}.')
@click.pass_context
def import_cmd(ctx: click.Context, source: str, index_dir: str | None, model: str | None, weights: str | None,
               model_config: str | None, images: str | None, add_model: bool, wait: bool, storage: str | None,
               as_json: bool) -> None:
    """Adopt the embeddings in DIR into the index, encoding no image.

    \b
    DIR is one of:
      clip-retrieval output or `clipdex export`: img_emb/*.npy + metadata/*.parquet
        (image_path, or url/caption: a url is kept as the photo's path)
      the CLIP tutorial's features.npy + photo_ids.csv (with --images: <id>.jpg there)
    The vectors' dimension is checked against the model; rows of zeros or NaN are
    skipped and reported. Each shard is saved as it finishes: run the same command
    again after an interruption to resume (finished shards are skipped).
    """
    from clipdex.index import Index
    from clipdex.interchange import import_embeddings

    if not (model or weights or model_config):
        raise click.UsageError("name the model that made the vectors: --model NAME (or --weights FILE "
                               "[--model-config FILE.json])")
    _check_before_creating(source, index_dir, model, weights, model_config)
    bar, search_bar = _Bar("importing", "rows"), _Bar("search index", "rows")
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config, create=True) as index:
        try:
            report = import_embeddings(index, source, images=images, allow_new_model=add_model, wait=wait,
                                       progress=None if as_json else bar,
                                       search_progress=None if as_json else search_bar,
                                       storage=stored_name(storage))
        except KeyboardInterrupt:
            bar.stop()
            search_bar.stop()
            _fail(ctx, "interrupted; every finished shard is saved: run the same command again to resume.",
                  EXIT_INTERRUPTED)
            return
        finally:
            bar.stop()
            search_bar.stop()
    if as_json:
        from clipdex import serialize

        click.echo(json.dumps(serialize.import_report(report), indent=2))
        return
    _print_import(report)


def _check_before_creating(source: str, index_dir: str | None, model: str | None, weights: str | None,
                           model_config: str | None) -> None:
    """A first import of a folder it cannot take (no layout it knows, another model's vectors)
    must fail before it creates an index."""
    from pathlib import Path

    from clipdex.interchange import check_source
    from clipdex.models.registry import resolve_model
    from clipdex.settings import default_index_dir
    from clipdex.store.catalog import CATALOG_NAME

    if not (Path(index_dir) if index_dir else default_index_dir()).joinpath(CATALOG_NAME).exists():
        check_source(source, resolve_model(model, weights, model_config))


def _print_import(report: "ImportReport") -> None:
    out = _console()
    out.print(f"[bold]{_t(report.source)}[/] ({report.layout}) with [bold]{_t(report.model)}[/]")
    out.print(f"  imported  {report.imported:>9}  photos ({report.vectors_added} new vectors, "
              f"{report.reused} already held"
              + (f", {report.replaced} changed since an earlier import" if report.replaced else "") + ")")
    out.print(f"  skipped   {report.skipped:>9}  rows")
    if report.failed:
        out.print(f"  failed    {report.failed:>9}  files that could not be encoded (clipdex status --failures)")
    if report.partial_shards:
        out.print(f"  partial   {report.partial_shards:>9}  shards (vectors without metadata yet: left out)")
    out.print(f"  shards    {report.shards_imported:>9}  imported, {report.shards_done_before} done before "
              f"(of {report.shards})")
    out.print(f"  folders   {_t(', '.join(report.roots) or '-')}")
    search = f", search index updated in {report.search_seconds:.1f} s" if report.search_seconds >= 0.1 else ""
    out.print(f"  read {report.rows} rows in {report.seconds:.1f} s{search}")
    if report.skipped_rows:
        out.print("[bold yellow]skipped rows:[/]")
        for row in report.skipped_rows:
            out.print(f"  {row.shard} row {row.row}: {row.reason}", markup=False)
        if report.skipped > len(report.skipped_rows):
            out.print(f"  … and {report.skipped - len(report.skipped_rows)} more")
    if report.failures:
        out.print("[bold yellow]failed files:[/]")
        for path, reason in report.failures:
            out.print(f"  {path}: {reason}", markup=False)
        if report.failed > len(report.failures):
            out.print(f"  … and {report.failed - len(report.failures)} more (clipdex status --failures)")


COMMANDS: list[click.Command] = [export_cmd, import_cmd]
