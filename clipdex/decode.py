"""Open one image safely: size limits, EXIF orientation, every mode to RGB.

:func:`load_image` either returns an RGB ``PIL.Image`` ready for a model's
preprocessing or raises :class:`~clipdex.errors.ImageDecodeError` with a reason
a person can act on. It never lets a bad file take a batch down.
:func:`check_image` reads only a file's header (format, size, the megapixel
limit); :func:`open_image_file` opens one image file for a one-off read (a
query image) without reading it whole.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
from collections.abc import Iterator
from functools import lru_cache
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from clipdex.errors import ImageDecodeError, ImageTooLarge, ImageUnreadable

DEFAULT_MAX_MEGAPIXELS = 178.0  # Pillow's own decompression-bomb error threshold
ORIGINAL_SIZE = "clipdex_original_size"  # image.info key: the file's upright (width, height)
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as viewers do
BASE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp",
                   ".tif", ".tiff")
PLUGIN_EXTENSIONS = {".heic": "HEIF", ".heif": "HEIF", ".avif": "AVIF"}
HEADER_READS = 100_000  # reads Pillow may take to find an image's header (real ones take dozens)
HEADER_BYTES = 64 * 2**20  # and bytes (headers with large ICC/XMP segments stay far below)

# Pillow's warnings (DecompressionBombWarning: the size is checked here; "Corrupt EXIF
# data"…) are not for the user: a bad file is reported by its failure. Filtered once
# here, not per call: warnings.catch_warnings() is not thread-safe, and decoding runs in
# worker threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")


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
    data: bytes | BinaryIO,
    name: str,
    *,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``data`` (the bytes of file ``name``, or the file opened in binary mode)
    into an upright RGB image.

    The header is read first and the pixel count checked against
    ``max_megapixels`` (:class:`ImageTooLarge`) before any pixel is decoded; from
    an open file only what the decoder needs is read. ``draft_size`` lets JPEG
    decoding scale down by 1/2, 1/4 or 1/8 while both sides stay at least that
    many pixels: big photos decode several times faster and lose nothing a
    224-pixel model sees. Every failure is an :class:`~clipdex.errors.ImageDecodeError`.
    """
    source: BinaryIO = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with _decoding(name, source):
        image = _open_checked(source, name, max_megapixels)
        width, height = image.size
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        upright: Image.Image = ImageOps.exif_transpose(image) or image
        rgb = to_rgb(upright)
        # The file's own upright size (a reduced-size decode is smaller).
        rgb.info[ORIGINAL_SIZE] = (height, width) if turned else (width, height)
        return rgb
    raise AssertionError("unreachable")  # _decoding re-raises every failure


def check_image(source: BinaryIO, name: str, *,
                max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> tuple[str, int, int]:
    """(format, width, height) of the image in ``source``, reading only its header.

    Raises :class:`ImageTooLarge` above ``max_megapixels``, and
    :class:`~clipdex.errors.ImageDecodeError` for a file that is not an image.
    A multi-gigabyte file costs a few kilobytes of reading here.
    """
    with _decoding(name, source):
        image = _open_checked(source, name, max_megapixels)
        return str(image.format), image.size[0], image.size[1]
    raise AssertionError("unreachable")


def open_image_file(path: str, *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                    draft_size: int | None = None) -> Image.Image:
    """Open the image file at ``path`` as an upright RGB image (for one-off reads such as
    a query image): the header and size are checked before anything else is read, and
    the file is decoded from disk, never read whole into memory.

    Raises :class:`~clipdex.errors.ImageDecodeError` (:class:`ImageUnreadable` when
    the file cannot be opened or read).
    """
    try:
        with open(path, "rb") as f:
            return load_image(f, path, max_megapixels=max_megapixels, draft_size=draft_size)
    except OSError as e:  # opening it (load_image turns every later failure into its own)
        raise ImageUnreadable(path, e) from None


def _open_checked(source: BinaryIO, name: str, max_megapixels: float) -> Image.Image:
    """Image.open (header only) plus the size checks."""
    supported_extensions()  # plugins registered once
    start = source.tell()
    if not source.read(1):
        raise ImageDecodeError(name, "empty file (0 bytes)")
    source.seek(start)
    limit = int(max_megapixels * 1_000_000)
    if limit > 2 * (Image.MAX_IMAGE_PIXELS or 0):
        # Pillow's own guard refuses above 2 x MAX_IMAGE_PIXELS: let it admit what the
        # caller asked for (it is only ever raised, never lowered, so threads agree).
        Image.MAX_IMAGE_PIXELS = limit // 2 + 1
    budget = _HeaderBudget(source)
    try:
        image = Image.open(budget)  # type: ignore[arg-type]  # a file object, duck-typed
    except (UnidentifiedImageError, SyntaxError, OSError, EOFError, struct.error):
        if budget.exhausted:
            raise ImageDecodeError(name, "not an image: no image header in its first "
                                         f"{HEADER_READS:,} reads or {HEADER_BYTES // 2**20} MB "
                                         f"(first bytes: {_first_bytes(source)!r})") from None
        raise
    budget.exhausted = False
    budget.unlimited = True  # the header is read: decoding reads what the image needs
    width, height = image.size
    if width * height > limit:
        raise ImageTooLarge(name, width * height, max_megapixels, (width, height))
    return image


class _HeaderBudget:
    """A file object that ends (reads give b"") once identifying an image has taken
    HEADER_READS reads or HEADER_BYTES bytes.

    Pillow finds an image's header by reading forward: a JPEG start marker followed
    by gigabytes of zeros is scanned one byte per read, which took minutes. Real
    headers, with their EXIF, ICC and XMP segments, are found in a few dozen reads.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._reads = 0
        self._bytes = 0
        self.exhausted = False
        self.unlimited = False

    def read(self, size: int = -1) -> bytes:
        if not self.unlimited:
            self._reads += 1
            if self._reads > HEADER_READS or self._bytes >= HEADER_BYTES:
                self.exhausted = True
                return b""
            if size is None or size < 0 or size > HEADER_BYTES - self._bytes:
                size = HEADER_BYTES - self._bytes
        data = self._source.read(size)
        self._bytes += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._source.seek(offset, whence)

    def tell(self) -> int:
        return self._source.tell()

    def __getattr__(self, name: str) -> object:  # readable(), seekable(), fileno()…
        return getattr(self._source, name)


@contextlib.contextmanager
def _decoding(name: str, source: BinaryIO) -> Iterator[None]:
    """Turn every way Pillow (and the file under it) can fail into an ImageDecodeError."""
    try:
        yield
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageTooLarge(name, int(pixels.group(1)) if pixels else 0,
                            _limit_in_force()) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image, or a format Pillow cannot read "
                                     f"(first bytes: {_first_bytes(source)!r})") from None
    except MemoryError:
        raise ImageDecodeError(name, "too large to decode in the memory available") from None
    except OSError as e:
        if e.errno is not None:  # the OS failed to read the file (Pillow's own errors carry none)
            raise ImageUnreadable(name, e) from None
        raise ImageDecodeError(name, f"corrupt or truncated image data ({e})") from None
    except (SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageDecodeError(name, f"corrupt or truncated image data ({e})") from None
    except Exception as e:  # noqa: BLE001  (a decoder bug is one bad file, never a crash)
        raise ImageDecodeError(name, f"could not be decoded ({type(e).__name__}: {e})") from None


def _limit_in_force() -> float:
    return 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1_000_000


def _first_bytes(source: BinaryIO) -> bytes:
    try:
        source.seek(0)
        return source.read(8)
    except (OSError, ValueError):
        return b""


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
