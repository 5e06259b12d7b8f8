"""Frames of a video for the index, decoded with PyAV: sampled at scene changes and every few seconds.

:func:`sample` reads a video once, front to back, and decodes as little of it as it can:

* **Keyframes first.** A keyframe decodes on its own, without the frames before it. Encoders
  put one at each cut (x264's scene-cut detection); phones one every second or two, whatever
  is filmed. A keyframe is sampled when the next sample is due (``interval`` seconds after the
  last), and before that when it comes off the stream's cadence (:data:`CADENCE_TOLERANCE`):
  a cut, sampled where it happens (the next sample then due an interval after it). The other
  packets stay undecoded: a phone's video costs one keyframe per interval.
* **Gaps filled.** Where no keyframe comes in time (a long shot from an encoder with long
  keyframe intervals), frames in between are decoded: a video is looked at at least every
  ``interval`` seconds (plus the few frames the decoder skips: frames no other frame refers to,
  ``skip_frame = "NONREF"``, are not decoded). Packets are held back until the next sampled
  keyframe (up to :data:`LOOKAHEAD_BYTES`), so that the frames filling the gap are placed as
  late as they may be (that keyframe's time minus whole intervals) and the decoder stops as
  early as it can: a third less of x264's long keyframe intervals is decoded than filling
  every ``interval`` from the gap's start.
* **Compared small.** Each frame looked at is shrunk by libav to a 32 x 32 thumbnail, compared
  with the frame looked at before it (colour histograms far apart: a new scene) and with the
  last frame kept (grey levels nearly equal: the same picture, merged into it, so a static shot
  is one frame).
* **Reduced in libav.** A kept frame is converted to RGB at the size asked for (its shorter side
  ``min_side``) by swscale, then turned upright (the display matrix a phone writes) by Pillow.

Which packets are decoded depends only on the packets' timestamps and keyframe flags, and which
frames are kept only on the decoded pixels: the same file and interval give the same frames at
the same times, on any machine and any number of decoder threads (the index keys frame vectors
by time). :func:`frame_at` decodes the frame shown at a moment (thumbnails, ``@video.mp4@83.5``
queries); :func:`probe` reads a video's facts.

Failures are a :class:`~clipdex.errors.VideoError` (a kind of
:class:`~clipdex.errors.ImageDecodeError`: the indexer records the reason and moves on) with a
reason a person understands: not a video (another kind of file under a video's name: only the
containers of :data:`VIDEO_FORMATS` are read), no picture in it, a codec this FFmpeg cannot
decode, cut short or damaged (and where). A picture above ``max_megapixels`` is
:class:`~clipdex.errors.ImageTooLarge` before any frame is decoded, as a photo is (a
decompression bomb under a video's name). An ``OSError`` opening or reading the file is raised
as it is: it may come right by itself. Timestamps are taken as they come: a stream whose
timestamps jump forward is looked at on both sides of the jump, never frame by frame after it.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipdex.decode import DEFAULT_MAX_MEGAPIXELS, ORIGINAL_SIZE
from clipdex.errors import ImageTooLarge, VideoError
from clipdex.video import format_time

if TYPE_CHECKING:
    import av.container
    import av.packet
    import av.video.frame
    import av.video.stream

# A keyframe before the next sample is due is sampled (and the next one is due an interval after
# it) when it comes off the stream's cadence: encoders put one at each cut, phones one every 1-2 s
# whatever is filmed. A keyframe as far from the one before as that one from its own (within this
# share, or 1.5 frames) is on the cadence and not decoded; a cut there is seen at the next sample.
CADENCE_TOLERANCE = 0.05
# Bytes of packets held back waiting for the next keyframe, so that the frames between two sampled
# keyframes are placed to decode as little as possible (x264's longest keyframe interval, 250 frames,
# is 10 s at 25 fps: 20 MB at 16 Mbit/s). Past this, gaps are filled as they come.
LOOKAHEAD_BYTES = 64 * 2**20
# Seconds after a keyframe sampled during which no keyframe off the cadence is (a keyframe-only
# stream of irregular timing, such as a screen recording's; cuts closer than this are seen at
# the next sample).
MIN_KEYFRAME_GAP = 1.0
# Side of the RGB thumbnail two frames are compared on (libav's area filter averages the noise of
# sensor and codec away; 0.2 ms a 1080p frame).
THUMB_SIDE = 32
# Near-identical: mean absolute difference of the two thumbnails' grey levels (0-255) at most this,
# and the later frame is merged into the earlier. Measured by `bench/video_speed.py --thresholds
# 1000` on the shared photos: the same picture with fresh grain differs by 0.35-0.71 (all merged),
# a pan by 5% of the width by 4.0 or more in 95% of photos (1.2% merged: flat skies and walls,
# where the pan changes nothing at 32 x 32), a 10% zoom by 4.3 or more in 95% (0.7% merged).
MERGE_DIFF = 2.0
# New scene: the colour histograms (16 levels a channel) of a frame and the one looked at before it
# differ by more than this share of their pixels (half the L1 distance, 0-1). Measured the same way:
# a cut between two photos differs by 0.245 or more in 99% of pairs (median 0.60; 98.7% found),
# a pan by 20% of the width by 0.125 at most in 99%, a 20% zoom by 0.18 (none split), a 30% zoom
# between two samples by 0.27 in 99% (3% split).
SCENE_DIFF = 0.25
HISTOGRAM_LEVELS = 16
# A stream whose packets stop more than this many seconds before the duration its header states
# was cut short (muxers' durations are exact to a frame; audio may outlast the picture a little).
TRUNCATION_SLACK = 1.0
# Packets in a row that fail to decode before a video is given up as damaged (a few bad packets
# are concealed by the decoder and skipped; a run of them is a damaged file, not a glitch).
MAX_BAD_PACKETS = 30
# Frame paths keep milliseconds (clipdex.video.frame_path): a time read back from one may be
# off by half a millisecond from the frame's own.
TIME_EPSILON = 0.0005
# Years of a creation_time tag that are no date: 1904-01-01 and 1970-01-01 are what muxers write
# when no clock was set (QuickTime's and Unix's zero); a year past the second is a broken clock.
DATE_YEARS = (1971, 2200)
# Orientation of a display matrix, in degrees counter-clockwise, to the Pillow transpose that
# turns the stored picture upright.
_UPRIGHT = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
            270: Image.Transpose.ROTATE_270}
# What a phone's QuickTime file says the local time of recording was (with its offset), preferred
# to the UTC creation_time that every muxer writes.
_LOCAL_DATE_TAGS = ("com.apple.quicktime.creationdate",)
_UTC_DATE_TAGS = ("creation_time",)
# FFmpeg demuxers read as videos (any of the names in a demuxer's comma-separated name): the
# containers of clipdex.video.VIDEO_EXTENSIONS. FFmpeg opens a file by its content, whatever its
# name: a PNG renamed .mp4 would otherwise be "indexed" as a one-frame video.
VIDEO_FORMATS = frozenset({"mov", "mp4", "matroska", "webm", "avi"})
# What the refusal names as the kinds accepted.
_VIDEO_FORMAT_NAMES = "MP4/QuickTime, Matroska/WebM or AVI"

# VideoError lives in clipdex.errors; imported from here as well.
__all__ = ["SampledFrame", "VideoError", "VideoInfo", "frame_at", "probe", "sample"]


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container and stream say, read by :func:`probe`.

    ``width`` and ``height`` are the upright size as shown (rotation and non-square pixels
    applied); ``rotation`` is the degrees clockwise a player turns the stored pictures (a phone
    held upright: 90); ``taken_at`` is the recording's local wall-clock time
    ('YYYY-MM-DDTHH:MM:SS', as photos' EXIF dates) or None.
    """

    duration: float
    width: int
    height: int
    fps: float | None
    codec: str
    rotation: int
    taken_at: str | None


