"""JPEG decoding on the GPU against Pillow on the CPU: `Index.add` end to end, same photos, same weights.

    python bench/gpu_decode.py --weights vit-b-32-random.pt                  # CUDA: ~2-4 min on an H100
    python bench/gpu_decode.py --weights vit-b-32-random.pt --device cpu --photos 24 --large 2   # smoke run

Prints the card, torch/torchvision versions and the CPU's cores, then, for the 1,000
shared Unsplash photos (768x512) and for generated 24-megapixel JPEGs (real photos
upscaled, as bench/index_speed.py makes them): images/s of `Index.add` through the
library with Pillow decoding (the workers) and with device decoding (nvJPEG, batched),
per precision (fp16 and fp32 on CUDA), and the cosine between the two paths' vectors.
Then the ceiling: the model's forward pass alone on prepared batches; the decoder
alone (decode + orientation + resize + crop on the device); and the device pixels
against the CPU path's (`fit(load_image(...))`, full-size decoding): how many
differ by more than one level.

On the CPU (--device cpu) the device stage runs there too (gpu_decode="force"):
a smoke run of the same code, not a speed measurement. A missing weights file is
made with random weights (the real model's cost, meaningless vectors).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_line  # a sibling module, not a package
from index_speed import make_large

from clipdex import Index, IndexSettings
from clipdex.decode import load_image, read_jpeg_header
from clipdex.indexer import CPU_BATCH, GPU_BATCH, GpuDecode
from clipdex.models.factory import make_encoder
from clipdex.models.gpu_decode import JpegDecoder, JpegJob
from clipdex.models.preprocess import PreprocessConfig, fit
from clipdex.models.registry import resolve_model

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "unsplash-1k" / "images"
PARITY_PHOTOS = 200  # photos whose device pixels are compared with the CPU path's
FORWARD_BATCHES = 20  # batches timed for the forward-only ceiling


def ensure_weights(path: Path) -> Path:
    """ViT-B-32 with random weights at ``path`` unless it exists (as bench/make_random_checkpoint.py)."""
    if not path.exists():
        import open_clip
        import torch

        torch.manual_seed(0)
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), path)
        print(f"made random ViT-B-32 weights: {path}")
    return path


def source_photos(folder: Path | None, count: int, out: Path) -> list[Path]:
    """``count`` photos: the shared Unsplash ones, else generated 768x512 photo-like JPEGs."""
    found = sorted(folder.glob("*.jpg"))[:count] if folder and folder.is_dir() else []
    if found:
        return found
    print(f"no photos in {folder}: generating {count} photo-like 768x512 JPEGs")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    yy, xx = np.mgrid[0:512, 0:768].astype(np.float32)
    for i in range(count):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (yy / 512)[..., None]
        pixels = a * (1 - t) + b * t + 20 * np.sin(xx / rng.uniform(3, 40) + yy / rng.uniform(3, 40))[..., None]
        pixels += rng.normal(0, 8, pixels.shape)
        path = out / f"generated-{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def make_large_parallel(sources: list[Path], folder: Path) -> list[Path]:
    """bench/index_speed.py's 24-megapixel JPEGs, made on every core."""
    cores = os.cpu_count() or 1
    chunks = [sources[i::cores] for i in range(cores) if sources[i::cores]]
    with ProcessPoolExecutor(len(chunks) or 1) as pool:
        made = pool.map(make_large, chunks, [folder] * len(chunks))
        return sorted(p for chunk in made for p in chunk)


