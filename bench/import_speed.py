"""Import and export speed: a generated clip-retrieval folder into a new index, and back out.

    python bench/import_speed.py                         # 1,000,000 rows x 512 (~2-3 min on 2 cores)
    python bench/import_speed.py --rows 20000            # a quick run
    python bench/import_speed.py --storage fp16          # the index keeps the vectors as float16
    python bench/import_speed.py --no-search             # the import alone, no search index afterwards

Writes clip-retrieval's layout under --work (/tmp/clipdex-bench-import by
default, never in the repository; generated once per size and reused):
img_emb/img_emb_N.npy (float16 CLIP-like unit vectors from bench/synthetic.py,
one seed per shard) and metadata/metadata_N.parquet (image_path, caption), with
image paths that are not on this disk, as a collection embedded elsewhere is.
Then, through the library (what `clipdex import` and `clipdex export` call),
into a fresh index with ViT-B-32 (512-d; its weights are not needed):

  import        read, check and normalise the vectors, write them, commit the
                catalog (rows/s, wall and CPU seconds), then the approximate
                search index built on them (its own seconds)
  import again  every shard finished and unchanged: all skipped
  export        the index written back out as clip-retrieval shards

Other work on the machine inflates every time: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import synthetic  # noqa: E402  (a sibling script, not a package)
from _machine import cpu_line  # noqa: E402  (likewise)

from clipdex.store.vectors import STORAGE_OPTIONS, stored_name  # noqa: E402

MODEL = "ViT-B-32"
DIM = 512  # ViT-B-32's embedding size
SHARD_ROWS = 100_000  # rows per shard, as clip-retrieval writes them


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def generate(folder: Path, rows: int, shard_rows: int) -> int:
    """clip-retrieval's layout with ``rows`` CLIP-like float16 vectors; returns the number of shards."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir(parents=True)
    shards = -(-rows // shard_rows)
    for s in range(shards):
        first = s * shard_rows
        n = min(shard_rows, rows - first)
        vectors = synthetic.clip_like_vectors(n, DIM, seed=s)
        np.save(folder / "img_emb" / f"img_emb_{s}.npy", vectors.astype(np.float16))
        ids = range(first, first + n)
        paths = [f"/data/photos/{i // 1000:04d}/img-{i:07d}.jpg" for i in ids]
        pq.write_table(pa.table({"image_path": paths, "caption": [f"caption {i}" for i in ids]}),
                       folder / "metadata" / f"metadata_{s}.parquet")
    return shards


def work_folder(path: str) -> Path:
    """--work, refused inside the repository (a million rows are gigabytes)."""
    work = Path(path).expanduser().resolve()
    if work == REPO or REPO in work.parents:
        raise SystemExit(f"--work {work} is inside the repository; choose a folder elsewhere (e.g. under /tmp)")
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="photos to import [default: 1,000,000]")
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS,
                        help=f"rows per generated shard [default: {SHARD_ROWS:,}]")
    parser.add_argument("--storage", choices=list(STORAGE_OPTIONS), default="fp32",
                        help="how the index keeps the vectors (import --storage) [default: fp32]")
    parser.add_argument("--no-search", action="store_true",
                        help="time the import alone: no approximate search index afterwards")
    parser.add_argument("--work", default="/tmp/clipdex-bench-import", help="folder for the source, index, export")
    args = parser.parse_args()
    if args.rows < 1 or args.shard_rows < 1:
        parser.error("--rows and --shard-rows must be at least 1")
    work = work_folder(args.work)

    print(f"CPU: {cpu_line()}")
    print(f"load average at the start: {load()} (other work on the machine inflates every time below)")
    head = subprocess.run(["git", "-C", str(REPO), "log", "--format=%h", "-1"], capture_output=True, text=True)
    print(f"clipdex at {head.stdout.strip()}; {args.rows:,} rows x {DIM} ({MODEL}), {args.storage} storage")

    source, index_dir, out = work / "source", work / "index", work / "export"
    stamp = work / f"generated-{args.rows}x{DIM}x{args.shard_rows}"
    if not stamp.exists():  # the source is generated once per size and reused by later runs
        shutil.rmtree(work, ignore_errors=True)
        started = time.perf_counter()
        shards = generate(source, args.rows, args.shard_rows)
        stamp.touch()
        print(f"generated {args.rows:,} x {DIM} in {shards} shards: {time.perf_counter() - started:.1f} s")
    shutil.rmtree(index_dir, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)

    from clipdex import Index
    from clipdex.interchange import export_embeddings, import_embeddings

    with Index.open(index_dir, model=MODEL, create=True) as index:
        if args.no_search:  # import_embeddings then brings no search index up to date
            index.refresh_search = lambda *args, **kwargs: []  # type: ignore[method-assign]
        started, cpu = time.perf_counter(), time.process_time()
        report = import_embeddings(index, source, storage=stored_name(args.storage))
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        search = "skipped" if args.no_search else f"{report.search_seconds:.1f} s"
        print(f"import: {report.imported:,} rows in {report.shards_imported} shards, {report.seconds:.1f} s "
              f"({report.imported / report.seconds:,.0f} rows/s); search index: {search}; "
              f"{took:.1f} s wall, {cpu:.1f} s CPU in all (load average {load()})")
        started = time.perf_counter()
        again = import_embeddings(index, source)
        print(f"import again: {again.shards_done_before} shards skipped in {time.perf_counter() - started:.2f} s")
    with Index.open(index_dir) as index:
        started = time.perf_counter()
        exported = export_embeddings(index, out)
        took = time.perf_counter() - started
        print(f"export: {exported.rows:,} rows in {exported.shards} shard{'s' if exported.shards != 1 else ''}, "
              f"{took:.1f} s "
              f"({exported.rows / took:,.0f} rows/s; load average {load()})")


if __name__ == "__main__":
    main()
