"""The ``clipdex`` command: a thin layer over the library.

Commands check their options, call the library, and draw its results.
Errors of the library (:class:`~clipdex.errors.ClipdexError`), and a disk
that is full, read-only or failing, become one red ``error:`` line and exit
code 1; Ctrl-C exits 130. Every ``--json`` comes from :mod:`clipdex.serialize`
(the web API's shapes). Text the user controls (paths, folder, label and set
names, queries) is printed as text, never as rich markup. Heavy modules
(torch, open_clip) are imported inside commands, so ``clipdex --help``
answers at once.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from clipdex.errors import ClipdexError, ModelError
from clipdex.labels import DEFAULT_THRESHOLD
from clipdex.models.precision import DEFAULT_MIN_COSINE, INT8_MIN_COSINE, PRECISIONS
from clipdex.review import MAX_PER_LABEL
from clipdex.store.vectors import STORAGE_OPTIONS, stored_name
from clipdex.video import DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL, format_time

if TYPE_CHECKING:
    from pathlib import Path

    from clipdex.index import Index
    from clipdex.models.spec import ModelSpec

F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

MAX_RESULTS = 10_000  # = clipdex.index.MAX_K (not imported: --help must stay light; a test holds them equal)
MAX_BATCH_SIZE = 4096
MAX_WORKERS = 256
MAX_MEGAPIXELS = 100_000.0
MAX_VIDEO_LINES = 20  # classify: videos summarised on screen (a table or --json has them all)
MAX_SHARES_SHOWN = 4  # classify: labels per video on screen, largest shares first
# Commands that live in modules of their own, imported when named (those modules import this
# one's options, so this one must not import them when it loads).
LAZY_COMMANDS = {"export": "clipdex.cli_interchange", "import": "clipdex.cli_interchange",
                 "compact": "clipdex.cli_compact", "duplicates": "clipdex.cli_duplicates",
                 "topics": "clipdex.cli_topics", "learn": "clipdex.cli_learn"}

def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    # emoji off: a file named ":smile:.jpg" is shown as it is named.
    return Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False)


def _t(value: object) -> str:
    """User text (a path, a name, a query) to put inside rich markup: shown as it is."""
    from rich.markup import escape

    return escape(str(value))


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf (click's own lets nan through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


PROBABILITY = FiniteFloat(0.0, 1.0)


def _check_output(path: str | None, option: str, *, image: bool = False, table: bool = False) -> None:
    """Fail now, not after the work, when an output file cannot be written."""
    if path is None:
        return
    from clipdex.fileio import check_writable

    if image:
        from clipdex.grid import check_grid_path

        check_grid_path(path, option)
    if table:
        from clipdex.export import check_table_path

        check_table_path(path, option)
    check_writable(path, option)


def index_option(f: F) -> F:
    return click.option("--index", "index_dir", type=click.Path(file_okay=False),
                        envvar="CLIPDEX_INDEX",
                        help="Index folder [default: $CLIPDEX_INDEX or ~/.local/share/clipdex/index].")(f)


_IDENTITY_OPTIONS = [
    click.option("--model", "-m", help="Registry name (see `clipdex models list`), ARCH/PRETRAINED of any "
                 "open_clip model, hf:OWNER/NAME or hf:/path/to/folder for a Transformers CLIP or SigLIP "
                 "checkpoint, or onnx:OWNER/NAME or onnx:/path/to/folder for a ready ONNX export (Immich's, or "
                 "one written by `clipdex models export`). Default: the index's model, else ViT-B-32."),
    click.option("--weights", type=click.Path(dir_okay=False),
                 help="Local checkpoint file (offline or fine-tuned weights)."),
    click.option("--model-config", type=click.Path(dir_okay=False),
                 help="open_clip model-config JSON of a custom architecture (needs --weights)."),
]


def model_choice(f: F) -> F:
    """Which of an index's models a command reads (--model, --weights, --model-config)."""
    for option in reversed(_IDENTITY_OPTIONS):
        f = option(f)
    return f


def model_options(f: F) -> F:
    options = [
        *_IDENTITY_OPTIONS,
        click.option("--device", help="cuda, mps or cpu [default: best available]."),
        click.option("--precision", type=click.Choice(PRECISIONS),
                     help="How photo vectors are computed: auto (the fastest that keeps cosine >= "
                          "--min-cosine to fp32 on a few of your photos, checked once and recorded), fp32 "
                          "(exact), bf16 (OpenVINO on CPUs with native bf16; GPUs), int8 (CPU, cosine to "
                          "fp32 ~0.9997), fp16 (GPU). Searching: auto or none uses whichever vectors the "
                          "index has. [default: auto when indexing, or CLIPDEX_PRECISION]"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _size(n: int) -> str:
    """Bytes in words: 512 B, 3.4 MB, 2.1 GB."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _fail(ctx: click.Context, message: str, code: int = EXIT_ERROR) -> None:
    click.echo(click.style("error: ", fg="red", bold=True) + message, err=True)
    ctx.exit(code)


class ClipdexGroup(click.Group):
    """Turns library errors, disk trouble and Ctrl-C into one clear line and an exit code.

    ``lazy`` names commands by the module that defines them (in its ``COMMANDS``): the
    module is imported only when the command is asked for (run, or listed in ``--help``)."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.lazy:
            return command
        module = importlib.import_module(self.lazy[cmd_name])
        found = {c.name: c for c in module.COMMANDS}.get(cmd_name)
        if found is None:  # a mistake in LAZY_COMMANDS, not the user's
            raise RuntimeError(f"{self.lazy[cmd_name]}.COMMANDS has no command {cmd_name!r}")
        return found

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClipdexError as e:
            _fail(ctx, str(e))
        except KeyboardInterrupt:
            if ctx.invoked_subcommand == "index":
                _fail(ctx, "interrupted; every finished batch is saved: run the same command again to resume.",
                      EXIT_INTERRUPTED)
            _fail(ctx, "interrupted; nothing more was done: run the command again to finish.", EXIT_INTERRUPTED)
        except BrokenPipeError:
            # `clipdex search … | head`: the reader left; say nothing more.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_ERROR)
        except OSError as e:
            from clipdex.fileio import describe_os_error

            described = describe_os_error(e)
            if described is None:
                raise
            where = e.filename if e.filename is not None else "a file"
            _fail(ctx, f"cannot use {where}: {described.problem}. {described.fix}")


@click.group(cls=ClipdexGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipdex")
def main() -> None:
    """clipdex: search and label photo collections with CLIP models (open_clip, Transformers CLIP and SigLIP).

    \b
    clipdex index ~/Pictures            embed every photo once (incremental)
    clipdex search "dog in the snow"    find photos by meaning
    clipdex status                      what the index holds
    clipdex duplicates                  groups of copies, keeper first
    clipdex topics                      what the collection holds, named
    clipdex remove --missing            forget folders that were moved or deleted
    """
    import logging

    # The library logs one-time work (model export) at INFO; show it, not third parties' logs.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("clipdex: %(message)s"))
    package_log = logging.getLogger("clipdex")
    if not package_log.handlers:
        package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    package_log.propagate = False


# -- index -------------------------------------------------------------------
class _Bar:
    """Rich progress bar that shows a rate (images/s, rows/s) and an ETA.

    Drive it with start/advance (the indexer's Progress), or call it with
    (done, total) (a BuildProgress: building a search index, importing).
    Forgiving, as a progress callback must be: a second ``start`` adds no
    second bar, ``advance`` before ``start`` (or after ``stop``) does nothing,
    and ``stop`` is safe to call at any time; a bar stopped can start again."""

    def __init__(self, label: str = "indexing", unit: str = "img") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=_console(stderr=True), transient=False)
        self.task: Any = None
        self.unit = unit

    def __call__(self, done: int, total: int) -> None:
        self.start(total)
        if self.task is not None:
            self.progress.update(self.task, completed=done, total=total)
            self._show_rate()

    def start(self, total: int) -> None:
        if total and self.task is None:
            self.progress.start()
            self.task = self.progress.add_task(self.unit, total=total, rate="")

    def advance(self, count: int) -> None:
        if self.task is None:
            return
        self.progress.advance(self.task, count)
        self._show_rate()

    def _show_rate(self) -> None:
        speed = next((t.speed for t in self.progress.tasks if t.id == self.task), None)
        if speed:
            self.progress.update(self.task, rate=f"{speed:,.1f} {self.unit}/s")

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()
            self.progress.remove_task(self.task)
            self.task = None


@main.command("index")
@click.argument("photo_dir", metavar="SOURCE", type=click.Path())
@index_option
@model_options
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE),
              help="Images per forward pass [default: 16 on CPU, 256 on GPU].")
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS),
              help="Decoding threads [default: CPU cores, at most 32]; with --engine ray, encoder actors "
                   "[default: one per GPU, else one].")
