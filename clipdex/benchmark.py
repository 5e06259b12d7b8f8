"""``clipdex bench``: how fast this machine encodes photos, per device, batch size and precision.

Photos are decoded and preprocessed once (timed separately), then each
configuration encodes the same batches; nothing touches an index.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from clipdex.decode import open_image_file, supported_extensions
from clipdex.discover import walk
from clipdex.errors import ClipdexError, ImageDecodeError
from clipdex.models.registry import ModelSpec

MIN_SECONDS = 2.0  # each configuration runs at least this long (after a warm-up batch)


@dataclass(frozen=True)
class BenchRow:
    device: str
    precision: str
    backend: str
    batch_size: int
    images_per_second: float
    ms_per_image: float
    error: str = ""


@dataclass(frozen=True)
class BenchResult:
    photos: int
    decode_images_per_second: float
    rows: list[BenchRow]


def sample_images(folder: str | None, count: int, size: int) -> list:
    """Up to ``count`` decoded photos from ``folder``, or generated ones when none is given."""
    from PIL import Image

    if folder:
        files = walk(folder, supported_extensions()).files[:count]
        images = []
        for entry in files:
            try:
                images.append(open_image_file(entry.fs_path, draft_size=2 * size))
            except ImageDecodeError:
                continue
        if images:
            return images
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 640, dtype=np.float32)
    return [Image.fromarray(np.clip(np.add.outer(base[:480], base) / 2 + rng.normal(0, 20, (480, 640)), 0, 255)
                            .astype(np.uint8)).convert("RGB") for _ in range(count)]


def run_bench(spec: ModelSpec, devices: Sequence[str], batch_sizes: Sequence[int], precisions: Sequence[str],
              folder: str | None = None, photos: int = 64,
              progress: Callable[[str], None] | None = None) -> BenchResult:
    """Time encoding for every device x precision x batch size that this machine supports."""
    from clipdex.models.encoder import make_encoder

    rows: list[BenchRow] = []
    pixels: np.ndarray | None = None
    decode_rate = 0.0
    for device in devices:
        for precision in precisions:
            try:
                encoder = make_encoder(spec, device=device, precision=precision).load()
            except ClipdexError as e:
                rows += [BenchRow(device, precision, "-", b, 0.0, 0.0, str(e).split(".")[0]) for b in batch_sizes]
                continue
            if pixels is None:
                started = time.perf_counter()
                images = sample_images(folder, photos, encoder.image_size)
                pixels = np.stack([encoder.preprocess(im) for im in images])
                decode_rate = len(images) / (time.perf_counter() - started)
            for batch in batch_sizes:
                if progress:
                    progress(f"{device} {precision} batch {batch}")
                rate = _time_batches(encoder.encode_images, pixels, batch)
                rows.append(BenchRow(device, precision, encoder.backend, batch, rate, 1000.0 / rate))
    return BenchResult(photos=0 if pixels is None else len(pixels), decode_images_per_second=decode_rate,
                       rows=rows)


def _time_batches(encode: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch: int) -> float:
    reps = max(1, -(-batch // len(pixels)))
    data = np.concatenate([pixels] * reps)[:batch] if batch > len(pixels) else pixels[:batch]
    encode(data)  # warm-up: allocations, kernel selection
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < MIN_SECONDS or done == 0:
        encode(data)
        done += len(data)
    return done / (time.perf_counter() - started)


def available_devices() -> list[str]:
    from clipdex.models.encoder import pick_device

    devices = ["cpu"]
    best = pick_device(None)
    if best != "cpu":
        devices.insert(0, best)
    return devices


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