def index_once(folder: Path, weights: Path, device: str, precision: str,
               gpu_decode: GpuDecode) -> tuple[float, float, int, dict[str, np.ndarray]]:
    """`Index.add` into a fresh index: (pipeline img/s, wall seconds, JPEGs decoded on the device, vectors)."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with Index.open(Path(tmp) / "idx", weights=str(weights), device=device, precision=precision,
                        create=True) as index:
            report = index.add(folder, settings=IndexSettings(gpu_decode=gpu_decode))
            found = index.searchable()
            vectors = {os.path.basename(p): np.asarray(v, np.float32) for p, v in zip(found.paths, found.vectors)}
        wall = time.perf_counter() - started
    assert not report.failed, report.failed
    return report.images_per_second, wall, report.device_decoded, vectors


def cosines(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float]:
    values = [float(a[k] @ b[k]) for k in a if k in b]
    return min(values), float(np.mean(values))


def forward_only(weights: Path, device: str, precision: str) -> float:
    """The model alone on the indexer's batch size, 8-bit pixels already where it runs."""
    encoder = make_encoder(resolve_model(None, str(weights)), device=device, precision=precision).load()
    size = encoder.image_size
    batch_size = CPU_BATCH if device == "cpu" else GPU_BATCH
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    pixels: Any = batch
    if device != "cpu":
        import torch

        pixels = torch.from_numpy(batch).to(device)  # as the device decoder hands it over
    encoder.encode_images(pixels)
    batches = FORWARD_BATCHES if device != "cpu" else 3
    started = time.perf_counter()
    for _ in range(batches):
        encoder.encode_images(pixels)  # returns numpy: synchronised
    return batches * batch_size / (time.perf_counter() - started)


def decoder_only(paths: list[Path], cfg: PreprocessConfig, device: str) -> float:
    """JpegDecoder alone (decode, orientation, resize, crop), the files already in memory."""
    jobs = []
    for p in paths:
        data = p.read_bytes()
        header = read_jpeg_header(io.BytesIO(data), str(p))
        assert header is not None
        jobs.append(JpegJob(bytearray(data), header.width, header.height, header.orientation))
    decoder = JpegDecoder(cfg, device)
    batch = GPU_BATCH if device != "cpu" else CPU_BATCH
    decoder.decode(jobs[:batch])  # warm up (nvJPEG's handles, kernels)
    _sync(device)
    started = time.perf_counter()
    for i in range(0, len(jobs), batch):
        decoder.decode(jobs[i:i + batch])
    _sync(device)
    return len(jobs) / (time.perf_counter() - started)