@click.option("--max-megapixels", type=FiniteFloat(0.0, MAX_MEGAPIXELS, min_open=True), default=178.0,
              show_default=True, help="Refuse larger images (decompression-bomb guard).")
@click.option("--retry-failed", is_flag=True,
              help="Try every file that failed before again (transient failures are retried anyway).")
@click.option("--add-model", is_flag=True,
              help="Add this model's vectors to an index that holds another model's.")
@click.option("--wait", is_flag=True, help="Wait for another indexing run on this index to finish.")
@click.option("--storage", type=click.Choice(list(STORAGE_OPTIONS)), default=None,
              help="How a new index (or a model new to it) stores vectors: fp16 halves the vector file "
                   "[default: fp32; an existing model keeps its own].")
@click.option("--min-cosine", type=FiniteFloat(0.0, 1.0, min_open=True), default=DEFAULT_MIN_COSINE,
              show_default=True, help="--precision auto's bar: the cosine to fp32 a faster precision must "
                                      f"keep on your photos; below {DEFAULT_MIN_COSINE:g} (e.g. "
                                      f"{INT8_MIN_COSINE:g}) allows int8.")
@click.option("--gpu-decode/--no-gpu-decode", default=None,
              help="On CUDA, decode JPEGs on the GPU (nvJPEG) so that Pillow does not starve it "
                   "[default: on; CLIPDEX_GPU_DECODE=0 turns it off].")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where photos are encoded: this machine, or a Ray cluster (pip install 'clipdex[ray]').")
@click.option("--address", metavar="auto|ray://HOST:PORT",
              help="--engine ray: the cluster to join [default: start Ray on this machine].")
@click.option("--gpus-per-worker", type=click.FloatRange(0, 64), default=0.0,
              help="--engine ray: GPUs per encoder actor (0: ONNX Runtime on CPU workers; 0.5: two per GPU).")
@click.option("--cpus-per-worker", type=click.FloatRange(0.1, 1024),
              help="--engine ray: CPUs an encoder actor holds (its ONNX Runtime threads) [default: 1].")
@click.option("--out", "out_uri", metavar="URI",
              help="--engine ray: where workers write their shards (a shared folder, s3://…, gs://…) "
                   "[default: a folder in the index, local Ray only].")
@click.option("--shard-rows", type=click.IntRange(1, 10_000_000),
              help="--engine ray: files per shard [default: by the run's size, 64 to 10,000].")
@click.option("--video-interval", type=FiniteFloat(min=MIN_INTERVAL, max=MAX_INTERVAL), metavar="SECONDS",
              help="Videos: sample a frame at least every SECONDS within a scene (and at every scene change); "
                   f"{MIN_INTERVAL:g} to {MAX_INTERVAL:g}. A video indexed at another interval is sampled again. "
                   f"[default: {DEFAULT_INTERVAL:g}]")
@click.option("--no-video", "no_video", is_flag=True,
              help="Index the folder's photos only: its videos are not sampled (those indexed before stay "
                   "as they are).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index_cmd(photo_dir: str, index_dir: str | None, model: str | None, weights: str | None,
              model_config: str | None, device: str | None, precision: str | None, batch_size: int | None,
              workers: int | None,
              max_megapixels: float, retry_failed: bool, add_model: bool, wait: bool, storage: str | None,
              min_cosine: float, gpu_decode: bool | None, engine: str, address: str | None,
              gpus_per_worker: float, cpus_per_worker: float | None, out_uri: str | None, shard_rows: int | None,
              video_interval: float | None, no_video: bool, as_json: bool) -> None:
    """Embed every photo and video under SOURCE (a folder, recursively) into the index.

    Runs are incremental: unchanged files are skipped, new and changed ones
    encoded, deleted ones dropped, renamed ones keep their vectors. A killed
    run keeps every finished batch; run the command again to resume.

    New vectors are computed in the fastest precision that keeps their cosine to
    fp32 >= --min-cosine on a few of your photos (--precision auto: checked once
    per model and kind of machine, recorded in the index); --precision fp32 is exact.

    Videos (mp4, mov, m4v, mkv, webm, avi) are indexed as moments: frames sampled
    at scene changes and at least every --video-interval seconds, each searched
    like a photo (`clipdex search` lists them as "video.mp4 @ 0:01:23").

    With --engine ray, SOURCE may also be a list of paths or URIs (.txt, .parquet)
    or an object-store prefix (s3://bucket/photos/): a Ray Data pipeline decodes
    and encodes the files to encode on the cluster, writes clip-retrieval shards
    to --out, and the index adopts them as `clipdex import` does.
    """
    from clipdex.indexer import IndexSettings

    ray_only = {"--address": address, "--gpus-per-worker": gpus_per_worker or None,
                "--cpus-per-worker": cpus_per_worker, "--out": out_uri, "--shard-rows": shard_rows}
    if engine == "ray":
        local_only = {"--device": device, "--gpu-decode/--no-gpu-decode": gpu_decode,
                      "--min-cosine": None if min_cosine == DEFAULT_MIN_COSINE else min_cosine}
        given = [name for name, value in local_only.items() if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to local "
                                   "indexing only: with --engine ray the workers' devices come from "
                                   "--gpus-per-worker, and precision auto is fp32 on CPU workers, fp16 on GPUs.")
        videos_given = [name for name, value in (("--video-interval", video_interval), ("--no-video", no_video))
                        if value]
        if videos_given:
            raise click.UsageError(f"{', '.join(videos_given)} {'applies' if len(videos_given) == 1 else 'apply'} "
                                   "to local indexing only: the Ray engine indexes photos and leaves videos "
                                   "alone. Index the folder's videos without --engine ray.")
        _index_on_ray(photo_dir, index_dir, model, weights, model_config, precision, batch_size, workers,
                      max_megapixels, retry_failed, add_model, wait, storage, address, gpus_per_worker,
                      cpus_per_worker, out_uri, shard_rows, as_json)
        return
    given = [name for name, value in ray_only.items() if value is not None]
    if given:
        raise click.UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --engine ray "
                               "only; add --engine ray, or leave them out to index on this machine.")
    _check_before_creating(photo_dir, index_dir, model, weights, model_config)
    settings = IndexSettings(batch_size=batch_size, max_megapixels=max_megapixels,
                             retry_failed=retry_failed, videos=not no_video)
    if video_interval is not None:
        settings.video_interval = video_interval
    if workers:
        settings.workers = workers
    if gpu_decode is not None:
        settings.gpu_decode = gpu_decode

    def run(index: "Index", progress: Any, search_progress: Any) -> Any:
        return index.add(photo_dir, settings=settings, progress=progress, allow_new_model=add_model, wait=wait,
                         search_progress=search_progress, storage=stored_name(storage), min_cosine=min_cosine)

    report = _run_index(run, index_dir, as_json, ModelError, model=model, weights=weights,
                        model_config=model_config, device=device, precision=precision)
    _print_index_report(report, index_dir, as_json)


def _run_index(run: Callable[["Index", Any, Any], Any], index_dir: str | None, as_json: bool,
               remove_new_on: type[Exception], **open_args: Any) -> Any:
    """``run(index, progress, search_progress)`` on the index opened (created) with ``open_args``,
    its bars drawn unless ``as_json``; an index this run created is taken back when ``run``
    raises ``remove_new_on`` and left it without a model (see :func:`_remove_if_empty`)."""
    from clipdex.index import Index

    bar = _Bar()
    search_bar = _Bar("search index", "rows")
    folder = _index_folder(index_dir)
    new = not folder.exists()
    try:
        with Index.open(index_dir, create=True, **open_args) as index:
            try:
                return run(index, None if as_json else bar, None if as_json else search_bar)
            finally:
                bar.stop()
                search_bar.stop()
    except remove_new_on:
        if new:
            _remove_if_empty(folder)
        raise


