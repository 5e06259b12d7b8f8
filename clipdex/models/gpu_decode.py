"""JPEGs decoded and fitted to the model's input on the GPU, so Pillow never starves it.

A GPU encodes thousands of photos a second; Pillow decodes ~180 a second per core.
:class:`JpegDecoder` decodes a batch of JPEGs in one call
(``torchvision.io.decode_jpeg(list, device=...)``: nvJPEG on CUDA, libjpeg-turbo on
the CPU), turns them upright (EXIF orientation, read from the header by the decode
workers) and resizes and crops them on the same device, giving the (N, S, S, 3)
uint8 batch the encoder takes.

The resize is Pillow's own arithmetic, not an approximation of it:
:func:`pillow_coefficients` computes each output pixel's taps and 22-bit fixed-point
weights exactly as Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` do
(float32 crop boxes included), and the device sums them in int32 in Pillow's order,
rounding and clipping as Pillow does, one pass per axis through 8 bits in the order
Pillow takes. From the same decoded pixels the result is bit-identical to
:func:`clipdex.models.preprocess.fit`; torchvision's CPU decoder gives Pillow's
pixels, so the CPU run of this module equals the CPU path with full-size decoding
exactly. (The indexer's CPU path decodes large JPEGs at reduced size, in the JPEG
decoder: for those the two paths agree to cosine >= 0.999 in vectors, not in
pixels.) nvJPEG's IDCT
and chroma upsampling are its own: on a GPU the pixels differ from Pillow's where
its decoder does (the parity test on a GPU measures it).

Importing this module imports torch; the indexer imports it only when it decodes
on a device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from clipdex.models.preprocess import PreprocessConfig, rows_first

if TYPE_CHECKING:
    import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights for 8-bit images (Resample.c)
HALF = 1 << (PRECISION_BITS - 1)  # Pillow starts every sum here: rounds half up
# Decoded pixels resized in one go (a ~0.6 GB uint8 canvas on the device): 8 photos of 24 MP,
# 500 of 768x512. Each canvas costs two passes of K taps of a few kernels (K = 73 for 24 MP
# to 224 px): fewer, larger canvases keep kernel launches from capping the rate.
CANVAS_PIXELS = 192_000_000
CANVAS_SLACK = 1.25  # at most this much canvas per decoded pixel (padding images to share one)
DECODE_PIXELS = 256_000_000  # pixels handed to one decode call (~0.75 GB of decoded output)

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work and
# are what this module is built on. The warning is for the developer, not the user.
warnings.filterwarnings("ignore", message=r"The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # Pillow's bicubic (Keys, a = -0.5), as torchvision's antialiased resize
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), np.sinc(x) * np.sinc(x / 3), 0.0)


# Pillow's filters: (function, support). Nearest is not a resampling filter in Pillow
# (it takes another code path) and stays on the CPU.
FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0), "lanczos": (_lanczos, 3.0)}


def supported(cfg: PreprocessConfig) -> bool:
    """Whether this module reproduces ``fit`` for ``cfg`` (else the CPU path is used)."""
    return cfg.supported and cfg.interpolation in FILTERS


@dataclass(frozen=True)
class Taps:
    """One resampling pass along one axis: for each output pixel, where its taps start
    in the input (``start``, (out,)) and their fixed-point weights (``weights``, (out, K);
    unused taps weigh 0)."""

    start: np.ndarray
    weights: np.ndarray

    @property
    def size(self) -> int:
        return int(self.weights.shape[1])


def pillow_coefficients(in_size: int, in0: float, in1: float, out_size: int, interpolation: str) -> Taps:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for one axis: resample
    the input span [in0, in1) (a crop box side, float32 in Pillow) of ``in_size`` pixels
    into ``out_size`` pixels. The same floating-point steps, so the same integers."""
    function, support = FILTERS[interpolation]
    box0, box1 = np.float32(in0), np.float32(in1)
    scale = float(np.float32(box1 - box0)) / out_size  # float arithmetic, then double, as in C
    filterscale = max(scale, 1.0)
    support *= filterscale
    ksize = math.ceil(support) * 2 + 1
    centers = float(box0) + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)  # C's (int) truncates
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    weights = function((taps[None, :] + xmin[:, None] - centers[:, None] + 0.5) / filterscale)
    weights = np.where(taps[None, :] < xmax[:, None], weights, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.where(total != 0.0, weights / np.where(total != 0.0, total, 1.0), weights)
    fixed = np.where(weights < 0, np.trunc(-0.5 + weights * (1 << PRECISION_BITS)),
                     np.trunc(0.5 + weights * (1 << PRECISION_BITS)))
    return Taps(xmin.astype(np.int64), fixed.astype(np.int32))


def _identity(offset: int, out_size: int) -> Taps:
    """A crop (or nothing): output pixel i is input pixel offset + i."""
    return Taps(np.arange(offset, offset + out_size, dtype=np.int64),
                np.full((out_size, 1), 1 << PRECISION_BITS, dtype=np.int32))


@dataclass(frozen=True)
class Plan:
    """How one upright image of ``width`` x ``height`` becomes the model's S x S input:
    a horizontal and a vertical pass, in ``order``."""

    width: int
    height: int
    horizontal: Taps
    vertical: Taps
    vertical_first: bool


@lru_cache(maxsize=1024)  # photos from one camera share a few sizes
def plan_fit(width: int, height: int, cfg: PreprocessConfig) -> Plan:
    """The passes :func:`clipdex.models.preprocess.fit` makes Pillow run on a
    ``width`` x ``height`` image, as coefficient tables."""
    size, interp = cfg.image_size, cfg.interpolation
    if cfg.resize_mode == "squash":  # one Pillow resize: it picks the order of its passes
        horizontal = (pillow_coefficients(width, 0, width, size, interp) if width != size
                      else _identity(0, size))
        vertical = (pillow_coefficients(height, 0, height, size, interp) if height != size
                    else _identity(0, size))
        return Plan(width, height, horizontal, vertical, rows_first(width, height, size, size))
    side = cfg.shorter_side
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(side * long / short)
    new_w, new_h = (side, new_long) if width <= height else (new_long, side)
    left = cfg.crop_start(new_w - size)
    top = cfg.crop_start(new_h - size)
    if new_w != width:  # fit's resize of the crop's columns, with its float box
        scale = width / new_w
        horizontal = pillow_coefficients(width, left * scale, (left + size) * scale, size, interp)
    else:
        horizontal = _identity(left, size)
    if new_h != height:
        scale = height / new_h
        vertical = pillow_coefficients(height, top * scale, (top + size) * scale, size, interp)
    else:
        vertical = _identity(top, size)
    return Plan(width, height, horizontal, vertical, vertical_first=rows_first(width, height, new_w, new_h))


# -- on the device -----------------------------------------------------------------

ORIENT: dict[int, Callable[["torch.Tensor"], "torch.Tensor"]] = {
    # EXIF orientation -> what ImageOps.exif_transpose does, on a (3, H, W) tensor
    2: lambda x: x.flip(-1),  # FLIP_LEFT_RIGHT
    3: lambda x: x.flip(-2, -1),  # ROTATE_180
    4: lambda x: x.flip(-2),  # FLIP_TOP_BOTTOM
    5: lambda x: x.transpose(-2, -1),  # TRANSPOSE
    6: lambda x: x.transpose(-2, -1).flip(-1),  # ROTATE_270 (a quarter turn clockwise)
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),  # TRANSVERSE
    8: lambda x: x.transpose(-2, -1).flip(-2),  # ROTATE_90 (a quarter turn anticlockwise)
}