def pixel_parity(paths: list[Path], cfg: PreprocessConfig, device: str) -> tuple[int, float, float]:
    """Device pixels vs the CPU path's: (max abs difference, share of values more than one
    level off, mean abs difference)."""
    datas = [p.read_bytes() for p in paths]
    jobs = []
    for data in datas:
        header = read_jpeg_header(io.BytesIO(data), "x.jpg")
        assert header is not None
        jobs.append(JpegJob(data, header.width, header.height, header.orientation))
    pixels, failed = JpegDecoder(cfg, device).decode(jobs)
    assert not failed, failed
    worst, over, total, diff_sum = 0, 0, 0, 0.0
    for data, row in zip(datas, pixels.cpu().numpy()):
        difference = np.abs(row.astype(np.int16) - fit(load_image(data, "x.jpg"), cfg).astype(np.int16))
        worst = max(worst, int(difference.max()))
        over += int((difference > 1).sum())
        total += difference.size
        diff_sum += float(difference.sum())
    return worst, over / total, diff_sum / total


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def machine(device: str) -> str:
    import torch
    import torchvision

    card = torch.cuda.get_device_name(device) if device.startswith("cuda") else "no GPU (device cpu)"
    return (f"device: {card}; torch {torch.__version__}, torchvision {torchvision.__version__}\n"
            f"cpu: {cpu_line()}; decoding workers: {IndexSettings().workers}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="/tmp/clipdex-bench/vit-b-32-random.pt",
                        help="ViT-B-32 checkpoint (made with random weights if missing)")
    parser.add_argument("--device", default=None, help="cuda (default where available) or cpu")
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--photos-dir", type=Path, default=SHARED)
    parser.add_argument("--large", type=int, default=64, help="24-megapixel JPEGs to make and index")
    parser.add_argument("--precisions", default=None, help="[default: fp16,fp32 on CUDA, fp32 on the CPU]")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every index timing (medians)")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precisions = (args.precisions or ("fp32" if device == "cpu" else "fp16,fp32")).split(",")
    on_device: GpuDecode = True if device.startswith("cuda") else "force"
    weights = ensure_weights(Path(args.weights).expanduser().resolve())
    print(machine(device))
    print(f"model ViT-B-32, weights {weights.name}; {args.rounds} round(s), medians; "
          f"device decoding = IndexSettings(gpu_decode={on_device!r})")

    with tempfile.TemporaryDirectory() as tmp:
        sources = source_photos(args.photos_dir, args.photos, Path(tmp) / "generated")
        small = Path(tmp) / "small"
        small.mkdir()
        for src in sources:
            (small / src.name).symlink_to(src)
        started = time.perf_counter()
        large = make_large_parallel(sources[:args.large], Path(tmp) / "large") if args.large else []
        print(f"made {len(large)} 24-MP JPEGs in {time.perf_counter() - started:.0f} s")
        warm = Path(tmp) / "warm"
        warm.mkdir()
        for src in sources[:8]:
            (warm / src.name).symlink_to(src)
        for precision in precisions:  # CUDA context, cuDNN, nvJPEG and the model's first passes
            index_once(warm, weights, device, precision, on_device)

        print()
        print(f"{'photos':<18} {'precision':<9} {'decoding':<16} {'img/s':>8} {'wall s':>7} "
              f"{'on device':>9} {'cos min':>8} {'cos mean':>8}")
        sets = [(f"unsplash x {len(sources)}", small)] + ([(f"24 MP x {len(large)}", large[0].parent)] if large
                                                           else [])
        for label, folder in sets:
            for precision in precisions:
                rates: dict[str, list[float]] = {"cpu": [], "device": []}
                walls: dict[str, list[float]] = {"cpu": [], "device": []}
                vectors, decoded = {}, {}
                for _ in range(args.rounds):
                    for kind, setting in (("cpu", False), ("device", on_device)):
                        rate, wall, decoded[kind], vectors[kind] = index_once(folder, weights, device, precision,
                                                                              setting)
                        rates[kind].append(rate)
                        walls[kind].append(wall)
                lo, mean = cosines(vectors["device"], vectors["cpu"])
                for kind, name in (("cpu", "Pillow (workers)"), ("device", f"{device} (batched)")):
                    cos = f"{lo:>8.5f} {mean:>8.5f}" if kind == "device" else f"{'':>8} {'':>8}"
                    print(f"{label:<18} {precision:<9} {name:<16} {statistics.median(rates[kind]):>8.1f} "
                          f"{statistics.median(walls[kind]):>7.1f} {decoded[kind]:>9} {cos}")

        print()
        print("ceilings (no files, no index):")
        for precision in precisions:
            print(f"  forward only, {precision}, batch {GPU_BATCH if device != 'cpu' else CPU_BATCH}: "
                  f"{forward_only(weights, device, precision):.1f} img/s")
        encoder = make_encoder(resolve_model(None, str(weights)), device=device, precision=precisions[0])
        preprocess: PreprocessConfig = encoder.load().preprocess_config
        print(f"  decoder only (decode + turn + resize + crop on {device}), unsplash: "
              f"{decoder_only(sources, preprocess, device):.1f} img/s")
        if large:
            print(f"  decoder only, 24 MP: {decoder_only(large, preprocess, device):.1f} img/s")
        worst, over, mean_diff = pixel_parity(sources[:PARITY_PHOTOS], preprocess, device)
        print(f"pixels on {device} vs the CPU path (fit(load_image(...)), full-size decoding), "
              f"{min(len(sources), PARITY_PHOTOS)} photos: max abs difference {worst}, values more than one "
              f"level off {over:.4%}, mean abs difference {mean_diff:.4f}")


if __name__ == "__main__":
    main()