def _index_on_ray(source: str, index_dir: str | None, model: str | None, weights: str | None,
                  model_config: str | None, precision: str | None, batch_size: int | None, workers: int | None,
                  max_megapixels: float, retry_failed: bool, add_model: bool, wait: bool, storage: str | None,
                  address: str | None, gpus_per_worker: float, cpus_per_worker: float | None, out_uri: str | None,
                  shard_rows: int | None, as_json: bool) -> None:
    """``clipdex index SOURCE --engine ray``: see :mod:`clipdex.cluster.engine`."""
    from clipdex.cluster.engine import RayOptions, index_on_ray, require_ray
    from clipdex.indexer import IndexSettings

    require_ray()
    _check_before_creating(source, index_dir, model, weights, model_config, folder=False)
    settings = IndexSettings(batch_size=batch_size, max_megapixels=max_megapixels, retry_failed=retry_failed)
    options = RayOptions(address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                         cpus_per_worker=cpus_per_worker, out=out_uri, shard_rows=shard_rows)

    def run(index: "Index", progress: Any, search_progress: Any) -> Any:
        return index_on_ray(index, source, options=options, settings=settings, progress=progress,
                            search_progress=search_progress, allow_new_model=add_model, wait=wait,
                            storage=stored_name(storage))

    report = _run_index(run, index_dir, as_json, ClipdexError, model=model, weights=weights,
                        model_config=model_config, precision=precision)
    _print_index_report(report, index_dir, as_json)


def _print_index_report(report: Any, index_dir: str | None, as_json: bool) -> None:
    """The summary of an index run (local or Ray), as text or JSON."""
    if as_json:
        from clipdex import serialize

        click.echo(json.dumps(serialize.index_report(report), indent=2))
        return
    out = _console()
    out.print(f"[bold]{_t(report.root)}[/] with [bold]{_t(report.model)}[/] -> {_t(index_dir or 'default index')}")
    held = f"photos and {_count(report.videos_total, 'video')}" if report.videos_total else "photos"
    out.print(f"  indexed   {report.indexed_total - report.videos_total:>7}  {held} in this folder")
    out.print(f"  new       {report.new:>7}")
    out.print(f"  changed   {report.changed:>7}")
    out.print(f"  reused    {report.reused:>7}  (moved, renamed or duplicate: vector reused)")
    out.print(f"  unchanged {report.unchanged:>7}")
    if report.retried:
        out.print(f"  retried   {report.retried:>7}  (had failed before: unreadable then, a limit since raised,"
                  " or --retry-failed)")
    if report.dated:
        out.print(f"  dated     {report.dated:>7}  (indexed before: their EXIF date taken read now)")
    out.print(f"  removed   {report.removed:>7}{_removed_note(report)}")
    out.print(f"  skipped   {len(report.failed):>7}")
    rate = f", {report.images_per_second:.1f} img/s" if report.encoded else ""
    out.print(f"  encoded {report.encoded} in {report.seconds:.1f} s{rate}")
    if report.videos:
        out.print(f"  videos    {report.videos:>7}  sampled: {_count(report.frames, 'moment')} kept from "
                  f"{format_time(report.video_seconds)} of video{_realtime(report)}")
    if report.device_decoded:
        out.print(f"  decoded on the model's device {report.device_decoded} (JPEGs, batched; the rest by Pillow)")
    if report.precision:
        out.print(f"  precision {report.precision} — {report.precision_note}", markup=False)
    if getattr(report, "engine", "") == "ray" and (report.shards_written or report.resumed):
        resumed = f"; {report.resumed} files adopted from an earlier run's shards" if report.resumed else ""
        out.print(f"  on Ray: {report.workers} encoder actor(s), {report.shards_written} shards written to "
                  f"{report.out}; first shard after {report.startup_seconds:.1f} s{resumed}", markup=False)
    if report.failed:
        out.print("[bold yellow]skipped files:[/]")
        for failure in report.failed[:20]:
            out.print(f"  {failure.path}: {failure.reason}", markup=False)
        if len(report.failed) > 20:
            out.print(f"  … and {len(report.failed) - 20} more (clipdex status --failures)")
    partial = getattr(report, "partial", [])
    if partial:
        out.print("[bold yellow]videos indexed up to a cut or damage:[/]")
        for note in partial:
            out.print(f"  {note.path}: {note.reason}", markup=False)


def _realtime(report: Any) -> str:
    """', 25.3x real time' (seconds of video indexed per second of the video stage), where timed."""
    factor = report.video_realtime
    return f", {factor:.1f}× real time" if factor > 0 else ""


def _removed_note(report: Any) -> str:
    """Why a run removed every photo of its folder, and that coming back costs nothing."""
    if not report.removed or report.indexed_total:
        return ""
    keep = ("their vectors, labels and corrections stay in the index. If it is a disk that is not "
            "mounted, mount it and index again: nothing will be encoded again")
    if report.failed:
        return f"  (no photo of the folder can be read now, so all left the index; {keep})"
    return f"  (the folder is empty now, so all its photos left the index; {keep})"


def _index_folder(index_dir: str | None) -> "Path":
    from pathlib import Path

    from clipdex.settings import default_index_dir

    return Path(index_dir).expanduser() if index_dir else default_index_dir()


def _remove_if_empty(folder: "Path") -> None:
    """Take back an index this run created when its model could not be built (weights that do
    not load, a runtime refused): it holds no model, and leaving it would make the next run's
    pre-checks (made only for a new index) pass it by."""
    import shutil

    from clipdex.store import Store

    try:
        store = Store.open(folder, readonly=True)
    except ClipdexError:
        return
    try:
        if store.models():
            return
    finally:
        store.close()
    shutil.rmtree(folder, ignore_errors=True)


def _check_before_creating(photo_dir: str, index_dir: str | None, model: str | None, weights: str | None,
                           model_config: str | None, *, folder: bool = True) -> None:
    """A first run with a missing folder or unavailable weights must fail before it creates
    an index. (An existing index checks the folder itself: it can say that a folder it
    holds has gone, and how to forget it.) ``folder`` False: SOURCE may be a list or a URI
    (``--engine ray``), which the run checks itself."""
    from pathlib import Path

    from clipdex.indexer import check_folder
    from clipdex.models.registry import resolve_model
    from clipdex.models.runtimes.onnx import exporter_of
    from clipdex.models.sources import check_available
    from clipdex.settings import default_index_dir
    from clipdex.store.catalog import CATALOG_NAME

    if not (Path(index_dir) if index_dir else default_index_dir()).joinpath(CATALOG_NAME).exists():
        if folder:
            check_folder(photo_dir)
        spec = resolve_model(model, weights, model_config)
        if spec.family == "hf":
            _check_transformers(spec)
        check_available(spec, exporter_of(spec))


def _check_transformers(spec: "ModelSpec") -> None:
    """A Transformers checkpoint not exported yet needs the transformers package (once: later
    runs on the CPU use the export)."""
    import importlib.util

    from clipdex.models.onnx_export import read_meta
    from clipdex.models.runtimes.hf_torch import INSTALL_HINT

    if read_meta(spec) is None and importlib.util.find_spec("transformers") is None:
        raise ModelError(f"{spec.name} is a Transformers checkpoint: reading it needs the transformers package, "
                         f"which is not installed. Install it with `{INSTALL_HINT}`.")


