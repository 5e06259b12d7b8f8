"""Open one image safely: size limits, EXIF orientation, every mode to RGB.

:func:`load_image` either returns an RGB ``PIL.Image`` ready for a model's
preprocessing or raises :class:`~clipdex.errors.ImageDecodeError` with a reason
a person can act on. It never lets a bad file take a batch down.
:func:`check_image` reads only a file's header (format, size, the megapixel
limit); :func:`open_image_file` opens one image file for a one-off read (a
query image) without reading it whole. :func:`read_taken_at` reads when a photo
was taken from its EXIF alone, without decoding it (a photo whose vector is
reused); :func:`load_image` records the same in ``image.info[TAKEN_AT]``.
:func:`read_jpeg_header` reads what decoding a JPEG elsewhere (on a GPU) needs from
its header alone: size (checked against the limit), EXIF orientation and date.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from clipdex.errors import ImageDecodeError, ImageTooLarge, ImageUnreadable

DEFAULT_MAX_MEGAPIXELS = 178.0  # Pillow's own decompression-bomb error threshold
ORIGINAL_SIZE = "clipdex_original_size"  # image.info key: the file's upright (width, height)
TAKEN_AT = "clipdex_taken_at"  # image.info key: when it was taken ('YYYY-MM-DDTHH:MM:SS') or None
EXIF_IFD = 0x8769  # the Exif sub-IFD, where cameras write when a photo was taken
# Where a photo's date is looked for, best first: DateTimeOriginal and DateTimeDigitized in
# the Exif IFD, then the main IFD's DateTime (when the file was last written by the camera
# or an editor). A tag that holds garbage is skipped for the next.
DATE_TAGS = ((EXIF_IFD, 0x9003), (EXIF_IFD, 0x9004), (None, 0x0132))
DATE_YEARS = (1800, 2200)  # a year outside these is a camera's garbage, not a date
ORIENTATION = 0x0112  # the EXIF tag: how the stored pixels are turned or mirrored for display
TURNED = (5, 6, 7, 8)  # orientations that swap width and height
GPU_JPEG_FORMATS = ("JPEG", "MPO")  # MPO (camera multi-picture JPEG): its first picture, as Pillow shows
GPU_JPEG_MODES = ("RGB", "L")  # CMYK (and Adobe YCCK, which Pillow reads as CMYK) stays on the CPU
EXIF_SEGMENTS = 32  # JPEG segments read before the image data to find the EXIF one
_EXIF_DATE = re.compile(r"(\d{4})[:\-./](\d{2})[:\-./](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
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
        exif = image.getexif()
        orientation = exif.get(ORIENTATION, 1)
        turned = orientation in TURNED
        # exif_transpose copies the whole image when there is nothing to turn (0.5 ms for a
        # 768 x 512 photo, a tenth of its decoding): only an image that turns goes through it.
        upright: Image.Image = ((ImageOps.exif_transpose(image) or image)
                                if orientation in range(2, 9) else image)
        rgb = to_rgb(upright)
        # The file's own upright size (a reduced-size decode is smaller).
        rgb.info[ORIGINAL_SIZE] = (height, width) if turned else (width, height)
        rgb.info[TAKEN_AT] = _taken_at_or_none(exif)
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


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's header says, for decoding it elsewhere (on a GPU) as :func:`load_image` would.

    ``width`` and ``height`` are the stored pixels' (before ``orientation``, the EXIF
    value 1-8 that :func:`load_image` applies); :attr:`upright_size` is the size shown.
    """

    width: int
    height: int
    orientation: int
    taken_at: str | None

    @property
    def upright_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.orientation in TURNED else (self.width, self.height)


