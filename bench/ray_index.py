"""The Ray engine against local indexing: same photos, same weights, same precision, this machine.

    python bench/ray_index.py --weights vit-b-32-random.pt [--photos 1000] [--precision fp32] [--rounds 1]

Each run is a fresh `clipdex index` process into a fresh index (what a user
types), local first, then `--engine ray` in local mode (`ray.init()` on this
machine: its CPUs run the decode tasks and one encoder actor). Prints the CPU,
then per engine: wall time of the whole command, files/s over it, the encoding
stage's own files/s (for Ray: after the first shard, i.e. without Ray's start,
the actor's model load and the pipeline's fill), and Ray's ratio to local.
Last, the cosine between the two indexes' vectors of every photo (min, mean).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_line  # a sibling module, not a package

from clipdex import Index

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "unsplash-1k" / "images"


def run_index(photos: Path, index: Path, weights: str, precision: str, engine: str) -> tuple[float, dict]:
    """One `clipdex index` command; (wall seconds, its --json report)."""
    command = [sys.executable, "-m", "clipdex", "index", str(photos), "--index", str(index), "--weights", weights,
               "--precision", precision, "--json"]
    if engine == "ray":
        command += ["--engine", "ray"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)


def vectors_of(index: Path) -> dict[str, np.ndarray]:
    with Index.open(index) as opened:
        found = opened.searchable()
        return {os.path.realpath(p): v for p, v in zip(found.paths, found.vectors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="an open_clip checkpoint (bench/make_random_checkpoint.py)")
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--source", type=Path, default=SHARED)
    parser.add_argument("--no-warm", action="store_true", help="skip the untimed first run (the export is cached)")
    args = parser.parse_args()
    photos = sorted(p for p in args.source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.photos]
    if not photos:
        sys.exit(f"no photos in {args.source}")
    print(f"CPU: {cpu_line()}")
    print(f"{len(photos)} photos from {args.source}, weights {args.weights}, precision {args.precision}, "
          f"{args.rounds} round(s) each\n")
    rows: dict[str, list[tuple[float, dict]]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "photos")
        folder.mkdir()
        for p in photos:
            os.symlink(p.resolve(), folder / p.name)
        # One untimed local run first: exports the model to ONNX once (both engines use the export).
        if not args.no_warm:
            run_index(folder, Path(tmp, "warm"), args.weights, args.precision, "local")
        for _ in range(args.rounds):
            for engine in ("local", "ray"):
                index = Path(tmp, f"idx-{engine}")
                shutil.rmtree(index, ignore_errors=True)
                rows[engine].append(run_index(folder, index, args.weights, args.precision, engine))
        local_vectors, ray_vectors = vectors_of(Path(tmp, "idx-local")), vectors_of(Path(tmp, "idx-ray"))
    print(f"{'engine':<8} {'wall s':>8} {'files/s':>9} {'stage files/s':>14} {'first shard s':>14} {'encoded':>8}")
    best: dict[str, tuple[float, float]] = {}
    for engine, runs in rows.items():
        walls = [wall for wall, _ in runs]
        wall = statistics.median(walls)
        report = runs[walls.index(min(walls, key=lambda w: abs(w - wall)))][1]
        encoded = report["encoded"]
        stage = report["images_per_second"]
        first = report.get("startup_seconds")
        if engine == "ray" and report.get("steady_images_per_second"):
            stage = report["steady_images_per_second"]  # after the first shard: Ray's start, the model load excluded
        best[engine] = (encoded / wall, stage)
        print(f"{engine:<8} {wall:>8.1f} {encoded / wall:>9.1f} {stage:>14.1f} "
              f"{first if first is not None else '-':>14} {encoded:>8}")
    print(f"\nRay / local: whole command {best['ray'][0] / best['local'][0]:.2f}, "
          f"encoding stage {best['ray'][1] / best['local'][1]:.2f}")
    common = sorted(set(local_vectors) & set(ray_vectors))
    cosines = np.array([float(local_vectors[p] @ ray_vectors[p]) for p in common])
    print(f"cosine, Ray vs local, {len(common)} photos: min {cosines.min():.6f}, mean {cosines.mean():.6f}")


if __name__ == "__main__":
    main()