# -- search ------------------------------------------------------------------
class QueryCommand(click.Command):
    """A command whose free words are a query, which may hold words that start with ``-``.

    A word is an option of the command when it is exactly one of its names
    (``-n``, ``--limit``), ``--name=value``, or a short option with a number
    attached (``-n2``, ``-n20``: an option that takes a number, and the rest of
    the word is one). Every other word, including ``-mountains`` (text is never
    taken as ``-m`` with a value attached), ``-people`` or ``-happy``, is part
    of the query, so ``clipdex search "-people + beach"`` and ``clipdex search
    beach -people`` search instead of failing as unknown options. After ``--``
    every word is the query.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _query_after_separator(self.get_params(ctx), args, ctx))


def _attached_value(param: click.Option, text: str) -> bool:
    """Whether ``text`` glued to ``param``'s short name (``-n2``) is meant as its value: only
    for an option that takes a number, when ``text`` is one (range checks stay click's)."""
    kinds = ((click.types.IntParamType, int), (click.types.FloatParamType, float))
    for kind, number in kinds:
        if isinstance(param.type, kind):
            try:
                number(text)
            except ValueError:
                return False
            return True
    return False


def _query_after_separator(params: Sequence[click.Parameter], args: Sequence[str],
                           ctx: click.Context | None = None) -> list[str]:
    """``args`` with the command's options first and every query word after ``--``.

    An option that needs a value and has none (``search dog -n``) fails as click
    fails it: "Option '-n' requires an argument."
    """
    by_name: dict[str, click.Option] = {}
    for each in params:
        if isinstance(each, click.Option):
            for name in (*each.opts, *each.secondary_opts):
                by_name[name] = each
    options: list[str] = []
    words: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            words += args[i + 1:]
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        param = by_name.get(name)
        if param is None and len(arg) > 2 and arg[0] == "-" and arg[1] != "-":
            short = by_name.get(arg[:2])
            if short is not None and not (short.is_flag or short.count) and _attached_value(short, arg[2:]):
                options += [arg[:2], arg[2:]]
                i += 1
                continue
        if param is None:
            words.append(arg)
        else:
            options.append(arg)
            if name == arg and not (param.is_flag or param.count):
                if i + 1 >= len(args) or args[i + 1] == "--":
                    raise click.BadOptionUsage(arg, f"Option {arg!r} requires an argument.", ctx)
                i += 1
                options.append(args[i])  # its value, even when it starts with "-"
        i += 1
    return options + ["--", *words] if words else options


def _query_text(words: Sequence[str]) -> str:
    """The shell words of a query as one query string (quoted where a word needs it)."""
    if len(words) == 1:
        return words[0]

    from clipdex.search import split_query

    def plain(word: str) -> bool:
        try:
            return split_query(word) == [word]
        except ValueError:
            return False

    return " ".join(word if plain(word) else shlex.quote(word) for word in words)


@main.command("search", cls=QueryCommand)
@click.argument("query", nargs=-1, type=click.UNPROCESSED)
@click.option("-n", "--limit", "k", type=click.IntRange(1, MAX_RESULTS), default=10, show_default=True,
              help="How many results.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="Skip this many results (paging).")
@click.option("--image", "images", multiple=True, type=click.Path(),
              help="Add an example image (file or indexed photo); repeatable.")
@index_option
@model_options
@click.option("--per-video", type=click.IntRange(1, MAX_RESULTS), metavar="N",
              help="At most N moments of any one video [default: every distinct moment; hits seconds apart "
                   "in one scene are one moment].")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"query", "offset", "count", "filters", "results": [{"rank", "score", "id", '
                   '"path", "name"}]}; a moment of a video adds "t" (seconds), "video_id" and "moment" '
                   '("video.mp4 @ 0:01:23"), its "path" being the video\'s and its "id" the frame\'s.')
@click.option("--csv", "as_csv", is_flag=True,
              help="Print CSV: rank, score, id, path, t (a moment's seconds, empty for a photo).")
@click.option("--grid", type=click.Path(dir_okay=False),
              help="Also draw a contact sheet to this image file (.jpg, .png, .webp).")
@click.option("--folder", "folders", multiple=True, type=click.Path(file_okay=False),
              help="Only photos under this folder; repeatable (any of them).")
@click.option("--after", metavar="DATE", help="Only photos taken from DATE on (2021, 2021-06, 2021-06-01, "
                                               "2021-06-01T18:30; EXIF date taken, else the file's time).")
@click.option("--before", metavar="DATE", help="Only photos taken before DATE (same forms as --after).")
@click.option("--label", "label_filter", metavar="SET=LABEL",
              help="Only photos with LABEL in the stored label set SET (a correction wins), e.g. "
                   "taken_time=night.")
@click.option("--only", "media", type=click.Choice(["photos", "videos"]),
              help="Only photos, or only moments of videos.")
@click.option("--exact", is_flag=True, help="Score every photo, even where an approximate index exists.")
def search_cmd(query: tuple[str, ...], k: int, offset: int, images: tuple[str, ...],
               index_dir: str | None, model: str | None, weights: str | None,
               model_config: str | None, device: str | None, precision: str | None, as_json: bool, as_csv: bool,
               grid: str | None, folders: tuple[str, ...], after: str | None, before: str | None,
               label_filter: str | None, exact: bool, per_video: int | None, media: str | None) -> None:
    """Find photos and moments of videos by meaning: text, example images, or both.

    \b
    Quote the query; its syntax:
      clipdex search "dog in the snow"
      clipdex search "beach -people"            minus a word
      clipdex search "-people + beach"          a query may start with a minus
      clipdex search 'beach -"people walking"'  minus several words
      clipdex search '"red car" + night'        several terms
      clipdex search "2*snow + dog"             weights (at most 100)
      clipdex search "@photos/dog.jpg + snow"   an example image (file or indexed photo)
      clipdex search "@party.mp4@83.5"          a moment of an indexed video (or @party.mp4@1:23.5)
      clipdex search '@caf\\xe9.jpg'             a photo by the name clipdex shows
      clipdex search -- -people beach           after --, every word is the query
      clipdex search dog --folder ~/Pictures/2021 --after 2021-06 --before 2021-07
      clipdex search "city at night" --label taken_space=outdoor
      clipdex search "blowing out candles" --only videos --per-video 1

    A word that starts with "-" is part of the query unless it is one of the
    options below, written whole (-n 5, --limit 5, --limit=5) or as -n with
    its number attached (-n5): "-mountains" is a query word, never "-m
    ountains". Results are ordered by score, ties by path, the same on every
    page (--offset). A moment of a video shows as "party.mp4 @ 0:01:23"; a
    video is listed once per distinct moment, best first (--per-video N caps it).
    """
    from clipdex.index import Index

    text = _query_text(query)
    for image in images:
        text = f"{text} + {shlex.quote('@' + image)}" if text.strip() else shlex.quote("@" + image)
    if not text.strip():
        raise click.UsageError("give a query, e.g. clipdex search \"dog in the snow\"")
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    _check_output(grid, "--grid", image=True)
    from clipdex.search.filters import SearchFilter

    label = None
    if label_filter is not None:
        name, sep, value = label_filter.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise click.BadParameter("write it as SET=LABEL, e.g. taken_time=night", param_hint="--label")
        label = (name.strip(), value.strip())
    filters = SearchFilter.make(label=label, after=after, before=before, media=media,
                                folders=[f if "://" in f else os.path.abspath(os.path.expanduser(f))
                                         for f in folders])  # an import's https://host as it is
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config,
                    device=device, precision=precision) as index:
        results = index.search(text, k=k, offset=offset, filters=filters or None, exact=exact,
                               per_video=per_video)
        # The files to open: a name that is not UTF-8 opens by its real bytes, not the name shown.
        opened = {i: f.fs_path for i, f in index.store.files_by_ids([r.file_id for r in results]).items()} \
            if grid else {}
    if grid:
        from clipdex.grid import Tile, draw_grid, tile_name

        # A moment's tile is its frame (decoded from the video), captioned with the video's name and time.
        draw_grid([Tile(opened.get(r.file_id, r.image_path), f"#{r.rank}  {r.score:.3f}\n{tile_name(r.image_path)}")
                   for r in results], grid)
    if as_json:
        from clipdex import serialize

        click.echo(json.dumps(serialize.search_results(text, offset, results, filters or None), indent=2))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["rank", "score", "id", "path", "t"])
        writer.writerows([r.rank, f"{r.score:.6f}", r.file_id, r.path, "" if r.t is None else f"{r.t:.3f}"]
                         for r in results)
    else:
        out = _console()
        out.print(f"[bold]{_t(text)}[/]  ({len(results)} results)")
        out.print(f"[dim]{'rank':>5}  {'score':>6}  path[/]")
        for r in results:
            out.print(f"{r.rank:>5}  {r.score:>6.3f}  {_shown(r)}", markup=False)
    if grid:
        _console(stderr=True).print(f"contact sheet: {grid}", markup=False)


def _shown(result: Any) -> str:
    """A result as people write it: the photo's path, or a moment's ``video.mp4 @ 0:01:23``."""
    return result.path if result.t is None else f"{result.path} @ {format_time(result.t)}"


# -- classify ----------------------------------------------------------------
@main.command("classify")
@click.option("--name", help="Name of the label set (becomes the column name).")
@click.option("--labels", "labels_text", help="Comma-separated labels, e.g. dawn,day,dusk,night.")
@click.option("--template", "templates", multiple=True,
              help='Prompt template with {} for the label (repeatable), or a built-in list: '
                   'imagenet (CLIP\'s 80), imagenet-simple, photo. [default: "a photo of {}."]')
@click.option("--labels-file", type=click.Path(dir_okay=False),
              help="TOML, YAML or JSON file with one or more label sets.")
@click.option("--set", "set_names", multiple=True, help="Use only these sets of --labels-file.")
@click.option("--multi-label", is_flag=True, help="Judge each label on its own (several may apply).")
@click.option("--threshold", type=PROBABILITY, default=DEFAULT_THRESHOLD, show_default=True,
              help="Multi-label: probability (0 to 1) to say yes.")
@click.option("--min-prob", type=PROBABILITY,
              help="Below this probability (0 to 1) the prediction is 'uncertain'.")
@click.option("--top-k", type=click.IntRange(min=1), help="Also add a <set>_top column with the k best labels.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write predictions: .csv or .parquet.")
@click.option("--metadata", type=click.Path(dir_okay=False),
              help="Your photo table (CSV) to append the predictions to.")
@click.option("--key", help="Column of --metadata naming the photo (file stem, name or path).")
@click.option("--metadata-out", type=click.Path(dir_okay=False),
              help="Where the joined table goes [default: <metadata>-pred.csv].")
@click.option("--grid", type=click.Path(dir_okay=False),
              help="Draw a review grid per set to this image file (.jpg, .png, .webp).")
@click.option("--per-label", type=click.IntRange(1, MAX_PER_LABEL), default=8, show_default=True,
              help="Review grid: photos per label.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Review grid: random seed.")
@index_option
@model_options
@click.option("--json", "as_json", is_flag=True,
              help='Print per-photo results as JSON: [{"set", "labels", "scoring" ("softmax" over labels, or '
                   '"sigmoid" per label: SigLIP), "photos": [{"id", "path", "label", "prob", "probs"}], '
                   '"videos": [{"id", "path", "moments", "label", "share", "shares", "counts"}]}] (a moment of a '
                   'video is one of "photos"; "videos", where there are any, has each video\'s share of moments '
                   'per label).')
def classify_cmd(name: str | None, labels_text: str | None, templates: tuple[str, ...],
                 labels_file: str | None, set_names: tuple[str, ...], multi_label: bool,
                 threshold: float, min_prob: float | None, top_k: int | None, out: str | None,
                 metadata: str | None, key: str | None, metadata_out: str | None, grid: str | None,
                 per_label: int, seed: int, index_dir: str | None, model: str | None,
                 weights: str | None, model_config: str | None, device: str | None, precision: str | None,
                 as_json: bool) -> None:
    """Label every indexed photo, and every moment of a video, with label sets you make up (zero-shot).

    \b
    clipdex classify --name taken_time --labels dawn,day,dusk,night --template "a photo taken at {}"
    clipdex classify --labels-file sets.toml --metadata photos.csv --key photo_id --grid review.jpg

    Reads the stored image vectors (no image is decoded again); results are saved
    in the index for `clipdex review` and `clipdex evaluate`. Each video is also
    summarised as the share of its moments per label; in --out and --metadata
    tables a video's row holds its majority label and the shares of its moments.
    """
    import time

    from clipdex.index import Index
    from clipdex.labels import (
        DEFAULT_TEMPLATES,
        load_label_sets,
        make_label_set,
        parse_labels_arg,
    )

    sets = []
    if labels_file:
        sets += load_label_sets(labels_file, set_names or None)
    if labels_text or name:
        if not (labels_text and name):
            raise click.UsageError("--name and --labels go together (or use --labels-file)")
        sets.append(make_label_set(name, parse_labels_arg(labels_text), templates or DEFAULT_TEMPLATES,
                                   multi_label=multi_label, threshold=threshold))
    if not sets:
        raise click.UsageError("give a label set: --name NAME --labels a,b,c, or --labels-file FILE")
    if metadata and not key:
        raise click.UsageError("--metadata needs --key COLUMN (the column naming each photo)")
    if metadata_out and not metadata:
        raise click.UsageError("--metadata-out needs --metadata TABLE (the table to join the predictions onto)")
    from pathlib import Path

    from clipdex.export import join_metadata, read_table, write_predictions
    from clipdex.video_labels import video_labels

    # Every output and the table are checked before the prompts are encoded.
    target = None
    if metadata:
        assert key is not None
        read_table(metadata, key)  # readable, and has the key column
        target = metadata_out or str(Path(metadata).with_name(Path(metadata).stem + "-pred.csv"))
        _check_output(target, "--metadata-out")
    _check_output(out, "--out", table=True)
    grid_files = [_numbered(grid, i, len(sets)) for i in range(len(sets))] if grid else []
    for grid_file in grid_files:
        _check_output(grid_file, "--grid", image=True)
    started = time.perf_counter()
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config,
                    device=device, precision=precision) as index:
        results = index.classify(sets, min_prob=min_prob)
        videos = [video_labels(index.store, r) for r in results]  # each video's share of moments per label
    seconds = time.perf_counter() - started
    if out:
        write_predictions(results, out, top_k=top_k, videos=videos)
    report = None
    if metadata and target:
        assert key is not None
        report = join_metadata(results, metadata, key, target, top_k=top_k, videos=videos)
    grids = []
    if grid_files:
        from clipdex.review import draw_review

        grids = [draw_review(r, grid_file, per_label=per_label, seed=seed)
                 for r, grid_file in zip(results, grid_files)]
    if as_json:
        from clipdex import serialize

        # A set that labelled moments of videos adds "videos": each one's share of moments per label.
        click.echo(json.dumps([dict(serialize.classification(r, top_k),
                                    **({"videos": [v.to_dict() for v in summaries]} if summaries else {}))
                               for r, summaries in zip(results, videos)], indent=2))
        return
    console = _console()
    for r, summaries in zip(results, videos):
        prompts = sum(len(label.prompts) for label in r.label_set.labels)
        mode = "multi-label" if r.label_set.multi_label else "single-label"
        console.print(f"[bold]{_t(r.label_set.name)}[/]: {len(r.labels)} labels, {prompts} prompts "
                      f"({len(r.label_set.templates)} templates), {mode}, {_classified(r, summaries)}")
        if r.scores_text:
            console.print(f"  {r.scores_text}", markup=False)
        total = max(1, len(r.paths))
        for label, count in r.counts().items():
            bar = "█" * round(30 * count / total)
            console.print(f"  {label:<14} {count:>7} {100 * count / total:5.1f}%  {bar}", markup=False)
        _print_video_labels(console, summaries, out)
    console.print(f"classified in {seconds:.2f} s (prompts encoded once; image vectors read from the index)")
    if out:
        console.print(f"predictions: {out}", markup=False)
    if report:
        console.print(f"joined onto {metadata} by {key!r}: {report.matched} of {report.rows} rows "
                      f"matched a photo, {report.rows_without_image} rows without one, "
                      f"{len(report.images_without_row)} photos without a row -> {target}", markup=False)
        for path in report.images_without_row[:5]:
            console.print(f"  no row for {path}", markup=False)
        for theirs, ours in report.renamed.items():
            console.print(f"  your table already has a column {theirs!r}: clipdex's is written as {ours!r}",
                          markup=False)
    if grids:
        console.print("review grid: " + ", ".join(grids), markup=False)


