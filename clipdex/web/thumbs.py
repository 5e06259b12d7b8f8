"""Thumbnails generated once and cached on disk, upright (EXIF applied), keyed by content hash."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from clipdex.decode import load_image
from clipdex.errors import ImageDecodeError
from clipdex.fileio import write_atomically

QUALITY = 85
PLACEHOLDER_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">'
    b'<rect width="256" height="256" fill="#ddd"/><text x="128" y="122" font-family="sans-serif" '
    b'font-size="18" text-anchor="middle" fill="#666">photo missing</text><text x="128" y="148" '
    b'font-family="sans-serif" font-size="13" text-anchor="middle" fill="#666">moved or deleted '
    b'since indexing</text></svg>'
)


class ThumbnailCache:
    """``folder/<size>/<hash[:2]>/<hash>.jpg``: the longest side at most ``size`` pixels."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, path: str, content_hash: str, size: int) -> bytes | None:
        """JPEG bytes of the thumbnail, made on first request; None if the photo is gone."""
        if not os.path.isfile(path):
            return None  # deleted since indexing: the caller shows a placeholder
        target = self.folder / str(size) / content_hash[:2] / f"{content_hash}.jpg"
        try:
            return target.read_bytes()
        except OSError:
            pass
        try:
            with open(path, "rb") as f:
                image = load_image(f.read(), path, draft_size=size)
        except (OSError, ImageDecodeError):
            return None
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=QUALITY)
        data = buffer.getvalue()
        try:
            write_atomically(target, data)
        except OSError:
            pass  # a read-only or full disk: the cache only saves time, the thumbnail is still served
        return data