def orient(image: "torch.Tensor", orientation: int) -> "torch.Tensor":
    """A decoded (3, H, W) image turned upright by its EXIF ``orientation`` (1-8)."""
    turn = ORIENT.get(orientation)
    return turn(image) if turn else image


def resample(images: Sequence["torch.Tensor"], plans: Sequence[Plan], size: int) -> "torch.Tensor":
    """(N, size, size, 3) uint8: each upright (3, H, W) uint8 image resized and cropped by
    its plan, all on their device, in Pillow's integer arithmetic.

    The images share one zero-padded canvas (so images of different sizes go in one
    batch), and each output pixel gathers its own taps: the padding is never read.
    """
    import torch

    device = images[0].device
    n = len(images)
    out = torch.empty((n, size, size, 3), dtype=torch.uint8, device=device)
    for order in (False, True):
        chosen = [i for i in range(n) if plans[i].vertical_first == order]
        if chosen:
            picked = [images[i] for i in chosen]
            result = _resample_same_order(picked, [plans[i] for i in chosen], order)
            out[torch.tensor(chosen, device=device)] = result
    return out


def _resample_same_order(images: Sequence["torch.Tensor"], plans: Sequence[Plan],
                         vertical_first: bool) -> "torch.Tensor":
    import torch

    device = images[0].device
    height = max(int(im.shape[1]) for im in images)
    width = max(int(im.shape[2]) for im in images)
    canvas = torch.zeros((len(images), 3, height, width), dtype=torch.uint8, device=device)
    for i, im in enumerate(images):
        canvas[i, :, :im.shape[1], :im.shape[2]] = im
    horizontal = _stack_taps([p.horizontal for p in plans], device)
    vertical = _stack_taps([p.vertical for p in plans], device)
    if vertical_first:
        x = _pass(_pass(canvas, *vertical, dim=2), *horizontal, dim=3)
    else:
        x = _pass(_pass(canvas, *horizontal, dim=3), *vertical, dim=2)
    return x.permute(0, 2, 3, 1)


