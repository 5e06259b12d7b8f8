"""Peak memory and time of joining predictions onto a large metadata CSV: streamed vs read whole.

    .venv/bin/python bench/join_memory.py              # ~100 MB table, 100,000 photos
    .venv/bin/python bench/join_memory.py --mb 20      # quicker

Writes the table in a temporary folder, then runs each join in a fresh
process (so each peak RSS is its own): ``old`` reads the table into a list of
dicts with ``csv.DictReader`` and builds every output row before writing, as
clipdex did before the join was streamed; ``new`` is
:func:`clipdex.export.join_metadata`. Both runs build the same predictions
(4 labels) first; ``baseline`` is that alone, so the join's own cost is the
difference. Prints one line per run and a JSON summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LABELS = ["dawn", "day", "dusk", "night"]
COLUMNS = ["photo_id", "camera", "lens", "place", "taken", "caption", "rating", "notes"]


def write_table(path: Path, megabytes: float, photos: int) -> int:
    """A CSV of about ``megabytes``: rows keyed by photo stems (several rows per photo, some unmatched)."""
    target = int(megabytes * 1_000_000)
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        while f.tell() < target:
            i = rows % (photos + photos // 10)  # one in eleven keys matches no photo
            writer.writerow([f"img_{i:07d}", "Canon EOS R6", "RF 24-105mm F4 L", f"Zürich, CH {rows % 977}",
                             f"2024-{rows % 12 + 1:02d}-{rows % 28 + 1:02d}T12:{rows % 60:02d}:00",
                             f"a photo, number {rows}, with \"quotes\" and commas", str(rows % 5),
                             "x" * (rows % 40)])
            rows += 1
    return rows


def predictions(photos: int):  # type: ignore[no-untyped-def]
    import numpy as np

    from clipdex.classify import Classification
    from clipdex.labels import make_label_set

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(LABELS)), size=photos).astype(np.float32)
    best = probs.argmax(axis=1)
    return Classification(label_set=make_label_set("taken_time", LABELS),
                          file_ids=list(range(photos)), paths=[f"/photos/img_{i:07d}.jpg" for i in range(photos)],
                          probs=probs, predicted=[LABELS[j] for j in best], confidence=probs.max(axis=1))


def old_join(results, table: Path, key: str, out: Path) -> int:  # type: ignore[no-untyped-def]
    """The join as it was: the whole table as dicts, every output row in a list, then written."""
    from clipdex.export import KeyMatcher, prediction_cells, prediction_columns

    with open(table, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    added = prediction_columns(results)
    header = [h for h in header if h not in added]
    cells = prediction_cells(results)
    matcher = KeyMatcher(list(cells))
    width = len(added)
    out_rows = []
    for row in rows:
        path = matcher.match(row.get(key) or "")
        extra = [""] * width if path is None else cells[path]
        out_rows.append([row.get(h, "") for h in header] + extra)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header + added)
        writer.writerows(out_rows)
    return len(out_rows)


def child(variant: str, table: Path, photos: int) -> None:
    """One measured run (in its own process): prints {"seconds", "peak_rss_mb", "rows"}."""
    from clipdex.export import join_metadata

    results = [predictions(photos)]
    out = table.with_name(f"joined-{variant}.csv")
    started = time.perf_counter()
    if variant == "old":
        rows = old_join(results, table, "photo_id", out)
    elif variant == "new":
        rows = join_metadata(results, table, "photo_id", out).rows
    else:
        rows = 0
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"variant": variant, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1),
                      "rows": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="Size of the table to join [100].")
    parser.add_argument("--photos", type=int, default=100_000, help="Photos with predictions [100000].")
    parser.add_argument("--child", choices=["baseline", "old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.table, args.photos)
        return
    with tempfile.TemporaryDirectory(prefix="clipdex-join-") as folder:
        table = Path(folder) / "photos.csv"
        rows = write_table(table, args.mb, args.photos)
        size = table.stat().st_size / 1e6
        print(f"table: {size:.1f} MB, {rows:,} rows, {len(COLUMNS)} columns; {args.photos:,} photos x "
              f"{len(LABELS)} labels", file=sys.stderr)
        summary = {"table_mb": round(size, 1), "rows": rows, "photos": args.photos}
        for variant in ("baseline", "old", "new"):
            run = subprocess.run([sys.executable, __file__, "--child", variant, "--table", str(table),
                                  "--photos", str(args.photos)], capture_output=True, text=True, check=True,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT)))
            result = json.loads(run.stdout.strip().splitlines()[-1])
            summary[variant] = result
            print(f"{variant:<8} {result['seconds']:>6.2f} s  peak RSS {result['peak_rss_mb']:>7.1f} MB",
                  file=sys.stderr)
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
