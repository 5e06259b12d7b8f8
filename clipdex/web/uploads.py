"""Query images people upload: checked before anything is kept, stored in the index folder.

An upload is kept as ``<index>/uploads/<sha256[:32]>.<ext>`` (the extension of
the format Pillow finds, not of the name or type the browser sent) and is named
in queries as ``@upload:<that name>``, so neither the server's paths nor the
user's file name travel in URLs.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

from starlette.exceptions import HTTPException

from clipdex.decode import DEFAULT_MAX_MEGAPIXELS, ImageTooLarge, check_image, load_image
from clipdex.errors import ImageDecodeError, shorten
from clipdex.fileio import write_atomically

UPLOAD_DIR = "uploads"
UPLOAD_PREFIX = "upload:"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_MEGAPIXELS = DEFAULT_MAX_MEGAPIXELS
FORMATS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
           "TIFF": ".tif"}
UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}\.(?:jpg|png|webp|gif|bmp|tif)$")
MAX_SHOWN = 160


def check_upload(data: bytes, content_type: str | None) -> str:
    """The file extension to keep an upload under, or an HTTP 4xx error that says what is wrong.

    The pixel count is read from the header before any pixel is decoded, then the
    whole image is decoded once (:mod:`clipdex.decode` turns every way Pillow can
    fail into an ImageDecodeError): a bad upload is a 4xx, never a 500.
    """
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and not kind.startswith("image/") and kind != "application/octet-stream":
        raise HTTPException(415, f"uploads must be images ({', '.join(sorted(set(FORMATS.values())))}), "
                                 f"not {shorten(kind, MAX_SHOWN)!r}")
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"uploads are limited to {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; "
                                 f"this one is {len(data) / (1024 * 1024):.1f} MB")
    if not data:
        raise HTTPException(400, "the upload is empty (0 bytes); choose a photo file")
    try:
        found, _width, _height = check_image(io.BytesIO(data), "the upload", max_megapixels=MAX_UPLOAD_MEGAPIXELS)
    except ImageTooLarge as e:  # read from the header: not one pixel was decoded
        raise HTTPException(413, _too_many_pixels(e.pixels)) from None
    except ImageDecodeError as e:
        raise HTTPException(400, f"the upload is not a readable image: {shorten(e.reason, MAX_SHOWN)}") from None
    suffix = FORMATS.get(found)
    if suffix is None:
        raise HTTPException(415, f"uploads must be JPEG, PNG, WebP, GIF, BMP or TIFF images, not {found}")
    try:
        load_image(data, "the upload", max_megapixels=MAX_UPLOAD_MEGAPIXELS)  # every Pillow failure
    except ImageDecodeError as e:
        raise HTTPException(400, f"the upload is not a readable image: {shorten(e.reason, MAX_SHOWN)}") from None
    return suffix


def _too_many_pixels(pixels: int) -> str:
    claim = f"claims {pixels:,} pixels ({pixels / 1e6:,.0f} megapixels)" if pixels else \
        "claims more pixels than Pillow will open"
    return (f"the upload {claim}, above the {MAX_UPLOAD_MEGAPIXELS:g}-megapixel limit that guards "
            "against decompression bombs; upload a smaller copy of the photo")


def save_upload(data: bytes, suffix: str, folder: Path) -> str:
    """Keep a checked upload in ``folder``, named by its content; returns its name."""
    name = hashlib.sha256(data).hexdigest()[:32] + suffix
    write_atomically(folder / name, data)
    return name


def upload_name(ref: str, folder: Path) -> str | None:
    """The upload an image term names (``upload:NAME``, or a path inside ``folder``), else None."""
    if ref.startswith(UPLOAD_PREFIX):
        return ref[len(UPLOAD_PREFIX):]
    try:
        path = Path(ref).expanduser()
        if path.is_absolute() and path.resolve().parent == folder:
            return path.name
    except (OSError, ValueError):
        pass
    return None