@dataclass(frozen=True)
class SampledFrame:
    """One kept frame: its own time in seconds from the start of the video, its upright RGB
    picture, and its scene (0 for the first, one more at each scene change found)."""

    t: float
    image: Image.Image
    scene: int


def probe(path: str, *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> VideoInfo:
    """The facts of the video at ``path``: duration, upright size, frame rate, codec, rotation
    and when it was recorded. Decodes its first frame (the rotation is carried on frames) and
    nothing else; raises :class:`VideoError` for a file that is not a playable video and
    :class:`~clipdex.errors.ImageTooLarge` for a picture above ``max_megapixels``."""
    container, stream = _open(path, max_megapixels)
    try:
        frame = _first_frame(path, container, stream, max_megapixels)
        rotation = _rotation(frame)
        width, height = _display_size(frame, stream)
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            duration=_duration(container, stream),
            width=width,
            height=height,
            fps=_frame_rate(stream),
            codec=str(stream.codec_context.name),
            rotation=(360 - rotation) % 360,
            taken_at=_taken_at(container, stream),
        )
    finally:
        container.close()


def sample(path: str, *, interval: float, min_side: int | None = None, stop: threading.Event | None = None,
           max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Iterator[SampledFrame]:
    """The frames of the video at ``path`` worth indexing, in time order.

    The first frame is always kept; after it, a frame is looked at at least every ``interval``
    seconds and at each cut the encoder marked with a keyframe (see the module's docstring). One
    whose colours differ from the frame looked at before it by more than :data:`SCENE_DIFF`
    starts a new scene; one within :data:`MERGE_DIFF` of the last kept frame is merged into it
    (not yielded). Images are RGB, upright, reduced (never enlarged) so that their shorter side
    is ``min_side``, with ``info[ORIGINAL_SIZE]`` the frame's full upright size.

    Frames decoded before a failure are yielded first; then :class:`VideoError` says what is
    wrong and where (e.g. ``truncated: no frame after 0:00:12 of 0:00:30``); a picture above
    ``max_megapixels`` is :class:`~clipdex.errors.ImageTooLarge`, before any frame is decoded.
    ``stop`` set ends the iteration within a packet's decoding. The file is read as a stream,
    never whole.
    """
    if not interval > 0:
        raise ValueError(f"interval must be a positive number of seconds, not {interval}")
    container, stream = _open(path, max_megapixels)
    try:
        yield from _Sampler(path, container, stream, interval, min_side, stop, max_megapixels).run()
    finally:
        container.close()


def frame_at(path: str, t: float, *, min_side: int | None = None,
             max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """The frame of the video at ``path`` shown at ``t`` seconds, upright RGB (reduced so that its
    shorter side is ``min_side``, when given). ``t`` past the end gives the last frame; a picture
    above ``max_megapixels`` is :class:`~clipdex.errors.ImageTooLarge`.

    Seeks to the keyframe before ``t`` and decodes forward to the frame whose span holds it, so
    a time read back from a frame path (milliseconds) gives the frame sampled there."""
    import av

    container, stream = _open(path, max_megapixels)
    try:
        stream.thread_type = "AUTO"
        start = _start(stream)
        tb = stream.time_base or Fraction(1, 1)
        try:
            container.seek(start + max(0, math.floor(t / tb)), stream=stream, backward=True)
        except av.error.FFmpegError as e:  # a container without an index: decode from the start
            if isinstance(e, OSError):
                raise
            container.seek(0)
        decoder = _Decoder(path, stream, max_megapixels)
        shown: av.video.frame.VideoFrame | None = None
        for packet in _demux(path, container, stream, decoder):
            for frame in decoder.decode(packet):
                if shown is not None and decoder.time(frame) > t + TIME_EPSILON:
                    return _upright(frame=shown, min_side=min_side, stream=stream)
                shown = frame
        if shown is None:
            raise VideoError(path, f"no frame decodes at or after {format_time(t)}")
        return _upright(frame=shown, min_side=min_side, stream=stream)
    finally:
        container.close()


class _Decoder:
    """The stream's decoder fed one packet at a time: frame times in seconds from the stream's
    start, decoding errors counted (a run of :data:`MAX_BAD_PACKETS` is a damaged file), and
    each frame's size checked against ``max_megapixels`` (a stream whose header states no size,
    or that changes size midway)."""

    def __init__(self, path: str, stream: av.video.stream.VideoStream,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> None:
        self.path = path
        self.stream = stream
        self.max_megapixels = max_megapixels
        self.start = _start(stream)
        self.time_base = float(stream.time_base or Fraction(1, 1))
        self.frame_time = _frame_time(stream)
        self.bad = 0
        self.decoded = 0
        self.last_time: float | None = None

    def packet_time(self, packet: av.packet.Packet) -> float | None:
        stamp = packet.pts if packet.pts is not None else packet.dts
        return None if stamp is None else (stamp - self.start) * self.time_base

    def time(self, frame: av.video.frame.VideoFrame) -> float:
        if frame.pts is None:  # no timestamp (rare raw streams): right after the frame before
            return (self.last_time or 0.0) + self.frame_time
        return (frame.pts - self.start) * self.time_base

    def decode(self, packet: av.packet.Packet | None) -> list[av.video.frame.VideoFrame]:
        """The frames ``packet`` completes (None: flush the decoder); a packet that fails is skipped."""
        import av

        try:
            frames = self.stream.decode(packet)
        except av.error.FFmpegError as e:
            if isinstance(e, OSError):
                raise
            self.bad += 1
            if self.bad >= MAX_BAD_PACKETS:
                where = format_time(self.last_time) if self.last_time is not None else "its start"
                raise VideoError(self.path, f"damaged: the picture cannot be decoded after {where} "
                                            f"({self.bad} packets in a row fail: {e.strerror or e})") from None
            return []
        self.bad = 0
        for frame in frames:
            _check_size(self.path, frame.width, frame.height, self.max_megapixels)
            self.last_time = self.time(frame)
        self.decoded += len(frames)
        return frames


class _Sampler:
    """One pass over a video's packets: which to decode (:meth:`run`), which frames to look at
    (``wants``: for each time in it, the first decoded frame at or after it), which to keep."""

    def __init__(self, path: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 interval: float, min_side: int | None, stop: threading.Event | None,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> None:
        self.path = path
        self.container = container
        self.stream = stream
        self.interval = interval
        self.min_side = min_side
        self.stop = stop
        self.keyframe_gap = min(MIN_KEYFRAME_GAP, interval)
        self.decoder = _Decoder(path, stream, max_megapixels)
        # Times of the frames asked for: the first decoded frame at or after each answers it.
        self.wants: deque[float] = deque()
        self.last: float | None = None  # time of the last frame asked for
        self.fed = -math.inf  # latest time of a packet fed to the decoder
        # Packets not fed yet, with their times, from the last keyframe (or the last packet fed) on.
        self.pending: list[tuple[float, av.packet.Packet]] = []
        self.pending_bytes = 0
        self.scene = 0
        self.previous: _Thumbnail | None = None  # of the frame looked at last
        self.kept: _Thumbnail | None = None  # of the frame kept last

    def run(self) -> Iterator[SampledFrame]:
        stream = self.stream
        stream.thread_type = "AUTO"
        # Frames no other frame refers to are never needed to decode one that is looked at.
        stream.codec_context.skip_frame = "NONREF"
        key: float | None = None  # time of the last keyframe, and its distance from the one before
        key_gap: float | None = None
        sampled_key = -math.inf  # time of the last keyframe asked for
        frame_time = self.decoder.frame_time
        first: float | None = None  # time of the first packet
        seen = -math.inf  # latest time of any packet
        end_packet: av.packet.Packet | None = None
        for packet in _demux(self.path, self.container, stream, self.decoder):
            if self.stop is not None and self.stop.is_set():
                return
            if packet.size == 0:  # the end: what the decoder holds comes out once the last gap is filled
                end_packet = packet
                break
            stamped = self.decoder.packet_time(packet)
            # A packet without a timestamp (rare) is taken to come right after the one before.
            t = stamped if stamped is not None else max(seen, 0.0)
            seen = max(seen, t)
            first = t if first is None else first
            if packet.is_keyframe:
                gap = None if key is None else t - key
                on_cadence = gap is not None and key_gap is not None and \
                    abs(gap - key_gap) <= max(CADENCE_TOLERANCE * key_gap, 1.5 * frame_time)
                key, key_gap = t, gap
                last = self.last
                if last is not None and t < last + self.interval and \
                        (on_cadence or t < sampled_key + self.keyframe_gap):
                    self._drop_pending()  # before the next sample is due, and no cut: not decoded
                    self._add_pending(t, packet)
                    continue
                yield from self._fill_before(t)  # the stretch before it, filled where it is too long
                self._drop_pending()
                self._add_pending(t, packet)
                yield from self._feed_to(t)
                sampled_key = t
                continue
            self._add_pending(t, packet)
            if self.last is None:  # no keyframe yet to start from: after an interval, decode what there is
                if t >= first + self.interval:
                    yield from self._feed_to(first, through=t)
            elif self.pending_bytes > LOOKAHEAD_BYTES:  # too long to wait for the next keyframe
                due = self.last + self.interval
                if t >= due:
                    yield from self._feed_to(due)
                else:
                    yield from self._feed(len(self.pending))
        yield from self._fill_before(seen + frame_time)
        yield from self._feed_packets([end_packet])  # flush (None: a demuxer that ended without its packet)
        if self.decoder.decoded == 0:
            raise VideoError(self.path, "no frame of the video decodes" if first is not None
                             else "the video stream holds no frames")
        self._check_complete(seen)

    def _add_pending(self, t: float, packet: av.packet.Packet) -> None:
        self.pending.append((t, packet))
        self.pending_bytes += packet.size

    def _drop_pending(self) -> None:
        self.pending = []
        self.pending_bytes = 0

    def _fill_before(self, end: float) -> Iterator[SampledFrame]:
        """Ask for frames between the last one asked for and ``end`` (a keyframe about to be sampled, or
        the end of the video) so that none is more than an interval from the next: as few as that
        takes, each as late as it may be (``end`` minus whole intervals), so that as little as
        possible of the stretch is decoded. None before the packets still pending (a keyframe
        skipped between: the frames from it on are as good and need nothing before it).

        Each is placed after the last one asked for (which :meth:`_feed_to` moves past a jump in the
        timestamps), so there are never more of them than packets pending: a stream whose
        timestamps jump by hours costs no more than one without the jump."""
        while self.last is not None and self.pending:
            ahead = math.ceil((end - self.last) / self.interval - 1e-9) - 1  # frames still to ask for
            if ahead <= 0:
                return
            due = max(end - ahead * self.interval, self.pending[0][0])  # after self.last, at most an interval
            asked = self.last
            yield from self._feed_to(due)
            if self.last == asked:
                return  # nothing pending reaches it

    def _feed_to(self, due: float, through: float | None = None) -> Iterator[SampledFrame]:
        """Ask for the first frame at or after ``due`` and feed the pending packets up to the first one,
        in decoding order, at or after it (or ``through``).

        The next frame is due an interval after this one: after ``due``, or after the first packet
        fed that answers it where that comes more than an interval later (the timestamps jump
        forward), so that the frames after a jump are not each taken for a frame overdue."""
        upto = due if through is None else through
        count = next((i + 1 for i, (t, _) in enumerate(self.pending) if t >= upto), 0)
        if count == 0:
            return  # nothing pending reaches it
        want = due if due > self.fed else math.nextafter(self.fed, math.inf)
        answer = min((t for t, _ in self.pending[:count] if t >= want), default=want)
        self.wants.append(want)
        self.last = answer if answer > due + self.interval else due
        yield from self._feed(count)

    def _feed(self, count: int) -> Iterator[SampledFrame]:
        """Feed the first ``count`` pending packets to the decoder. A frame asked for is never answered
        by one from a packet fed before it was asked for (whether that came out of the decoder yet
        depends on its threads): :meth:`_feed_to` asks for times past every packet fed."""
        packets, self.pending = self.pending[:count], self.pending[count:]
        self.pending_bytes = sum(packet.size for _, packet in self.pending)
        for t, _ in packets:
            self.fed = max(self.fed, t)
        yield from self._feed_packets([packet for _, packet in packets])

    def _feed_packets(self, packets: Sequence[av.packet.Packet | None]) -> Iterator[SampledFrame]:
        for packet in packets:
            if self.stop is not None and self.stop.is_set():
                return
            for frame in self.decoder.decode(packet):
                if self.stop is not None and self.stop.is_set():
                    return
                yield from self._look(frame)

    def _look(self, frame: av.video.frame.VideoFrame) -> Iterator[SampledFrame]:
        t = self.decoder.time(frame)
        if not self.wants or t < self.wants[0]:
            return  # decoded only to decode the frames after it
        while self.wants and self.wants[0] <= t:
            self.wants.popleft()
        thumb = _Thumbnail.of(frame)
        new_scene = self.previous is not None and thumb.histogram_distance(self.previous) > SCENE_DIFF
        self.previous = thumb
        if new_scene:
            self.scene += 1
        elif self.kept is not None and thumb.grey_difference(self.kept) <= MERGE_DIFF:
            return  # the same picture as the last frame kept
        self.kept = thumb
        yield SampledFrame(t=t, image=_upright(frame=frame, min_side=self.min_side, stream=self.stream),
                           scene=self.scene)

    def _check_complete(self, seen: float) -> None:
        """A stream whose packets stop well before its stated duration was cut short."""
        expected = _stated_duration(self.container, self.stream)
        if expected is not None and seen + self.decoder.frame_time < expected - TRUNCATION_SLACK:
            raise VideoError(self.path, f"truncated: no frame after {format_time(seen)} of the "
                                        f"{format_time(expected)} its header states; the file was cut short "
                                        "(a copy or recording that did not finish)")


def _open(path: str, max_megapixels: float) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """The container and its main video stream (cover art skipped), or :class:`VideoError` (not a
    video container, no picture in it); :class:`~clipdex.errors.ImageTooLarge` for a picture whose
    stated size is above ``max_megapixels``, before any of it is decoded."""
    import av

    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        if isinstance(e, OSError):
            raise
        if isinstance(e, EOFError):
            raise VideoError(path, "ends before its first frame: an empty recording, or a file cut short") from None
        raise VideoError(path, _unreadable_reason(path, e)) from None
    try:
        _check_format(path, container)
        streams = [s for s in container.streams.video
                   if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            kinds = sorted({s.type for s in container.streams})
            held = f"only {' and '.join(kinds)}" if kinds else "no stream at all"
            raise VideoError(path, f"holds no picture: no video stream ({held})")
        stream = streams[0]
        if stream.codec_context is None:
            raise VideoError(path, f"its video codec ({_codec_name(stream)}) cannot be "
                                   "decoded by this FFmpeg; convert it (e.g. to H.264) to index it")
        _check_size(path, stream.codec_context.width, stream.codec_context.height, max_megapixels)
        return container, stream
    except BaseException:
        container.close()
        raise


def _check_format(path: str, container: av.container.InputContainer) -> None:
    """A :class:`VideoError` unless FFmpeg reads the file as one of :data:`VIDEO_FORMATS` (it goes by the
    content, not the name: an image, a sound or a playlist renamed .mp4 opens as what it is)."""
    name = str(container.format.name)
    if VIDEO_FORMATS.intersection(name.split(",")):
        return
    suffix = os.path.splitext(path)[1] or "a video's name"
    kind = f"a {name.removesuffix('_pipe').upper()} image" if name.endswith("_pipe") else \
        f"{container.format.long_name or name}, FFmpeg's '{name}' format,"
    raise VideoError(path, f"is not a video file ({kind} named {suffix}): only {_VIDEO_FORMAT_NAMES} files "
                           "are read as videos; give it the extension of what it is to index it as that")


def _check_size(path: str, width: int, height: int, max_megapixels: float) -> None:
    """:class:`~clipdex.errors.ImageTooLarge` for a picture above the limit a photo is held to (a
    header stating a huge size is a decompression bomb whatever the file is called)."""
    if width * height > max_megapixels * 1_000_000:
        raise ImageTooLarge(path, width * height, max_megapixels, (width, height))


def _codec_name(stream: Any) -> str:
    try:
        return str(stream.codec.name)
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"


def _demux(path: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
           decoder: _Decoder) -> Iterator[av.packet.Packet]:
    """The stream's packets in decoding order; a container damaged midway is a :class:`VideoError`
    that says where."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as e:
            if isinstance(e, OSError):
                raise
            where = format_time(decoder.last_time) if decoder.last_time is not None else "its start"
            raise VideoError(path, f"damaged: the file cannot be read after {where} ({e.strerror or e})") from None
        yield packet


def _first_frame(path: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 max_megapixels: float) -> av.video.frame.VideoFrame:
    decoder = _Decoder(path, stream, max_megapixels)
    for packet in _demux(path, container, stream, decoder):
        frames = decoder.decode(packet)
        if frames:
            return frames[0]
    raise VideoError(path, "no frame of the video decodes" if decoder.bad else "the video stream holds no frames")


def _frame_rate(stream: av.video.stream.VideoStream) -> float | None:
    """Frames a second: the stream's average rate, else FFmpeg's guess; None when neither is known."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _frame_time(stream: av.video.stream.VideoStream) -> float:
    """Seconds a frame is shown (0 when the frame rate is unknown)."""
    rate = _frame_rate(stream)
    return 1.0 / rate if rate else 0.0


def _start(stream: av.video.stream.VideoStream) -> int:
    return int(stream.start_time) if stream.start_time is not None else 0


def _stated_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Seconds of picture the header states (the stream's own duration, else the container's)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return max(0.0, container.duration / 1_000_000 - (container.start_time or 0) / 1_000_000)
    return None


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """The stated duration, or (a stream that states none) the time of its last packet."""
    stated = _stated_duration(container, stream)
    if stated is not None:
        return stated
    decoder = _Decoder("", stream)
    container.seek(0)
    last = 0.0
    for packet in container.demux(stream):
        t = decoder.packet_time(packet)
        if t is not None:
            last = max(last, t)
    return last


def _rotation(frame: av.video.frame.VideoFrame) -> int:
    """The frame's display matrix angle, counter-clockwise, to the nearest quarter turn (0-270)."""
    return round(frame.rotation / 90.0) * 90 % 360


def _display_size(frame: av.video.frame.VideoFrame, stream: av.video.stream.VideoStream) -> tuple[int, int]:
    """The stored picture's size as shown: non-square pixels (DV, some camcorders) stretched."""
    ratio = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    width = frame.width
    if ratio and ratio > 0 and ratio != 1:
        width = max(1, round(frame.width * ratio))
    return width, frame.height


def _upright(*, frame: av.video.frame.VideoFrame, min_side: int | None,
             stream: av.video.stream.VideoStream) -> Image.Image:
    """The frame as an upright RGB picture, reduced by swscale so that its shorter side is
    ``min_side`` (never enlarged); ``info[ORIGINAL_SIZE]`` is its full upright size, as
    :func:`clipdex.decode.load_image` gives a photo's."""
    width, height = _display_size(frame, stream)
    if min_side is not None and min(width, height) > min_side:
        scale = min_side / min(width, height)
        width, height = max(min_side, round(width * scale)), max(min_side, round(height * scale))
    if (width, height) == (frame.width, frame.height):
        image = frame.to_image()
    else:
        image = frame.to_image(width=width, height=height, interpolation="AREA")
    turn = _rotation(frame)
    upright = image.transpose(_UPRIGHT[turn]) if turn else image
    full = _display_size(frame, stream)
    upright.info[ORIGINAL_SIZE] = (full[1], full[0]) if turn in (90, 270) else full
    return upright


@dataclass(frozen=True)
class _Thumbnail:
    """What two frames are compared on: a 32 x 32 picture's grey levels and colour histogram."""

    grey: np.ndarray  # THUMB_SIDE x THUMB_SIDE, float32, 0-255
    histogram: np.ndarray  # 3 x HISTOGRAM_LEVELS shares of the pixels, per channel

    @classmethod
    def of(cls, frame: av.video.frame.VideoFrame) -> _Thumbnail:
        small = frame.reformat(width=THUMB_SIDE, height=THUMB_SIDE, format="rgb24", interpolation="AREA")
        rgb = small.to_ndarray()
        grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        levels = (rgb.reshape(-1, 3) // (256 // HISTOGRAM_LEVELS)).astype(np.intp)
        channels = levels + np.arange(3) * HISTOGRAM_LEVELS
        counts = np.bincount(channels.ravel(), minlength=3 * HISTOGRAM_LEVELS)
        return cls(grey, counts.astype(np.float32) / (THUMB_SIDE * THUMB_SIDE))

    def grey_difference(self, other: _Thumbnail) -> float:
        """Mean absolute difference of the grey levels (0-255)."""
        return float(np.mean(np.abs(self.grey - other.grey)))

    def histogram_distance(self, other: _Thumbnail) -> float:
        """Share of the pixels whose colour level would have to change (0-1, mean of the channels)."""
        return float(np.abs(self.histogram - other.histogram).sum() / 6)


def _taken_at(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> str | None:
    """When the video was recorded, as local wall-clock time: a phone's own local date when it
    wrote one, else the muxer's UTC ``creation_time`` turned into this machine's local time."""
    tags = [container.metadata or {}, stream.metadata or {}]
    for names, local in ((_LOCAL_DATE_TAGS, True), (_UTC_DATE_TAGS, False)):
        for table in tags:
            for name in names:
                value = table.get(name)
                when = _parse_date(value, local=local) if value else None
                if when is not None:
                    return when
    return None


def _parse_date(text: str, *, local: bool) -> str | None:
    text = text.strip().replace("Z", "+00:00")
    if len(text) >= 5 and text[-5] in "+-" and text[-3] != ":":  # +0200 -> +02:00
        text = f"{text[:-2]}:{text[-2:]}"
    try:
        when = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None
    if not DATE_YEARS[0] <= when.year <= DATE_YEARS[1]:
        return None
    if not local:
        when = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone()
    return when.strftime("%Y-%m-%dT%H:%M:%S")


def _unreadable_reason(path: str, error: Exception) -> str:
    """Why FFmpeg cannot open the file, in words: an MP4/QuickTime file cut short or with its
    structure broken is named as such, anything else is not a video FFmpeg knows."""
    broken = _mp4_problem(path)
    if broken is not None:
        return broken
    detail = getattr(error, "strerror", None) or str(error)
    return f"not a video FFmpeg can read ({detail}); the file may be damaged or of another kind"


def _mp4_problem(path: str) -> str | None:
    """For a file that starts as MP4/QuickTime (an 'ftyp' box): what its top-level boxes show
    wrong (cut short, no index, a box header broken), or None."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            offset, seen = 0, list[str]()
            while offset + 8 <= size:
                f.seek(offset)
                header = f.read(16)
                length, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if offset == 0 and kind != b"ftyp":
                    return None
                if length == 1 and len(header) == 16:
                    length = int.from_bytes(header[8:16], "big")
                elif length == 0:
                    length = size - offset
                if length < 8 or not (kind.isascii() and kind.replace(b" ", b"").isalnum()):
                    return (f"damaged: its structure is broken {_megabytes(offset)} into the file (after its "
                            f"{', '.join(repr(name) for name in seen)} boxes, data that is no box)")
                name = kind.decode("ascii")
                seen.append(name)
                if offset + length > size:
                    missing = "" if "moov" in seen else "; its index ('moov'), written after it, is missing"
                    return (f"truncated: the file ends {_megabytes(size - offset)} into its '{name}' box of "
                            f"{_megabytes(length)}{missing}; the recording or copy was cut short")
                offset += length
    except OSError:
        return None
    if seen and "moov" not in seen:
        return "truncated: it has no index (the 'moov' box); the recording or copy was cut short"
    return None


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count:,} bytes"