def _classified(result: Any, summaries: Sequence[Any]) -> str:
    """'12 photos' or '12 photos and 24 moments of 2 videos': what a label set labelled."""
    moments = sum(v.moments for v in summaries)
    photos = _count(len(result.paths) - moments, "photo")
    return f"{photos} and {_count(moments, 'moment')} of {_count(len(summaries), 'video')}" if summaries else photos


def _print_video_labels(console: Any, summaries: Sequence[Any], out: str | None) -> None:
    """Each video's share of moments per label: 'party.mp4  night 62%  day 38%  (24 moments)'."""
    if not summaries:
        return
    console.print("  per video (share of its moments):")
    for video in summaries[:MAX_VIDEO_LINES]:
        console.print(f"  {video.path}  {video.describe(MAX_SHARES_SHOWN)}", markup=False)
    if len(summaries) > MAX_VIDEO_LINES:
        where = f"{out} lists" if out else "--out FILE.csv or --json list"
        console.print(f"  … and {len(summaries) - MAX_VIDEO_LINES} more videos ({where} them all)", markup=False)


def _numbered(path: str, i: int, count: int) -> str:
    """``out.jpg`` for one set; ``out-1.jpg``, ``out-2.jpg``… for several."""
    if count == 1:
        return path
    stem, dot, ext = path.rpartition(".")
    return f"{stem}-{i + 1}.{ext}" if dot else f"{path}-{i + 1}"


@main.command("review")
@click.argument("name")
@click.option("--grid", type=click.Path(dir_okay=False), required=True,
              help="Image file to draw (.jpg, .png, .webp).")
@click.option("--per-label", type=click.IntRange(1, MAX_PER_LABEL), default=8, show_default=True,
              help="Photos per label.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed (same seed, same grid).")
@click.option("--mode", type=click.Choice(["random", "least-confident", "most-confident"]),
              default="random", show_default=True, help="Which photos of each label to show.")
@index_option
@model_choice
def review_cmd(name: str, grid: str, per_label: int, seed: int, mode: str,
               index_dir: str | None, model: str | None, weights: str | None, model_config: str | None) -> None:
    """Draw a grid of example photos per label of label set NAME (from the index)."""
    from clipdex.index import Index
    from clipdex.review import draw_review

    _check_output(grid, "--grid", image=True)
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config) as index:
        result = index.classification(name)
        model_name = index.model_record().name
    draw_review(result, grid, per_label=per_label, seed=seed, mode=mode)
    _console().print(f"{name} ({model_name}): {len(result.paths)} photos, {per_label} per label ({mode}) -> {grid}",
                     markup=False)


