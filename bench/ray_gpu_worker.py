"""One GPU worker of `clipdex index --engine ray`, measured through the stage functions Ray runs.

    python bench/ray_gpu_worker.py --photos DIR [--archs ViT-B-32,ViT-L-14] [--decoders 1,4,8,15]

The numbers the README's scaling arithmetic needs, on a machine with a GPU:
- the decode stage (:func:`clipdex.cluster.stages.prepare_batch`, a Ray CPU task)
  in 1..N processes: files/s per core, on the given photos and on 24-megapixel
  JPEGs made from them (what cameras write);
- the encode stage (:class:`clipdex.cluster.stages.EncodeActor`, one actor on one
  GPU, fp16) on prepared batches: images/s of the model alone;
- both together, as Ray streams them (N decode processes feeding one actor):
  images/s of one GPU worker and its N cores.
Ray itself is not needed (its wheel is larger than what a GPU session can carry
here); the functions are the ones its tasks and actors call. Weights are random
(open_clip, pretrained=None): the cost of the real model, not its answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_line  # a sibling module, not a package

from clipdex.cluster.engine import GPU_ENCODE_BATCH, PREPARE_BATCH
from clipdex.cluster.stages import EncodeActor, prepare_batch
from clipdex.indexer import draft_of
from clipdex.models.factory import make_encoder
from clipdex.models.preprocess import PreprocessConfig
from clipdex.models.registry import resolve_model

LARGE = (6000, 4000)


def batches(paths: list[Path]) -> Iterator[dict[str, np.ndarray]]:
    """The rows the driver sends, PREPARE_BATCH files at a time."""
    for i in range(0, len(paths), PREPARE_BATCH):
        chunk = paths[i:i + PREPARE_BATCH]
        yield {"path": np.array([str(p) for p in chunk], dtype=object),
               "fs_path": np.array([str(p) for p in chunk], dtype=object),
               "raw_path": np.array([b""] * len(chunk), dtype=object),
               "size": np.array([p.stat().st_size for p in chunk], np.int64),
               "mtime_ns": np.array([p.stat().st_mtime_ns for p in chunk], np.int64)}


def prepare(batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    draft = draft_of(PreprocessConfig.from_meta(meta))
    return prepare_batch(batch, preprocess=meta, max_megapixels=178.0, draft=draft)


def decode_rate(paths: list[Path], meta: dict[str, Any], workers: int) -> tuple[float, list[np.ndarray]]:
    """files/s of the decode stage in ``workers`` processes, and the crops it made."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(prepare, list(batches(paths[:workers * PREPARE_BATCH])), [meta] * workers))  # warm
        started = time.perf_counter()
        out = list(pool.map(prepare, list(batches(paths)), [meta] * len(range(0, len(paths), PREPARE_BATCH))))
        seconds = time.perf_counter() - started
    return len(paths) / seconds, [b["pixels"] for b in out]


def encode_rate(actor: EncodeActor, crops: np.ndarray, seconds: float) -> float:
    """images/s of the actor alone on batches of GPU_ENCODE_BATCH prepared crops."""
    batch = {"status": np.array(["ok"] * GPU_ENCODE_BATCH, dtype=object),
             "pixels": crops[np.arange(GPU_ENCODE_BATCH) % len(crops)]}
    actor(batch)  # warm: kernels, cuDNN choices
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        actor(batch)
        done += GPU_ENCODE_BATCH
    return done / (time.perf_counter() - started)


def pipeline_rate(paths: list[Path], meta: dict[str, Any], actor: EncodeActor, workers: int) -> float:
    """images/s of decode processes streaming into one encoder actor (as Ray streams them)."""
    pending: list[dict[str, np.ndarray]] = []
    rows = done = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(prepare, list(batches(paths[:workers * PREPARE_BATCH])), [meta] * workers))  # warm
        started = time.perf_counter()
        all_batches = list(batches(paths))
        for prepared in pool.map(prepare, all_batches, [meta] * len(all_batches)):
            pending.append(prepared)
            rows += len(prepared["path"])
            if rows >= GPU_ENCODE_BATCH:
                actor({"status": np.concatenate([b["status"] for b in pending]),
                       "pixels": np.concatenate([b["pixels"] for b in pending])})
                done, pending, rows = done + rows, [], 0
        if pending:
            actor({"status": np.concatenate([b["status"] for b in pending]),
                   "pixels": np.concatenate([b["pixels"] for b in pending])})
            done += rows
        return done / (time.perf_counter() - started)


def make_large(paths: list[Path], folder: Path, count: int) -> list[Path]:
    """24-megapixel JPEGs (real photos upscaled, quality 90): what a camera writes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i, p in enumerate(paths[:count]):
        target = folder / f"large_{i:03d}.jpg"
        Image.open(p).convert("RGB").resize(LARGE).save(target, quality=90)
        made.append(target)
    return made


def main() -> None:
    import open_clip
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--archs", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--decoders", default="1,4,8,15")
    parser.add_argument("--large", type=int, default=60)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script (fp32, ONNX Runtime)")
    args = parser.parse_args()
    precision = "fp16" if args.device == "cuda" else "fp32"
    paths = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    decoders = [int(n) for n in args.decoders.split(",")]
    print(f"CPU: {cpu_line()}")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (a dry run on the CPU)"
    print(f"GPU: {gpu}, torch {torch.__version__}")
    print(f"{len(paths)} photos from {args.photos}\n")
    results: dict[str, Any] = {"cpu": cpu_line(), "gpu": gpu, "photos": len(paths)}
    with tempfile.TemporaryDirectory() as tmp:
        large = make_large(paths, Path(tmp, "large"), args.large)
        for arch in args.archs.split(","):
            weights = Path(tmp, f"{arch}.pt")
            torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), weights)
            spec = resolve_model(arch, str(weights))
            meta = make_encoder(spec, device=args.device, precision=precision).load().preprocess_config.to_meta()
            print(f"== {arch} (random weights), input {meta['image_size']} px, {precision}, batch {GPU_ENCODE_BATCH}")
            crops = None
            row: dict[str, Any] = {"decode": {}, "decode_large": {}}
            for n in decoders:
                rate, out = decode_rate(paths, meta, n)
                row["decode"][n] = rate
                crops = np.concatenate(out) if crops is None else crops
                large_rate, _ = decode_rate(large, meta, n)
                row["decode_large"][n] = large_rate
                print(f"  decode stage, {n:>2} processes: {rate:8.1f} files/s ({rate / n:6.1f} per core) on the "
                      f"photos; {large_rate:6.1f} files/s ({large_rate / n:5.1f} per core) on 24 MP JPEGs")
            actor = EncodeActor(spec.to_json(), args.device, precision)
            assert crops is not None
            row["encode"] = encode_rate(actor, crops, 8.0 if args.device == "cuda" else 1.0)
            print(f"  encode stage (one actor, one GPU): {row['encode']:8.1f} images/s")
            n = max(decoders)
            row["worker"] = pipeline_rate(paths, meta, actor, n)
            row["worker_large"] = pipeline_rate(large * max(1, 256 // len(large)), meta, actor, n)
            print(f"  one GPU worker with {n} decode processes: {row['worker']:8.1f} images/s on the photos, "
                  f"{row['worker_large']:.1f} on 24 MP JPEGs\n")
            results[arch] = row
            del actor
            if args.device == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    os.sync()


if __name__ == "__main__":
    main()
