"""Open one image safely: size limits, EXIF orientation, every mode to RGB.

:func:`load_image` either returns an RGB ``PIL.Image`` ready for a model's
preprocessing or raises :class:`~clipdex.errors.ImageDecodeError` with a reason
a person can act on. It never lets a bad file take a batch down.
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from clipdex.errors import ImageDecodeError

DEFAULT_MAX_MEGAPIXELS = 178.0  # Pillow's own decompression-bomb error threshold
ORIGINAL_SIZE = "clipdex_original_size"  # image.info key: the file's upright (width, height)
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as viewers do
BASE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp",
                   ".tif", ".tiff")
PLUGIN_EXTENSIONS = {".heic": "HEIF", ".heif": "HEIF", ".avif": "AVIF"}


def _register_plugins() -> None:
    """HEIC/AVIF support when pillow-heif (or pillow-avif-plugin) is installed."""
    try:
        from pillow_heif import register_heif_opener  # type: ignore[import-not-found]

        register_heif_opener()
        try:
            from pillow_heif import register_avif_opener  # type: ignore[import-not-found]

            register_avif_opener()
        except ImportError:
            pass
    except ImportError:
        pass
    try:
        import pillow_avif  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass


@lru_cache(maxsize=1)
def supported_extensions() -> tuple[str, ...]:
    """Lower-case file extensions clipdex indexes with the plugins installed here."""
    _register_plugins()
    registered = {ext.lower() for ext in Image.registered_extensions()}
    extra = tuple(ext for ext in PLUGIN_EXTENSIONS if ext in registered)
    return BASE_EXTENSIONS + extra


def load_image(
    data: bytes,
    name: str,
    *,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``data`` (the bytes of file ``name``) into an upright RGB image.

    ``draft_size`` lets JPEG decoding scale down by 1/2, 1/4 or 1/8 while both
    sides stay at least that many pixels: big photos decode several times faster
    and lose nothing a 224-pixel model sees.
    """
    supported_extensions()  # plugins registered once
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    limit = int(max_megapixels * 1_000_000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if limit > 2 * (Image.MAX_IMAGE_PIXELS or 0):
                Image.MAX_IMAGE_PIXELS = limit // 2 + 1
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limit:
                raise ImageDecodeError(
                    name,
                    f"image is {width}x{height} ({width * height / 1e6:.0f} megapixels), above the "
                    f"{max_megapixels:g}-megapixel limit that guards against decompression bombs; "
                    "raise --max-megapixels if it is a genuine photo",
                )
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            upright: Image.Image = ImageOps.exif_transpose(image) or image
            rgb = to_rgb(upright)
            # The file's own upright size (a reduced-size decode is smaller).
            rgb.info[ORIGINAL_SIZE] = (height, width) if turned else (width, height)
            return rgb
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(name, f"refused as a decompression bomb ({e}); raise "
                                     "--max-megapixels if it is a genuine photo") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image, or a format Pillow cannot read "
                                     f"(first bytes: {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(name, f"corrupt or truncated image data ({e})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without the usual surprises.

    16-bit images are scaled (not clipped), transparency is composited on
    white (not dropped to black), CMYK goes through its ICC profile when it has one.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image).astype(np.float32)
        if mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array / 257.0
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(array / top * 255, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "CMYK" and image.info.get("icc_profile"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
            converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"),
                                                  outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's plain conversion
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info) or (
        mode in ("L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
