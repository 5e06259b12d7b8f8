"""open_clip's evaluation transform in Pillow and numpy (no torch).

For a PIL image, torchvision's ``Resize`` calls Pillow's own resize, so doing
the same resize, centre crop and normalisation here gives the same pixels:
workers can preprocess without torch, and the ONNX path never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
SUPPORTED_RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class PreprocessConfig:
    """What the transform needs: size, normalisation, interpolation, resize mode."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @property
    def supported(self) -> bool:
        return self.resize_mode in SUPPORTED_RESIZE_MODES and self.interpolation in RESAMPLING


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB PIL image -> (3, size, size) float32, normalised like open_clip's val transform."""
    size = cfg.image_size
    resample = RESAMPLING[cfg.interpolation]
    if image.mode != "RGB":
        image = image.convert("RGB")
    if cfg.resize_mode == "squash":
        image = image.resize((size, size), resample)
    else:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if width <= height else (new_long, size)
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample)
        left = int(round((new_w - size) / 2.0))
        top = int(round((new_h - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    scaled = np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)
    normalised = (scaled - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)
