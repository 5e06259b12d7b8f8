"""``clipdex bench``: how fast this machine encodes photos, per device, batch size and precision.

Photos are decoded and preprocessed once (timed separately), then each
configuration encodes the same batches; nothing touches an index. ``auto``
runs what :func:`clipdex.models.auto.choose` picks on the first few of those
photos, with the reason; the result names the CPU features those choices
depend on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from clipdex.decode import open_image_file, supported_extensions
from clipdex.discover import walk
from clipdex.errors import ClipdexError, ImageDecodeError, PhotoFolderError
from clipdex.models.registry import ModelSpec

if TYPE_CHECKING:
    from clipdex.models.encoder import Encoder

log = logging.getLogger(__name__)
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
    chosen: str = ""  # for precision "auto": the precision it chose (and ran)
    reason: str = ""  # for precision "auto": why


@dataclass(frozen=True)
class BenchResult:
    photos: int
    decode_images_per_second: float
    rows: list[BenchRow]
    features: str = ""  # the CPU and the features the precisions depend on (CpuFeatures.describe())
    # JPEG decode + resize + crop on each CUDA device (nvJPEG, as `clipdex index` does there), img/s
    device_decode_images_per_second: dict[str, float] = field(default_factory=dict)


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
        raise PhotoFolderError(folder, f"holds no photo that decodes ({len(files)} image file(s) tried)",
                               "Pass a folder of photos, or none to time generated images.")
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 640, dtype=np.float32)
    return [Image.fromarray(np.clip(np.add.outer(base[:480], base) / 2 + rng.normal(0, 20, (480, 640)), 0, 255)
                            .astype(np.uint8)).convert("RGB") for _ in range(count)]


def run_bench(spec: ModelSpec, devices: Sequence[str], batch_sizes: Sequence[int], precisions: Sequence[str],
              folder: str | None = None, photos: int = 64,
              progress: Callable[[str], None] | None = None) -> BenchResult:
    """Time encoding for every device x precision x batch size that this machine supports."""
    from clipdex.models.precision import cpu_features

    rows: list[BenchRow] = []
    result_decode: dict[str, float] = {}
    prepared: list[np.ndarray] = []  # the photos' pixels, made by the first encoder built
    timing: list[float] = []  # their decode + preprocess rate
    for device in devices:
        built: dict[str, Encoder] = {}  # precision -> encoder, shared with auto's check
        for precision in precisions:
            try:
                encoder, chosen, reason = _bench_encoder(spec, device, precision, built, folder, photos,
                                                         prepared, timing)
            except Exception as e:  # noqa: BLE001  (a runtime that fails is a row that says so, not a crash)
                why = str(e).split(".")[0] if isinstance(e, ClipdexError) else f"{type(e).__name__}: {e}"
                rows += [BenchRow(device, precision, "-", b, 0.0, 0.0, why) for b in batch_sizes]
                continue
            for batch in batch_sizes:
                if progress:
                    progress(f"{device} {precision} batch {batch}")
                rate = _time_batches(encoder.encode_images, prepared[0], batch)
                rows.append(BenchRow(device, precision, encoder.backend, batch, rate, 1000.0 / rate,
                                     chosen=chosen, reason=reason))
        if device.startswith("cuda") and folder and built:
            try:
                decoded = _device_decode_rate(folder, photos, next(iter(built.values())), device)
            except Exception as e:  # noqa: BLE001  (the indexer falls back to Pillow too)
                log.warning("decoding on %s could not be timed (%s: %s); `clipdex index` falls back to "
                            "Pillow there too", device, type(e).__name__, e)
                decoded = None
            if decoded:
                result_decode[device] = decoded
    return BenchResult(photos=len(prepared[0]) if prepared else 0,
                       decode_images_per_second=timing[0] if timing else 0.0, rows=rows,
                       features=cpu_features().describe(), device_decode_images_per_second=result_decode)


def _device_decode_rate(folder: str, count: int, encoder: "Encoder", device: str) -> float | None:
    """JPEGs of ``folder`` decoded, turned and fitted on ``device`` (img/s, after a warm-up),
    or None where none of its photos is such a JPEG or the device stage is not available."""
    import io

    from clipdex.decode import read_jpeg_header
    from clipdex.models.gpu_decode import JpegDecoder, JpegJob, supported

    cfg = getattr(encoder, "preprocess_config", None)
    if cfg is None or not supported(cfg):
        return None
    jobs = []
    for entry in walk(folder, supported_extensions()).files[:count]:
        try:
            with open(entry.fs_path, "rb") as f:
                data = f.read()
            header = read_jpeg_header(io.BytesIO(data), entry.path)
        except (OSError, ImageDecodeError):
            continue
        if header is not None:
            jobs.append(JpegJob(data, header.width, header.height, header.orientation))
    if not jobs:
        return None
    import torch

    decoder = JpegDecoder(cfg, device)
    decoder.decode(jobs)  # warm-up: nvJPEG's handles, kernels
    torch.cuda.synchronize(device)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < MIN_SECONDS or done == 0:
        decoder.decode(jobs)
        done += len(jobs)
    torch.cuda.synchronize(device)
    return done / (time.perf_counter() - started)


def _bench_encoder(spec: ModelSpec, device: str, precision: str, built: dict[str, "Encoder"],
                   folder: str | None, photos: int, prepared: list[np.ndarray],
                   timing: list[float]) -> tuple["Encoder", str, str]:
    """The loaded encoder for one row, with (for ``auto``) the precision chosen and why.

    The first encoder built decodes and preprocesses the photos into ``prepared``
    (and their rate into ``timing``): auto's check needs them before it chooses."""
    from clipdex.models.auto import SAMPLE_PHOTOS, choose
    from clipdex.models.factory import make_encoder
    from clipdex.models.precision import AUTO

    concrete = "fp32" if precision == AUTO else precision
    if concrete not in built:
        built[concrete] = make_encoder(spec, device=device, precision=concrete)
        built[concrete].load()
    if not prepared:
        started = time.perf_counter()
        encoder = built[concrete]
        images = sample_images(folder, photos, encoder.image_size)
        prepared.append(np.stack([encoder.preprocess(im) for im in images]))
        timing.append(len(images) / (time.perf_counter() - started))
    if precision != AUTO:
        return built[concrete], "", ""
    choice = choose(spec, device, list(prepared[0][:SAMPLE_PHOTOS]), encoders=built)
    return built[choice.precision], choice.precision, choice.reason


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
    from clipdex.models.devices import pick_device

    devices = ["cpu"]
    best = pick_device(None)
    if best != "cpu":
        devices.insert(0, best)
    return devices


def cpu_name() -> str:
    """'AMD EPYC, 2 cores'."""
    from clipdex.models.precision import cpu_features

    return f"{cpu_features().model}, {os.cpu_count()} cores"
