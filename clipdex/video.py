"""Videos in a photo folder: how a moment of a video is named, written and read back.

A video is indexed as the frames sampled from it (:mod:`clipdex.video_sampling`):
each frame is a row of the catalog's ``files`` table with its video
(``video_id``) and its time (``frame_t``, seconds from the start), and its own
vector, found like a photo's. Its path is the video's with a media-fragment
suffix, ``holiday.mp4#t=83.500``: unique in the catalog, and what every reader
of an image by path (thumbnails, grids, query images) recognises as a frame to
decode from the video rather than a file to open.

People write a moment as ``holiday.mp4 @ 0:01:23`` (:func:`format_time`) and ask
for one as ``@holiday.mp4@83.5`` or ``@holiday.mp4@1:23.5`` (:func:`split_moment`).
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
# Seconds between sampled frames where no scene changes (--video-interval). Measured in
# bench/video_speed.py: see the README's "Videos" section for the figures behind it.
DEFAULT_INTERVAL = 3.0
MIN_INTERVAL = 0.1
# At most this many seconds between samples: the sampler holds the packets since the last sample,
# and a longer gap in a long-GOP 4K stream is gigabytes of them (and no longer finds moments).
MAX_INTERVAL = 60.0
# Hits of one video within this many seconds of a better one, in the same scene, are the same
# moment: a search lists the best of them once.
MOMENT_SECONDS = 10.0
# A query's ``@video.mp4@83.5`` takes the stored vector of a kept frame this close to the time
# asked (results show times to a tenth of a second); further off, the frame at that time is decoded.
MOMENT_MATCH_SECONDS = 0.05
FRAME_MARK = "#t="
_FRAME = re.compile(r"#t=(\d+(?:\.\d+)?)$")
_TIME = re.compile(r"^(?:(?:(\d+):)?(\d{1,2}):)?(\d+(?:\.\d+)?)$")


def is_video(path: str) -> bool:
    """Whether ``path`` names a video by its extension (what the walk indexes as one)."""
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def frame_path(video_path: str, t: float) -> str:
    """The catalog path of the frame of ``video_path`` at ``t`` seconds (milliseconds kept)."""
    return f"{video_path}{FRAME_MARK}{t:.3f}"


def frame_hash(video_hash: str, t: float) -> str:
    """The content key of a frame's vector: its video's content and its time. A copy of a
    video (same content, another path) shares its frames' vectors, as copies of a photo do."""
    return f"{video_hash}@{t:.3f}"


def split_frame_path(path: str) -> tuple[str, float] | None:
    """(video path, seconds) of a frame path made by :func:`frame_path`; None for any other
    path (a photo, or a file whose own name ends so without a video's extension)."""
    found = _FRAME.search(path)
    if found is None:
        return None
    video = path[:found.start()]
    return (video, float(found.group(1))) if is_video(video) else None


def format_time(seconds: float) -> str:
    """``0:01:23`` (hours always shown; tenths where the moment is not on a whole second)."""
    seconds = max(0.0, seconds)
    whole = math.floor(seconds + 1e-6)
    tenths = round((seconds - whole) * 10)
    if tenths == 10:
        whole, tenths = whole + 1, 0
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{text}.{tenths}" if tenths else text


def moment_name(path: str, t: float) -> str:
    """``video.mp4 @ 0:01:23``: a moment as people write it (the video's file name and time)."""
    return f"{os.path.basename(path)} @ {format_time(t)}"


def parse_time(text: str) -> float | None:
    """Seconds of ``83.5``, ``1:23.5`` or ``0:01:23``; None when ``text`` is not a time."""
    found = _TIME.match(text.strip())
    if found is None:
        return None
    hours, minutes, secs = found.groups()
    if minutes is not None and hours is None and float(secs) >= 60:
        return None
    if hours is not None and (int(minutes) >= 60 or float(secs) >= 60):
        return None
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs)


def split_moment(ref: str) -> tuple[str, float] | None:
    """(video, seconds) of a query's ``video.mp4@83.5``; None when ``ref`` names no moment
    (a photo, or a video without a time)."""
    video, mark, when = ref.rpartition("@")
    if not mark or not is_video(video):
        return None
    seconds = parse_time(when)
    return None if seconds is None else (video, seconds)


class Hit(Protocol):
    """A ranked photo or frame, as :func:`fold_moments` reads it."""

    @property
    def video_id(self) -> int | None: ...

    @property
    def frame_t(self) -> float | None: ...

    @property
    def frame_scene(self) -> int | None: ...


H = TypeVar("H", bound=Hit)


def fold_moments(hits: Iterable[H], per_video: int | None = None) -> list[H]:
    """``hits`` (best first) with each video's moments told apart: a frame in the same shot as a
    better hit of its video and within :data:`MOMENT_SECONDS` of it is that moment again (dropped),
    and at most ``per_video`` moments of one video are kept. Photos pass untouched. Each shot's
    kept times are kept sorted: a hit costs a binary search, not a scan of its video's moments."""
    kept: list[H] = []
    listed: dict[int, int] = {}  # video -> moments kept
    shots: dict[tuple[int, int], list[float]] = {}  # (video, shot) -> kept times, sorted
    for hit in hits:
        video = hit.video_id
        if video is None:
            kept.append(hit)
            continue
        if per_video is not None and listed.get(video, 0) >= per_video:
            continue
        t = hit.frame_t or 0.0
        times = shots.setdefault((video, hit.frame_scene or 0), [])
        at = bisect.bisect_left(times, t)
        if (at < len(times) and times[at] - t <= MOMENT_SECONDS) or (at and t - times[at - 1] <= MOMENT_SECONDS):
            continue
        times.insert(at, t)
        listed[video] = listed.get(video, 0) + 1
        kept.append(hit)
    return kept


def nearest_frame(times: Sequence[float], t: float) -> int | None:
    """Index of the time in ``times`` within :data:`MOMENT_MATCH_SECONDS` of ``t`` (None: none is)."""
    if not times:
        return None
    best = min(range(len(times)), key=lambda i: abs(times[i] - t))
    return best if abs(times[best] - t) <= MOMENT_MATCH_SECONDS else None