def _stack_taps(taps: Sequence[Taps], device: "torch.device") -> tuple["torch.Tensor", "torch.Tensor"]:
    """(N, out, K) tap positions and weights of N images' passes, padded to the widest."""
    import torch

    k = max(t.size for t in taps)
    out = len(taps[0].start)
    index = np.zeros((len(taps), out, k), dtype=np.int64)
    weight = np.zeros((len(taps), out, k), dtype=np.int32)
    for i, t in enumerate(taps):
        weight[i, :, :t.size] = t.weights
        # A tap past the image's edge (weight 0: Pillow's window was clipped there) reads
        # the window's first pixel instead, never the padding or beyond the canvas.
        index[i] = t.start[:, None] + np.arange(k)[None, :] * (weight[i] != 0)
    return (torch.from_numpy(index).to(device, non_blocking=True),
            torch.from_numpy(weight).to(device, non_blocking=True))


def _pass(x: "torch.Tensor", index: "torch.Tensor", weight: "torch.Tensor", dim: int) -> "torch.Tensor":
    """One Pillow pass of (N, 3, H, W) uint8 along ``dim`` (3: columns, 2: rows):
    sum the taps in int32 from Pillow's half, in Pillow's order, shift, clip to 8 bits."""
    import torch

    n, channels, height, width = x.shape
    out = index.shape[1]
    if dim == 3:
        shape = (n, channels, height, out)
        view: tuple[int, ...] = (n, 1, 1, out)
    else:
        shape = (n, channels, out, width)
        view = (n, 1, out, 1)
    total = torch.full(shape, HALF, dtype=torch.int32, device=x.device)
    for k in range(index.shape[2]):
        taps = torch.gather(x, dim, index[:, :, k].view(view).expand(shape))
        total += taps.to(torch.int32) * weight[:, :, k].view(view)
    return (total >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class JpegJob:
    """One JPEG to decode: its bytes, stored size and EXIF orientation (from
    :func:`clipdex.decode.read_jpeg_header`)."""

    data: bytes | bytearray
    width: int
    height: int
    orientation: int = 1


class JpegDecoder:
    """Batches of JPEG bytes -> the model's (N, S, S, 3) uint8 input, on ``device``.

    ``device`` is a CUDA device (nvJPEG) or "cpu" (the same steps through libjpeg-turbo:
    how the tests run this module on machines without a GPU).
    """

    def __init__(self, cfg: PreprocessConfig, device: str = "cuda") -> None:
        if not supported(cfg):
            raise ValueError(f"JPEGs cannot be fitted on the device for {cfg}: use the CPU path")
        self.cfg = cfg
        self.device = device

    def decode(self, jobs: Sequence[JpegJob]) -> tuple["torch.Tensor", dict[int, str]]:
        """(N, S, S, 3) uint8 on the device, one row per job, and the jobs the decoder
        rejected (index -> its reason; their rows are zeros): decode those on the CPU.

        The batch is decoded in one call where it fits DECODE_PIXELS; when the call
        fails (one bad file fails a batched call), it is split in halves until the bad
        files are alone.
        """
        import torch

        size = self.cfg.image_size
        out = torch.zeros((len(jobs), size, size, 3), dtype=torch.uint8, device=self.device)
        failed: dict[int, str] = {}
        for chunk in _chunks(jobs, DECODE_PIXELS):
            decoded = self._decode_chunk([jobs[i] for i in chunk])
            ready: list[tuple[int, torch.Tensor]] = []
            for i, image in zip(chunk, decoded):
                if isinstance(image, str):
                    failed[i] = image
                else:
                    ready.append((i, orient(image, jobs[i].orientation)))
            self._fit(ready, out)
        return out, failed

    def _decode_chunk(self, jobs: Sequence[JpegJob]) -> list["torch.Tensor | str"]:
        from torchvision.io import ImageReadMode, decode_jpeg

        def decode(data: list["torch.Tensor"]) -> list["torch.Tensor | str"]:
            """A batched call fails as a whole: the failing half is split again, so that one bad
            file among hundreds costs a few calls (log2 of the chunk), not one call per file."""
            try:
                self._settle()
                return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError as e:
                if len(data) == 1:
                    return [_first_line(e)]
            half = len(data) // 2
            return decode(data[:half]) + decode(data[half:])

        return decode([_as_tensor(job.data) for job in jobs])

    def _settle(self) -> None:
        """Wait for the work queued on this device. torchvision's CUDA decoder writes its
        output on a stream of its own without waiting for the caller's (pytorch/vision
        PR #9606): memory freed a moment ago (the previous chunk's images, whose resize
        is still queued) could be handed to it and overwritten before it is read."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.current_stream(self.device).synchronize()

    def _fit(self, ready: Sequence[tuple[int, "torch.Tensor"]], out: "torch.Tensor") -> None:
        """Resize and crop the decoded images into their rows of ``out``, on shared canvases
        (:func:`_canvases`: images of similar size together)."""
        import torch

        for group in _canvases(ready):
            rows = [i for i, _ in group]
            images = [im for _, im in group]
            plans = [plan_fit(int(im.shape[2]), int(im.shape[1]), self.cfg) for im in images]
            out[torch.tensor(rows, device=out.device)] = resample(images, plans, self.cfg.image_size)


def _canvases(ready: Sequence[tuple[int, "torch.Tensor"]]) -> list[list[tuple[int, "torch.Tensor"]]]:
    """The decoded images in groups that share one canvas: sorted by size, a group ends
    before it would hold CANVAS_PIXELS or pad its images by more than CANVAS_SLACK (a
    panorama beside a portrait would make both pay for the other's padding)."""
    groups: list[list[tuple[int, torch.Tensor]]] = []
    group: list[tuple[int, torch.Tensor]] = []
    pixels = height = width = 0
    for item in sorted(ready, key=lambda item: (item[1].shape[1], item[1].shape[2])):
        h, w = int(item[1].shape[1]), int(item[1].shape[2])
        grown_h, grown_w = max(height, h), max(width, w)
        padded = grown_h * grown_w * (len(group) + 1)
        if group and (padded > CANVAS_PIXELS or padded > CANVAS_SLACK * (pixels + h * w)):
            groups.append(group)
            group, pixels, grown_h, grown_w = [], 0, h, w
        group.append(item)
        pixels += h * w
        height, width = grown_h, grown_w
    if group:
        groups.append(group)
    return groups


def _chunks(jobs: Sequence[JpegJob], budget: int) -> list[list[int]]:
    """Job indices in runs of at most ``budget`` stored pixels (at least one job each)."""
    chunks: list[list[int]] = [[]]
    pixels = 0
    for i, job in enumerate(jobs):
        size = job.width * job.height
        if chunks[-1] and pixels + size > budget:
            chunks.append([])
            pixels = 0
        chunks[-1].append(i)
        pixels += size
    return [c for c in chunks if c]


def _as_tensor(data: bytes | bytearray) -> "torch.Tensor":
    """The file's bytes as a uint8 tensor (without a copy when they are a bytearray)."""
    import torch

    return torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data), dtype=torch.uint8)


def _first_line(error: BaseException) -> str:
    """torchvision's message without its source location: 'decode_jpeg, file.cpp:171, Not a JPEG'."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text.rsplit(", ", 1)[-1] if text.startswith("decode_jpeg") else text
