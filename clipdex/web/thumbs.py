"""Thumbnails generated once and cached on disk, upright (EXIF applied), keyed by content hash.

A frame of a video (its path ``video.mp4#t=83.500``: :mod:`clipdex.video`) is decoded from the
video at its time (:func:`clipdex.video_sampling.frame_at`, rotation applied), keyed by the
frame's content hash (the video's content and the time: unique per frame); a video itself gets
its first frame as a poster, keyed by the video's own hash.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from clipdex.decode import load_image
from clipdex.errors import ImageDecodeError
from clipdex.fileio import write_atomically
from clipdex.video import split_frame_path

QUALITY = 85
POSTER_SECONDS = 0.0  # a video's poster: the frame shown at its start
PLACEHOLDER_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">'
    b'<rect width="256" height="256" fill="#ddd"/><text x="128" y="122" font-family="sans-serif" '
    b'font-size="18" text-anchor="middle" fill="#666">photo missing</text><text x="128" y="148" '
    b'font-family="sans-serif" font-size="13" text-anchor="middle" fill="#666">moved or deleted '
    b'since indexing</text></svg>'
)
FRAME_PLACEHOLDER_SVG = (  # a frame of a video (or its poster) that cannot be decoded now
    b'<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">'
    b'<rect width="256" height="256" fill="#ddd"/><text x="128" y="122" font-family="sans-serif" '
    b'font-size="18" text-anchor="middle" fill="#666">frame unreadable</text><text x="128" y="148" '
    b'font-family="sans-serif" font-size="13" text-anchor="middle" fill="#666">video moved, changed '
    b'or deleted</text></svg>'
)


class ThumbnailCache:
    """``folder/<size>/<hash[:2]>/<hash>.jpg``: the longest side at most ``size`` pixels."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, path: str, content_hash: str, size: int) -> bytes | None:
        """JPEG bytes of the thumbnail of a photo or of a frame of a video (``path`` a frame
        path), made on first request; None if the file is gone or can no longer be read."""
        frame = split_frame_path(path)
        if frame is not None:
            return self.frame(frame[0], frame[1], content_hash, size)
        if not os.path.isfile(path):
            return None  # deleted since indexing: the caller shows a placeholder
        cached = self._cached(content_hash, size)
        if cached is not None:
            return cached
        try:
            with open(path, "rb") as f:
                image = load_image(f.read(), path, draft_size=size)
        except (OSError, ImageDecodeError):
            return None
        return self._store(image, content_hash, size)

    def poster(self, video_path: str, video_hash: str, size: int) -> bytes | None:
        """The thumbnail of a video itself: its first frame (keyed by the video's own hash)."""
        return self.frame(video_path, POSTER_SECONDS, video_hash, size)

    def frame(self, video_path: str, t: float, key: str, size: int) -> bytes | None:
        """The thumbnail of the frame of ``video_path`` shown at ``t`` seconds, cached as ``key``."""
        if not os.path.isfile(video_path):
            return None
        cached = self._cached(key, size)
        if cached is not None:
            return cached
        from clipdex.video_sampling import frame_at

        try:
            image = frame_at(video_path, t, min_side=size)
        except (OSError, ImageDecodeError):
            return None  # changed or damaged since indexing: the caller shows a placeholder
        return self._store(image, key, size)

    def _target(self, key: str, size: int) -> Path:
        return self.folder / str(size) / key[:2] / f"{key}.jpg"

    def _cached(self, key: str, size: int) -> bytes | None:
        try:
            return self._target(key, size).read_bytes()
        except OSError:
            return None

    def _store(self, image: Image.Image, key: str, size: int) -> bytes:
        image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=QUALITY)
        data = buffer.getvalue()
        try:
            write_atomically(self._target(key, size), data)
        except OSError:
            pass  # a read-only or full disk: the cache only saves time, the thumbnail is still served
        return data