@main.command("evaluate")
@click.argument("name")
@click.option("--metadata", type=click.Path(dir_okay=False),
              help="CSV table holding the ground truth [default: the corrections made in `clipdex serve`].")
@click.option("--key", help="Column of --metadata naming the photo (file stem, name or path).")
@click.option("--truth", "truth_column", help="Column with the true labels [default: NAME].")
@click.option("--heatmap", type=click.Path(dir_okay=False),
              help="Draw the confusion matrix to this image file (.png, .jpg, .webp).")
@index_option
@model_choice
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate_cmd(name: str, metadata: str | None, key: str | None, truth_column: str | None,
                 heatmap: str | None, index_dir: str | None, model: str | None, weights: str | None,
                 model_config: str | None, as_json: bool) -> None:
    """Compare label set NAME's predictions with a ground-truth column of your table
    (or, without --metadata, with the corrections people made in the web app)."""
    from clipdex.evaluate import draw_confusion
    from clipdex.index import Index

    if metadata and not key:
        raise click.UsageError("--metadata needs --key COLUMN (the column naming each photo)")
    _check_output(heatmap, "--heatmap", image=True)
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config) as index:
        evaluation, matched = index.evaluate(name, metadata, key, truth_column or name)
        model_name = index.model_record().name
    if heatmap:
        draw_confusion(evaluation, heatmap, title=f"{name} vs {truth_column or name}")
    # Truth labels that are not labels of the set: those rows are left out of the metrics.
    excluded: dict[str, int] = dict(getattr(evaluation, "excluded", None) or {})
    if as_json:
        click.echo(json.dumps(dict(evaluation.to_dict(), set=name, model=model_name, rows_matched=matched,
                                   excluded=excluded),
                              indent=2))
        return
    out = _console()
    source = f"column {truth_column or name!r} of {metadata}" if metadata else "the corrections"
    out.print(f"[bold]{_t(name)}[/] ({_t(model_name)}) vs {_t(source)}: {evaluation.count} photos with both")
    if excluded:
        shown = ", ".join(f"{label} ({count})"
                          for label, count in sorted(excluded.items(), key=lambda item: (-item[1], item[0])))
        out.print(f"left out {sum(excluded.values())} rows whose truth is not a label of the set: {shown}",
                  markup=False)
    out.print(f"  accuracy           {evaluation.accuracy:.3f}")
    out.print(f"  balanced accuracy  {evaluation.balanced_accuracy:.3f}")
    out.print(f"  macro-F1           {evaluation.macro_f1:.3f}")
    out.print(f"  {'class':<14} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for c in evaluation.per_class:
        out.print(f"  {c.label:<14} {c.precision:>9.3f} {c.recall:>7.3f} {c.f1:>6.3f} {c.support:>8}",
                  markup=False)
    width = max([len(c) for c in evaluation.classes] + [10])
    out.print("  confusion (rows: truth, columns: predicted)")
    out.print("  " + " " * width + " " + " ".join(f"{c[:8]:>8}" for c in evaluation.classes), markup=False)
    for label, row in zip(evaluation.classes, evaluation.confusion):
        out.print(f"  {label:<{width}} " + " ".join(f"{v:>8}" for v in row), markup=False)
    if heatmap:
        out.print(f"heatmap: {heatmap}", markup=False)


@main.group("labels")
def labels_group() -> None:
    """Label sets and prompt templates."""


@labels_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
def labels_show_cmd(file: str) -> None:
    """Check a label file and show its sets, labels and prompts."""
    from clipdex.labels import UNCERTAIN, load_label_sets

    out = _console()
    for label_set in load_label_sets(file):
        mode = f"multi-label, threshold {label_set.threshold}" if label_set.multi_label else "single-label"
        if label_set.min_prob is not None:
            mode += f", below {label_set.min_prob:g} a photo is {UNCERTAIN!r}"
        out.print(f"[bold]{_t(label_set.name)}[/] ({mode}, {len(label_set.templates)} templates)")
        for label in label_set.labels:
            sample = "; ".join(label.prompts[:3]) + (" …" if len(label.prompts) > 3 else "")
            out.print(f"  {label.name:<14} {len(label.prompts):>4} prompts: {sample}", markup=False)
        if label_set.multi_label and label_set.background:  # single-label sets compare the labels alone
            sample = "; ".join(label_set.background[:3]) + (" …" if len(label_set.background) > 3 else "")
            out.print(f"  {'(background)':<14} {len(label_set.background):>4} prompts: {sample}  (each label is "
                      "scored against these by a softmax model; a sigmoid model uses its bias)", markup=False)


@labels_group.command("templates")
def labels_templates_cmd() -> None:
    """List the built-in template lists (usable as --template NAME)."""
    from clipdex.labels import builtin_templates

    for name, items in builtin_templates().items():
        _console().print(f"[bold]{_t(name)}[/] ({len(items)}): " + _t("; ".join(items[:3]))
                         + (" …" if len(items) > 3 else ""))


# -- bench -------------------------------------------------------------------
@main.command("bench")
@click.argument("photo_dir", required=False, type=click.Path(file_okay=False))
@click.option("--devices", help="Comma-separated: cpu,cuda,mps [default: what this machine has].")
@click.option("--batch-sizes", default="8,16,32,64", show_default=True, callback=lambda ctx, param, value:
              _batch_sizes(value), help=f"Comma-separated, each 1 to {MAX_BATCH_SIZE}.")
@click.option("--precisions", default="fp32,bf16,int8,auto", show_default=True,
              callback=lambda ctx, param, value: _precisions(value),
              help="Comma-separated: auto, fp32, bf16, int8, fp16 (one this machine cannot run says why).")
@click.option("--photos", type=click.IntRange(1, 10_000), default=64, show_default=True,
              help="How many photos to decode and encode.")
@click.option("--model", "-m",
              help="Registry name, ARCH/PRETRAINED, or hf:OWNER/NAME or hf:/folder [default: ViT-B-32].")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local checkpoint file.")
@click.option("--model-config", type=click.Path(dir_okay=False), help="Custom architecture JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def bench_cmd(photo_dir: str | None, devices: str | None, batch_sizes: list[int], precisions: list[str],
              photos: int,
              model: str | None, weights: str | None, model_config: str | None, as_json: bool) -> None:
    """Time image encoding on this machine per device x batch size x precision.

    Uses your photos (PHOTO_DIR) or generated ones; touches no index.
    """
    from clipdex.benchmark import available_devices, cpu_name, run_bench
    from clipdex.models.registry import resolve_model

    spec = resolve_model(model, weights, model_config)
    device_list = [d.strip() for d in devices.split(",") if d.strip()] if devices else available_devices()
    err = _console(stderr=True)
    result = run_bench(spec, device_list, batch_sizes, precisions, photo_dir, photos,
                       progress=None if as_json else lambda m: err.print(f"[dim]{_t(m)}…[/]"))
    if as_json:
        click.echo(json.dumps({"model": spec.key, "machine": cpu_name(), "features": result.features,
                               "photos": result.photos,
                               "decode_images_per_second": result.decode_images_per_second,
                               "device_decode_images_per_second": result.device_decode_images_per_second,
                               "rows": [vars(r) for r in result.rows]}, indent=2))
        return
    out = _console()
    out.print(f"[bold]{_t(spec.name)}[/] ({_t(spec.key)}) on {_t(cpu_name())}; {result.photos} photos "
              f"from {_t(photo_dir or 'generated images')}")
    out.print(f"CPU: {_t(result.features)}")
    out.print(f"decode + preprocess: {result.decode_images_per_second:.1f} img/s (one thread, Pillow)")
    for device, rate in result.device_decode_images_per_second.items():
        out.print(f"decode + preprocess on {_t(device)} (nvJPEG, as `clipdex index` there): {rate:.1f} img/s")
    out.print(f"{'device':<7} {'precision':<10} {'backend':<8} {'batch':>5} {'img/s':>8} {'ms/img':>7}")
    reasons: dict[tuple[str, str], str] = {}
    for r in result.rows:
        precision = f"auto>{r.chosen}" if r.chosen else r.precision
        if r.error:
            out.print(f"{r.device:<7} {precision:<10} {'-':<8} {r.batch_size:>5} {'-':>8} {'-':>7}  {r.error}",
                      markup=False)
        else:
            out.print(f"{r.device:<7} {precision:<10} {r.backend:<8} {r.batch_size:>5} "
                      f"{r.images_per_second:>8.1f} {r.ms_per_image:>7.1f}", markup=False)
        if r.chosen:
            reasons[(r.device, r.chosen)] = r.reason
    for (device, chosen), reason in reasons.items():
        out.print(f"auto on {device} chose {chosen}: {reason}", markup=False)


def _batch_sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of whole numbers") from None
    if not sizes or not all(1 <= b <= MAX_BATCH_SIZE for b in sizes):
        raise click.BadParameter(f"give batch sizes from 1 to {MAX_BATCH_SIZE}, e.g. 8,16,32")
    return sizes


def _precisions(value: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in PRECISIONS]
    if not chosen or unknown:
        raise click.BadParameter(f"{', '.join(unknown) or value!r}: choose from {', '.join(PRECISIONS)}")
    return chosen


def _check_port(host: str, port: int) -> None:
    """Say so at once when ``host``:``port`` cannot be listened on (another server holds it, or the
    address is not this machine's), before the model loads and the app claims to be serving."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ClipdexError(f"{host}:{port} is in use (another clipdex serve, or another server): "
                               "pick another with --port N.") from None
        raise ClipdexError(f"cannot listen on {host}:{port} ({e.strerror}): pick another --port N or "
                           "--host ADDRESS (an address of this machine).") from None


# -- serve -------------------------------------------------------------------
@main.command("serve")
@index_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (another than localhost exposes your photos).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--metadata", type=click.Path(dir_okay=False),
              help="Your photo table (CSV): its columns are shown on each photo's page.")
@click.option("--key", help="Column of --metadata naming the photo (file stem, name or path).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Another host name the app answers to (repeatable), e.g. the machine's name on your "
                   "network; requests naming any other host are refused (DNS-rebinding guard).")
@model_choice
def serve_cmd(index_dir: str | None, host: str, port: int, metadata: str | None, key: str | None,
              allow_hosts: tuple[str, ...], model: str | None, weights: str | None,
              model_config: str | None) -> None:
    """Open the web app: search, photo pages, label review and corrections.

    The app answers to localhost, the --host address and each --allow-host NAME.
    """
    import uvicorn

    from clipdex.index import Index
    from clipdex.web import create_app
    from clipdex.web.app import DEFAULT_ALLOWED_HOSTS, load_metadata

    if metadata and not key:
        raise click.UsageError("--metadata needs --key COLUMN (the column naming each photo)")
    _check_port(host, port)
    index = Index.open(index_dir, model=model, weights=weights, model_config=model_config)
    table = load_metadata(index, metadata, key) if metadata and key else None
    err = _console(stderr=True)
    err.print(f"loading the model of {index.path} …", markup=False)
    try:
        index.encoder.encode_texts(["warm up"])  # load (and export, the first time) before serving
    except ModelError as e:  # an imported index without its weights here: photos still search
        err.print(f"[bold yellow]text queries and uploaded photos are unavailable[/]: {_t(str(e))}\n"
                  "Searching by an indexed photo (@name, More like this), filters and label pages work.")
    allowed = tuple(dict.fromkeys((*DEFAULT_ALLOWED_HOSTS, host, *allow_hosts)))  # in order, once each
    app = create_app(index, table, allowed_hosts=allowed)
    shown = f"[{host}]" if ":" in host else host
    held = index.status()
    videos = f" and {_count(held.videos, 'video')}" if held.videos else ""
    err.print(f"clipdex is serving {_count(held.indexed - held.videos, 'photo')}{videos} at "
              f"[bold]{_t(f'http://{shown}:{port}/')}[/] (Ctrl-C stops it)")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        index.close()


# -- status ------------------------------------------------------------------
@main.command("status")
@index_option
@click.option("--failures", "all_failures", is_flag=True, help="List every failed file.")
@click.option("--verify", is_flag=True,
              help="Also read every stored vector and check it (zeroed or garbage rows; reads the vector files).")
@click.option("--json", "as_json", is_flag=True,
              help='Print as JSON: {"path", "roots", "missing_roots", "indexed", "failed", "models", "failures"}, '
                   'and "videos" and "moments" where the index has videos ("indexed" counts videos too).')
def status_cmd(index_dir: str | None, all_failures: bool, verify: bool, as_json: bool) -> None:
    """Show an index's folders, models, counts and failures (and folders that are gone)."""
    from clipdex.index import Index

    with Index.open(index_dir) as index:
        status = index.status(verify=verify)
        failures = index.failures()
    videos, moments = status.videos, status.moments
    if as_json:
        from clipdex import serialize

        click.echo(json.dumps(serialize.index_status(status, failures), indent=2))
        return
    missing = set(status.missing_roots)
    out = _console()
    out.print(f"[bold]index[/]   {_t(status.path)}" + ("  (read-only here)" if status.readonly else ""))
    out.print(f"folders  {_t(', '.join(r for r in status.roots if r not in missing) or '-')}")
    if missing:
        out.print(f"[bold yellow]gone[/]     {_t(', '.join(status.missing_roots))}")
        out.print(f"         ({_count(status.missing_photos, 'photo')} no longer on disk, not searched. "
                  "`clipdex remove --missing` forgets these folders; after a move, "
                  "`clipdex index NEW_PLACE` reuses their vectors)")
    out.print(f"photos   {status.indexed - videos} indexed, {status.failed} failed")
    if videos or moments:  # status.indexed counts a video's own row; its frames are counted apart
        out.print(f"videos   {videos} indexed: {_count(moments, 'moment')} searched like photos")
    for m in status.models:
        scores = ", per-label sigmoid scores" if m.scoring == "sigmoid" else ""
        held = f"{m.photos} photos" + (f", {_count(m.moments, 'moment')} of videos" if m.moments else "")
        out.print(f"model    {m.name} ({m.key}), {m.dim}-d{scores}: {held}", markup=False)
        out.print(f"vectors  {_precision_counts(m.precisions)}", markup=False)
        for choice in m.choices:
            out.print(f"auto     {_choice_line(choice, status.host)}", markup=False)
        if m.search and not m.search_stale:  # a stale one is a problem, listed below with its fix
            out.print(f"search   {m.search}", markup=False)
        if m.reclaimable_bytes:
            out.print(f"space    {_size(m.reclaimable_bytes)} reclaimable (vectors no photo uses any more): "
                      "run `clipdex compact`", markup=False)
    for problem in status.problems:
        out.print(f"[bold red]problem[/]  {_t(problem)}")
    shown = failures if all_failures else failures[:20]
    if shown:
        out.print("[bold yellow]failures:[/]")
        for f in shown:
            out.print(f"  {f.path}: {f.reason}", markup=False)
        if len(failures) > len(shown):
            out.print(f"  … and {len(failures) - len(shown)} more (--failures lists all)")


def _precision_counts(counts: Mapping[str, int]) -> str:
    """'1,000: 600 bf16, 400 fp32' (vectors in use per precision they were computed in)."""
    total = sum(counts.values())
    if len(counts) <= 1:
        return f"{total:,}" + (f", all {next(iter(counts))}" if counts else "")
    return (f"{total:,}: " + ", ".join(f"{n:,} {p}" for p, n in counts.items())
            + " (one vector set, searched together)")


def _choice_line(choice: Any, host: str | None) -> str:
    """One recorded --precision auto choice: which, for which host, when, why."""
    import time

    where = "this machine" if host is not None and choice.host == host else choice.host
    when = time.strftime("%Y-%m-%d", time.localtime(choice.chosen_at)) if choice.chosen_at else "?"
    bar = f", --min-cosine {choice.min_cosine:g}" if choice.min_cosine != DEFAULT_MIN_COSINE else ""
    return f"{choice.describe()} on {where} (chosen {when}{bar}): {choice.reason}"


# -- remove --------------------------------------------------------------------
@main.command("remove")
@click.argument("folder", required=False, type=click.Path())
@click.option("--missing", is_flag=True, help="Forget every indexed folder that no longer exists.")
@index_option
@click.option("--json", "as_json", is_flag=True, help='Print JSON: {"removed_roots", "photos_removed"}.')
def remove_cmd(folder: str | None, missing: bool, index_dir: str | None, as_json: bool) -> None:
    """Forget photo folder FOLDER: its photos leave search, classify, review and serve.

    FOLDER need not exist any more (the usual case: it was moved or deleted);
    its vectors stay in the index, so indexing the photos again at their new
    place reuses them instead of encoding them again.

    \b
    clipdex remove ~/Pictures/old-phone
    clipdex remove --missing            every folder that no longer exists
    """
    from clipdex.index import Index

    if folder and missing:
        raise click.UsageError("give a FOLDER to forget or --missing, not both")
    if not folder and not missing:
        raise click.UsageError("give a FOLDER to forget, or --missing (every folder that no longer exists)")
    with Index.open(index_dir) as index:
        if missing:
            roots = index.prune_missing()
            removed = None
        else:
            assert folder is not None
            removed = index.remove_folder(folder)
            roots = [folder]
    if as_json:
        click.echo(json.dumps({"removed_roots": roots, "photos_removed": removed}, indent=2))
        return
    out = _console()
    if missing and not roots:
        out.print("no indexed folder is missing; nothing to forget")
    elif missing:
        for root in roots:
            out.print(f"forgot {root} (no longer on disk)", markup=False)
    else:
        out.print(f"forgot {_count(removed or 0, 'photo')} of {folder}; their vectors stay for reuse "
                  "(`clipdex index` the photos at their new place)", markup=False)


# -- models ------------------------------------------------------------------
@main.group("models")
def models_group() -> None:
    """The model registry, and ONNX exports of models for installs without torch."""


def _cached_here(spec: "ModelSpec", onnx: str | None) -> dict[str, Any]:
    """What of ``spec`` is on this machine: clipdex's own export, the registry's ready export
    (in the Hugging Face cache, or its folder), the weights (where finding them needs no torch)."""
    from pathlib import Path

    from clipdex.errors import ModelError
    from clipdex.models import optional, sources
    from clipdex.models.onnx_export import cached

    ready = False
    if onnx:
        if sources.is_folder_reference(onnx):
            ready = sources.export_complete(Path(onnx).expanduser())
        else:
            ready = sources.cached_snapshot(onnx) is not None
    weights = ""
    if spec.family == "hf" or optional.has_open_clip():  # open_clip's tags are known to open_clip only
        from clipdex.models.weights import locate_weights

        try:
            weights = locate_weights(spec, download=False)
        except ModelError:
            weights = ""
    return {"export": cached(spec), "onnx": ready, "weights": weights}


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models_list_cmd(as_json: bool) -> None:
    """Show registry models, where each comes from (a ready ONNX export, torch's weights), and
    what of it is on this machine."""
    from clipdex.models.registry import default_model_name, list_models, resolve_model

    rows = []
    for entry in list_models():
        spec = resolve_model(entry.name)
        here = _cached_here(spec, entry.onnx)
        rows.append({"name": entry.name, "family": spec.family, "source": entry.source,
                     "arch": entry.arch or None, "pretrained": entry.pretrained or None, "hf": entry.hf,
                     "onnx": entry.onnx, "sources": entry.sources,
                     "aliases": list(entry.aliases),
                     "description": entry.description, "default": entry.name == default_model_name(),
                     "local": here["weights"], "cached": here})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(box=None)
    table.add_column("name", no_wrap=True)  # typed back: never cut
    table.add_column("sources", overflow="fold")  # folded, not cut, where the terminal is narrow
    table.add_column("here", no_wrap=True)
    table.add_column("description", min_width=24)
    for r in rows:
        name = str(r["name"]) + (" (default)" if r["default"] else "")
        here = r["cached"]
        found = [w for w, yes in (("export", here["export"]), ("ONNX", here["onnx"]), ("weights", here["weights"]))
                 if yes]
        sources = str(r["sources"]).replace(" · ", "\n")  # one source a line
        table.add_row(_t(name), _t(sources), ", ".join(found) or "download", _t(r["description"]))
    _console().print(table)
    _console().print("here: export = clipdex's own ONNX export; ONNX = the ready export, in the Hugging Face cache; "
                     "weights = torch's weights. Without torch, models with an ONNX source run from it.")
    _console().print("Any open_clip ARCH/PRETRAINED pair also works, --weights FILE (--model-config FILE.json) "
                     "for local or custom open_clip models, any Transformers CLIP or SigLIP checkpoint as "
                     "--model hf:OWNER/NAME (the hub) or --model hf:/path/to/folder (save_pretrained), and a ready "
                     "ONNX export as --model onnx:OWNER/NAME or --model onnx:/path/to/folder "
                     "(`clipdex models export`, or Immich's).")


@models_group.command("export")
@click.argument("name")
@click.argument("dest", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Local checkpoint file (offline or fine-tuned weights).")
@click.option("--model-config", type=click.Path(dir_okay=False),
              help="open_clip model-config JSON of a custom architecture (needs --weights).")
def models_export_cmd(name: str, dest: str, weights: str | None, model_config: str | None) -> None:
    """Write model NAME (as --model takes it) as a ready ONNX export into the new folder DIR.

    The folder has the hub layout (Immich's, plus clipdex.json: the model's identity, scoring and
    preprocessing), so an install without torch runs it as --model onnx:DIR, or from the hub
    after `hf upload OWNER/REPO DIR` as --model onnx:OWNER/REPO; its vectors share an index with
    the model's own. Exporting needs torch once (or clipdex's earlier export of the model here).
    DIR must be new, empty, or an earlier export written by this command (replaced).
    """
    import dataclasses
    from pathlib import Path

    from clipdex.models.bundle import check_dest, write_export
    from clipdex.models.onnx_export import cache_export, cached
    from clipdex.models.registry import resolve_model
    from clipdex.models.runtimes.onnx import exporter_of

    folder = Path(dest).expanduser().absolute()
    check_dest(folder)  # before the model is exported (seconds to minutes), and again before it is written
    spec = resolve_model(name, weights, model_config)
    if spec.family == "onnx":
        raise ModelError(f"{spec.name} is already a ready ONNX export; copy its folder (or `hf download` it) instead "
                         "of exporting it again.")
    exporter = exporter_of(spec)
    if exporter is None and not cached(spec):
        raise ModelError(_export_needs_torch(spec, folder))
    export = cache_export(spec, "fp32", exporter)
    extra = {**export.extra, "name": spec.name}
    if "model_config" not in extra:
        config = _open_clip_config(spec)
        if config is not None:
            extra["model_config"] = config
    written = write_export(dataclasses.replace(export, extra=extra), folder)
    files = sorted(p for p in written.rglob("*") if p.is_file())
    out = _console()
    out.print(f"exported {spec.name} (model key {spec.key}) into {written}:", markup=False)
    for path in files:
        out.print(f"  {path.relative_to(written)}  {_size(path.stat().st_size)}", markup=False)
    out.print(f"  {_count(len(files), 'file')}, {_size(sum(p.stat().st_size for p in files))} in all", markup=False)
    quoted = shlex.quote(str(written))
    out.print(f"Use it here or copy it anywhere: clipdex index PHOTOS --model onnx:{quoted}", markup=False)
    out.print(f"Publish it on the Hugging Face hub: hf upload OWNER/REPO {quoted}; then anyone runs it, without "
              "torch, as --model onnx:OWNER/REPO", markup=False)


def _export_needs_torch(spec: "ModelSpec", folder: "Path") -> str:
    """Why `clipdex models export` cannot run here (no torch, no earlier export of the model in
    clipdex's cache to copy), what to install, and what runs without exporting."""
    from clipdex.models import optional
    from clipdex.models.hub_exports import describe, download_command, is_folder_reference

    words, install = optional.family_needs(spec.family)
    needs = f"clipdex models export needs {words} to export {spec.name} ({install})"
    if spec.onnx:
        ready = (f"{spec.name} already has a ready export, {describe(spec.onnx)}: this install runs it as "
                 f"--model {spec.name}, no export needed")
        if not is_folder_reference(spec.onnx):
            fresh = not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))
            target = folder if fresh else "NEW_FOLDER"  # never into a folder that holds something
            copy = f"{download_command(spec.onnx)} --local-dir {shlex.quote(str(target))}"
            ready += f" (a copy of it in {'that folder' if fresh else 'a new folder'}: {copy})"
    else:
        ready = ("a model that already has a ready export (the registry's ONNX sources: `clipdex models list`, or "
                 "one on the hub) runs here without it, as --model NAME or --model onnx:OWNER/REPO")
    return f"{needs}. {ready}."


def _open_clip_config(spec: "ModelSpec") -> dict[str, Any] | None:
    """open_clip's model config of ``spec``'s architecture, for the export's config.json (as Immich
    writes it), where open_clip is installed and knows the architecture; else None."""
    from clipdex.models import optional

    if spec.family != "open_clip" or not optional.has_open_clip():
        return None
    import open_clip

    config = open_clip.get_model_config(spec.arch)
    return dict(config) if isinstance(config, dict) and config else None


if __name__ == "__main__":  # pragma: no cover
    main()
