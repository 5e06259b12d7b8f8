"""A model's evaluation transform in Pillow and numpy (no torch): open_clip's, or a
Transformers checkpoint's image processor.

For a PIL image, torchvision's ``Resize`` (open_clip) and Transformers' PIL
image processors call Pillow's own resize, so doing the same resize, centre
crop (each library's rounding of its offset) and normalisation here gives the
same pixels (up to one level of rounding): workers can preprocess without
torch, and the ONNX path never imports it.

The work is split where it is cheapest: :func:`fit` (resize + crop, in the
decode workers) gives the model's input as 8-bit pixels, and the normalisation
(:meth:`PreprocessConfig.scale_shift`, channels first) runs on a whole batch
inside the exported model's graph or on the GPU.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
SUPPORTED_RESIZE_MODES = ("shortest", "squash")
# CLIP's normalisation (OpenAI's, kept by open_clip and Transformers as their default).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Where a centre crop starts when the margin is odd: torchvision's CenterCrop rounds
# (open_clip), Transformers' image processors take the floor.
CROP_ROUNDINGS = ("round", "floor")


@dataclass(frozen=True)
class PreprocessConfig:
    """What the transform needs: size, normalisation, interpolation, resize mode, crop rounding.

    ``resize_mode`` 'shortest' resizes the shorter side to ``resize_size`` (``image_size``
    where None) and crops the centre square of ``image_size``; 'squash' resizes to a
    square, whatever the aspect ratio.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop_rounding: str = "round"
    resize_size: int | None = None  # the shorter side before the crop (Transformers' shortest_edge), if larger

    @property
    def shorter_side(self) -> int:
        """What 'shortest' resizes the shorter side to, before the centre crop."""
        return self.resize_size or self.image_size

    @property
    def supported(self) -> bool:
        return (self.resize_mode in SUPPORTED_RESIZE_MODES and self.interpolation in RESAMPLING
                and self.crop_rounding in CROP_ROUNDINGS)

    def to_meta(self) -> dict[str, Any]:
        """The facts an export's meta.json keeps (:meth:`from_meta` reads them back)."""
        facts = asdict(self)
        facts["mean"], facts["std"] = list(self.mean), list(self.std)
        return facts

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "PreprocessConfig":
        return cls(int(meta["image_size"]), tuple(meta["mean"]), tuple(meta["std"]),  # type: ignore[arg-type]
                   meta["interpolation"], meta["resize_mode"], meta.get("crop_rounding", "round"),
                   meta.get("resize_size"))

    def crop_start(self, margin: int) -> int:
        """Offset of a centre crop that leaves ``margin`` pixels out."""
        return margin // 2 if self.crop_rounding == "floor" else round(margin / 2.0)

    def scale_shift(self) -> tuple[list[float], list[float]]:
        """Per channel, ``x * scale - shift`` turns 8-bit pixels into the model's
        input: (x / 255 - mean) / std."""
        return ([1.0 / (255.0 * s) for s in self.std], [m / s for m, s in zip(self.mean, self.std)])


def check_pixels(batch: np.ndarray) -> None:
    """ValueError unless ``batch`` is a stack of :func:`fit` outputs, (N, H, W, 3) uint8: what the
    exported image towers take."""
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected a stack of preprocess() outputs, (N, H, W, 3) uint8; "
                         f"got {batch.dtype} {batch.shape}")


def rows_first(width: int, height: int, out_w: int, out_h: int) -> bool:
    """Whether Pillow resizes a ``width`` x ``height`` image to ``out_w`` x ``out_h`` rows before
    columns. Pillow 13 does when the height shrinks by more than twice what the width does
    (Resample.c); earlier versions always do columns first. Which one is installed is found
    once, by trying."""
    rule = height - out_h > 0 and height - out_h > (width - out_w) * 2
    return rule and _pillow_has_rows_first()


@functools.lru_cache(maxsize=1)
def _pillow_has_rows_first() -> bool:
    rng = np.random.default_rng(0)
    probe = Image.fromarray(rng.integers(0, 256, (96, 40, 3), dtype=np.uint8))
    bicubic = Image.Resampling.BICUBIC
    one = np.asarray(probe.resize((30, 20), bicubic))
    rows = np.asarray(probe.resize((40, 20), bicubic).resize((30, 20), bicubic))
    return bool(np.array_equal(one, rows))


def fit(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB PIL image -> (size, size, 3) uint8: the model's resize and centre crop (or squash).

    Pillow resizes in two passes (one axis, then the other, through an 8-bit
    image, in the order :func:`rows_first` says); doing the same two passes in the
    same order, restricted to the crop, skips the pixels the crop throws away (1.4x
    faster on 3:2 photos) and rounds the same way.
    """
    size = cfg.image_size
    resample = RESAMPLING[cfg.interpolation]
    if image.mode != "RGB":
        image = image.convert("RGB")
    if cfg.resize_mode == "squash":
        return np.asarray(image.resize((size, size), resample))
    width, height = image.size
    side = cfg.shorter_side
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(side * long / short)  # torchvision's Resize(side) on the shorter side
    new_w, new_h = (side, new_long) if width <= height else (new_long, side)
    left = cfg.crop_start(new_w - size)
    top = cfg.crop_start(new_h - size)
    if resample == Image.Resampling.NEAREST:  # a box shifts nearest's sampling grid: resize whole, then crop
        return np.asarray(image.resize((new_w, new_h), resample).crop((left, top, left + size, top + size)))
    if rows_first(width, height, new_w, new_h):
        return np.asarray(_columns(_rows(image, new_h, top, size, resample), new_w, left, size, resample))
    return np.asarray(_rows(_columns(image, new_w, left, size, resample), new_h, top, size, resample))


def _columns(image: Image.Image, new_w: int, left: int, size: int, resample: Image.Resampling) -> Image.Image:
    """The columns [left, left + size) of the image resized to ``new_w`` wide (Pillow's horizontal pass)."""
    width, height = image.size
    if new_w != width:
        scale = width / new_w
        return image.resize((size, height), resample, box=(left * scale, 0, (left + size) * scale, height))
    return image.crop((left, 0, left + size, height)) if new_w != size else image


def _rows(image: Image.Image, new_h: int, top: int, size: int, resample: Image.Resampling) -> Image.Image:
    """The rows [top, top + size) of the image resized to ``new_h`` high (Pillow's vertical pass)."""
    width, height = image.size
    if new_h != height:
        scale = height / new_h
        return image.resize((width, size), resample, box=(0, top * scale, width, (top + size) * scale))
    return image.crop((0, top, width, top + size)) if new_h != size else image
