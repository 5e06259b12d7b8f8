"""Indexing throughput and fidelity: the tutorial's loop vs `clipdex index`, same photos, same weights.

    python bench/index_speed.py --weights vit-b-32-random.pt [--photos 200] [--large 12] [--rounds 3]
    python bench/index_speed.py --weights vit-b-32-random.pt --device cuda --precisions fp16,fp32 --photos 1000

On the CPU the precisions are fp32, bf16 (only where the processor computes it
natively; where it is not, the script says why) and int8; ``--precisions auto,...``
adds what ``--precision auto`` chooses. Prints the CPU first, then, for the
shared Unsplash photos and for generated 24-megapixel JPEGs (real photos
upscaled): images/s end to end, the ratio to the tutorial's loop,
and the cosine between clipdex's stored vectors and the tutorial's fp32 torch
vectors (min, mean). Also forward-only throughput on the same batches (does the
model wait for the decoder?), reduced-size JPEG decoding against full decoding,
and the time to encode one text query warm.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_line  # a sibling module, not a package

from clipdex import Index
from clipdex.decode import load_image
from clipdex.errors import ModelError
from clipdex.indexer import CPU_BATCH, GPU_BATCH, draft_size
from clipdex.models.factory import make_encoder
from clipdex.models.precision import AUTO
from clipdex.models.registry import resolve_model
from clipdex.models.runtimes.openclip_torch import TorchEncoder

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "unsplash-1k" / "images"
TUTORIAL_BATCH = 100
SETTLE_S = 2.0
LARGE_SIZE = (6000, 4000)


def tutorial_loop(paths: list[Path], model_name: str, weights: str,
                  device: str) -> tuple[float, dict[str, np.ndarray]]:
    """The tutorial: PIL open -> model preprocess -> batches of 100 -> encode_image (torch fp32)."""
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=weights, device=device)
    model.eval()
    vectors = {}
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), TUTORIAL_BATCH):
            chunk = paths[i:i + TUTORIAL_BATCH]
            batch = torch.stack([preprocess(Image.open(p)) for p in chunk]).to(device)
            features = model.encode_image(batch)
            features /= features.norm(dim=-1, keepdim=True)
            vectors.update({str(p): f for p, f in zip(chunk, features.cpu().numpy())})
    return len(paths) / (time.perf_counter() - started), vectors


def clipdex_index(folder: Path, weights: str, precision: str,
                  device: str = "cpu") -> tuple[float, dict[str, np.ndarray], str]:
    """`clipdex index` through the library into a fresh index; returns img/s, vectors, and the
    precision the vectors were computed in (what auto chose, for auto)."""
    with tempfile.TemporaryDirectory() as tmp, Index.open(Path(tmp) / "idx", weights=weights, device=device,
                                                          precision=precision, create=True) as index:
        report = index.add(folder)
        found = index.searchable()
        vectors = {os.path.realpath(p): v for p, v in zip(found.paths, found.vectors)}
    return report.encoded / report.encode_seconds, vectors, report.precision or precision


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh process: a runtime's threads and memory do not slow the next one
    measured (ONNX Runtime ran 15 % slower in a process where OpenVINO had run), as with one
    `clipdex index` per process in real use."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def forward_in_process(weights: str, precision: str, device: str, paths: list[Path]) -> float:
    """:func:`forward_only` with an encoder built here, on ``paths`` prepared as the indexer does."""
    encoder = make_encoder(resolve_model(None, weights), device=device, precision=precision).load()
    pixels = np.stack([encoder.preprocess(load_image(p.read_bytes(), str(p),
                                                     draft_size=draft_size(encoder)))
                       for p in paths])
    return forward_only(encoder, pixels)


def _backend_of(weights: str, precision: str, device: str) -> str:
    """The runtime ``precision`` runs on here (building it exports the model, once), or '!' and
    why it cannot run here."""
    try:
        return make_encoder(resolve_model(None, weights), device=device, precision=precision).load().backend
    except ModelError as e:
        return f"!{e}"


def settle() -> None:
    """A pause between timed runs: right after the tutorial's torch loop, the next run measured
    10-40 % slower on 2 cores (torch's threads and freed memory still settling)."""
    gc.collect()
    time.sleep(SETTLE_S)


def forward_only(encoder, pixels: np.ndarray) -> float:
    """The model alone on the indexer's batches, pixels already prepared."""
    batch = CPU_BATCH if encoder.device == "cpu" else GPU_BATCH
    encoder.encode_images(pixels[:batch])
    started, done = time.perf_counter(), 0
    for i in range(0, len(pixels), batch):
        done += len(encoder.encode_images(pixels[i:i + batch]))
    return done / (time.perf_counter() - started)


def cosines(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> tuple[float, float]:
    ref = {os.path.realpath(k): v for k, v in reference.items()}
    values = [float(np.dot(ours[k], ref[k])) for k in ref if k in ours]
    return min(values), float(np.mean(values))


def make_large(sources: list[Path], folder: Path) -> list[Path]:
    """24-megapixel JPEGs made from real photos (upscaled, so they decode like camera files)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sources:
        target = folder / f"large-{src.stem}.jpg"
        with Image.open(src) as im:
            big = im.convert("RGB").resize(LARGE_SIZE if im.width >= im.height else LARGE_SIZE[::-1],
                                           Image.Resampling.BICUBIC)
        big.save(target, quality=92)
        out.append(target)
    return out


def decode_rates(paths: list[Path], weights: str) -> tuple[float, float, float, float]:
    """Full decode vs reduced-size decode (+ preprocess): img/s each, and embedding cosine min/mean."""
    encoder = make_encoder(resolve_model(None, weights), precision="fp32").load()
    data = [p.read_bytes() for p in paths]
    rates, pixels = [], []
    for draft in (None, draft_size(encoder)):
        started = time.perf_counter()
        pixels.append(np.stack([encoder.preprocess(load_image(d, "x", draft_size=draft)) for d in data]))
        rates.append(len(data) / (time.perf_counter() - started))
    full, reduced = encoder.encode_images(pixels[0]), encoder.encode_images(pixels[1])
    cos = np.sum(full * reduced, axis=1)
    return rates[0], rates[1], float(cos.min()), float(cos.mean())


def text_query_ms(weights: str) -> tuple[float, float]:
    spec = resolve_model(None, weights)
    onnx = make_encoder(spec, for_queries=True)
    torch_encoder = TorchEncoder(spec, device="cpu")
    times = {}
    for name, encoder in (("onnx", onnx), ("torch", torch_encoder)):
        encoder.encode_texts(["warm up"])
        samples = []
        for query in ["dog", "dog in the snow", "listen to music", "a photo taken at dusk"] * 5:
            started = time.perf_counter()
            encoder.encode_texts([query])
            samples.append(time.perf_counter() - started)
        times[name] = statistics.median(samples) * 1000
    return times["onnx"], times["torch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="ViT-B-32 checkpoint (e.g. random weights)")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--large", type=int, default=12)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps (the tutorial runs there too)")
    parser.add_argument("--precisions", default=None,
                        help="[default: fp32,bf16,int8 on the CPU (bf16 where native), fp16,fp32 elsewhere]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every timing, interleaved")
    args = parser.parse_args()
    weights = os.path.abspath(args.weights)
    device = args.device
    precisions = (args.precisions or ("fp32,bf16,int8" if device == "cpu" else "fp16,fp32")).split(",")
    sources = sorted(SHARED.glob("*.jpg"))[:args.photos]
    print(cpu_line())
    backends = {}
    for precision in [p for p in precisions if p != AUTO]:  # exports the model once
        backend = isolated(_backend_of, weights, precision, device)
        if backend.startswith("!"):
            print(f"--precision {precision} left out: {backend[1:]}")
            precisions.remove(precision)
        else:
            backends[precision] = backend
    where = device
    if device.startswith("cuda"):
        import torch

        where = f"{device} ({torch.cuda.get_device_name()})"

    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small"
        small.mkdir()
        for src in sources:
            (small / src.name).symlink_to(src)
        large = make_large(sources[:args.large], Path(tmp) / "large")
        print(f"machine: {os.cpu_count()} cores, device {where}; model ViT-B-32, weights {Path(weights).name}")
        print(f"{args.rounds} interleaved rounds; img/s and ratios are medians")
        print(f"{'photos':<22} {'path':<34} {'img/s':>7} {'x tutorial':>10} {'cos min':>8} {'cos mean':>8}")
        for label, folder, paths in ((f"unsplash {len(sources)}", small, sorted(small.iterdir())),
                                     (f"24 MP x {len(large)}", Path(tmp) / "large", large)):
            rates: dict[str, list[float]] = {p: [] for p in ["tutorial", *precisions]}
            fidelity, ran = {}, {}
            for _ in range(args.rounds):
                base_rate, reference = isolated(tutorial_loop, paths, "ViT-B-32", weights, device)
                rates["tutorial"].append(base_rate)
                for precision in precisions:
                    settle()
                    rate, ours, ran[precision] = isolated(clipdex_index, folder, weights, precision, device)
                    rates[precision].append(rate)
                    fidelity[precision] = cosines(ours, reference)
            base = statistics.median(rates["tutorial"])
            print(f"{label:<22} {'tutorial loop (torch fp32, b=100)':<34} {base:>7.1f} {1.0:>10.2f} "
                  f"{1.0:>8.4f} {1.0:>8.4f}")
            for precision in precisions:
                rate = statistics.median(rates[precision])
                lo, mean = fidelity[precision]
                name = precision if ran[precision] == precision else f"{precision} ({ran[precision]})"
                print(f"{label:<22} {'clipdex index --precision ' + name:<34} {rate:>7.1f} "
                      f"{rate / base:>10.2f} {lo:>8.4f} {mean:>8.4f}")

        print()
        print(f"does the model wait? same photos and batches, {args.rounds} interleaved rounds (medians)")
        print(f"{'path':<14} {'forward only':>13} {'end to end':>11} {'e2e/forward':>12} {'per round':>12}")
        for precision, backend in backends.items():
            fwd, e2e = [], []
            for _ in range(args.rounds):
                settle()
                fwd.append(isolated(forward_in_process, weights, precision, device, sources))
                settle()
                e2e.append(isolated(clipdex_index, small, weights, precision, device)[0])
            ratios = [e / f for e, f in zip(e2e, fwd)]
            print(f"{backend + ' ' + precision:<14} {statistics.median(fwd):>13.1f} "
                  f"{statistics.median(e2e):>11.1f} {statistics.median(e2e) / statistics.median(fwd):>12.2f} "
                  f"{min(ratios):>5.2f}-{max(ratios):.2f}")

        full, reduced, lo, mean = decode_rates(large, weights)
        print()
        print(f"decode + preprocess of {len(large)} 24-MP JPEGs: full {full:.1f} img/s, reduced-size "
              f"{reduced:.1f} img/s ({reduced / full:.1f}x); embedding cosine min {lo:.4f} mean {mean:.4f}")
    onnx_ms, torch_ms = text_query_ms(weights)
    print(f"one text query, warm: onnx {onnx_ms:.1f} ms, torch {torch_ms:.1f} ms")


if __name__ == "__main__":
    main()