def read_jpeg_header(source: BinaryIO, name: str, *,
                     max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> JpegHeader | None:
    """The header of a JPEG that a plain JPEG decoder turns into the same RGB pixels as
    :func:`load_image` (8-bit YCbCr or grayscale), or None for anything else (another
    format; CMYK, which needs its ICC profile): those are decoded by :func:`load_image`.

    Reads the header only, through the same checks as :func:`load_image` (the megapixel
    limit before any pixel, :class:`ImageTooLarge`; a file that is not an image,
    :class:`~clipdex.errors.ImageDecodeError`), and reads the orientation the way
    :func:`load_image` does (EXIF, else XMP, as Pillow's ``getexif``).
    """
    with _decoding(name, source):
        image = _open_checked(source, name, max_megapixels)
        if image.format not in GPU_JPEG_FORMATS or image.mode not in GPU_JPEG_MODES:
            return None
        exif = image.getexif()
        orientation = exif.get(ORIENTATION, 1)
        if orientation not in range(1, 9):
            orientation = 1  # as ImageOps.exif_transpose: an unknown value turns nothing
        return JpegHeader(image.size[0], image.size[1], int(orientation), _taken_at_or_none(exif))
    raise AssertionError("unreachable")


def open_image_file(path: str, *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                    draft_size: int | None = None) -> Image.Image:
    """Open the image file at ``path`` as an upright RGB image (for one-off reads such as
    a query image): the header and size are checked before anything else is read, and
    the file is decoded from disk, never read whole into memory.

    A frame path (``holiday.mp4#t=83.500``, :func:`clipdex.video.split_frame_path`) opens the
    frame of the video shown at that time (:func:`_open_video_frame`): grids, query images and
    duplicates read a video's moments as they read photos.

    Raises :class:`~clipdex.errors.ImageDecodeError` (:class:`ImageUnreadable` when
    the file cannot be opened or read).
    """
    from clipdex.video import split_frame_path

    frame = split_frame_path(path)
    if frame is not None:
        return _open_video_frame(path, frame[0], frame[1], max_megapixels=max_megapixels, draft_size=draft_size)
    try:
        with open(path, "rb") as f:
            return load_image(f, path, max_megapixels=max_megapixels, draft_size=draft_size)
    except OSError as e:  # opening it (load_image turns every later failure into its own)
        raise ImageUnreadable(path, e) from None


def exif_taken_at(exif: Image.Exif) -> str | None:
    """When the photo was taken, from its EXIF: 'YYYY-MM-DDTHH:MM:SS' (local wall-clock time,
    as the camera wrote it), or None when no date tag holds a real date.

    EXIF writes 'YYYY:MM:DD HH:MM:SS'; blank or zeroed dates ('0000:00:00 00:00:00'),
    impossible ones (month 13, 25 o'clock) and years outside DATE_YEARS are skipped.
    """
    for ifd, tag in DATE_TAGS:
        values = exif.get_ifd(ifd) if ifd is not None else exif
        taken = normalise_exif_date(values.get(tag))
        if taken is None and ifd is not None:
            taken = normalise_exif_date(exif.get(tag))  # some writers put it in the main IFD
        if taken is not None:
            return taken
    return None


def normalise_exif_date(value: object) -> str | None:
    """An EXIF date value as 'YYYY-MM-DDTHH:MM:SS', or None when it is not a real date."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    found = _EXIF_DATE.match(value.strip("\x00 \t\r\n"))
    if found is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in found.groups())
    if not DATE_YEARS[0] <= year <= DATE_YEARS[1]:
        return None
    try:
        return datetime(year, month, day, hour, minute, second).strftime("%Y-%m-%dT%H:%M:%S")
    except ValueError:  # month 13, February 30th, 24:00:00...
        return None


def read_taken_at(source: BinaryIO, name: str) -> str | None:
    """When the photo in ``source`` was taken (see :func:`exif_taken_at`), reading only its
    header: for a JPEG the segments before the image data (seeking past all but the EXIF
    one), for other formats what ``Image.open`` reads to identify the image. Never
    decodes pixels. None when it has no date or cannot be read (the caller falls back to
    the file's mtime): a bad file is the decoder's to report, not this function's.
    """
    try:
        start = source.tell()
        if source.read(2) == b"\xff\xd8":
            raw = _jpeg_exif(source)
            if raw is None:
                return None
            exif = Image.Exif()
            exif.load(raw)
            return exif_taken_at(exif)
        source.seek(start)
        supported_extensions()  # plugins registered once
        image = Image.open(_HeaderBudget(source))  # type: ignore[arg-type]  # duck-typed file
        if image.format == "PNG" and "exif" not in image.info:
            return None  # PNG's getexif() would decode the image to find a late eXIf chunk
        return exif_taken_at(image.getexif())
    except Exception:  # noqa: BLE001  (no date is the answer for any unreadable header)
        return None


def _jpeg_exif(source: BinaryIO) -> bytes | None:
    """The EXIF payload of a JPEG whose first two bytes were just read: its APP1 'Exif'
    segment (the TIFF data after the 6-byte 'Exif\\0\\0' header), or None."""
    for _ in range(EXIF_SEGMENTS):
        head = source.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker, length = head[1], struct.unpack(">H", head[2:])[0]
        if marker in (0xDA, 0xD9) or length < 2:  # the image data (or the end) starts here
            return None
        if marker == 0xE1:
            payload = source.read(length - 2)
            if payload.startswith(b"Exif\x00\x00"):
                return payload[6:]
            continue
        source.seek(length - 2, io.SEEK_CUR)
    return None


def _taken_at_or_none(exif: Image.Exif) -> str | None:
    try:
        return exif_taken_at(exif)
    except Exception:  # noqa: BLE001  (a broken Exif IFD costs the date, never the photo)
        return None


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


def _open_video_frame(path: str, video: str, t: float, *, max_megapixels: float,
                      draft_size: int | None) -> Image.Image:
    """The frame of ``video`` at ``t`` seconds as :func:`open_image_file` opens a photo: upright RGB,
    reduced by the video decoder so that its shorter side stays at least ``draft_size``, with
    ``info[ORIGINAL_SIZE]`` the frame's full upright size. A video whose pictures are above the
    megapixel limit is refused before any of them is decoded (:class:`ImageTooLarge`, naming the
    video, as sampling it does)."""
    from clipdex.video_sampling import frame_at

    try:
        return frame_at(video, t, min_side=draft_size, max_megapixels=max_megapixels)
    except OSError as e:  # opening or reading the video (a damaged one is a VideoError, an ImageDecodeError)
        raise ImageUnreadable(path, e) from None
