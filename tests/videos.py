"""Video files for tests, encoded with PyAV from Pillow images (nothing binary is committed).

Every writer keeps clips tiny (a few seconds, a few frames a second, 160 x 120 or so) so a
test that writes and decodes one stays well under a second.

``write_video(path, images, seconds_each=3.0)`` shows image ``i`` during
``[i * seconds_each, (i + 1) * seconds_each)``: a test knows at which second each picture is.
``rotation`` stores the pictures turned and writes the display matrix a phone writes (the
same ``displaymatrix`` side data FFmpeg reads from an iPhone's or Android's ``.mov``/``.mp4``,
and that its own mov muxer writes from ``-display_rotation``), so a reader that honours it
shows ``images`` upright and one that ignores it shows them on their side.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

# Codec per container when the caller does not choose: what phones and cameras write (H.264
# in mp4/mov/m4v/mkv/avi), VP9 in webm (WebM allows only VP8/VP9/AV1).
WEBM_CODEC = "libvpx-vp9"
# x264 preset: "veryfast" keeps scene-cut detection (ultrafast turns it off, scenecut=0), so
# each new picture of a slideshow starts with a keyframe as in a real encoder's output.
X264_PRESET = "veryfast"
# Pixel formats of encoders that do not take yuv420p (JPEG's full-range YUV).
PIXEL_FORMATS = {"mjpeg": "yuvj420p"}
# Container tags FFmpeg's mov muxer writes by itself (others need movflags use_metadata_tags).
STANDARD_TAGS = {"creation_time", "title", "comment", "encoder", "location"}
# Degrees clockwise that a player turns the stored pictures (the old 'rotate' tag's meaning).
ROTATIONS = (0, 90, 180, 270)
# PIL's transpose that stores an upright picture so that turning it `rotation` degrees clockwise
# shows it upright again (the stored picture is turned counter-clockwise by as much).
_STORE_TURNED = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
                 270: Image.Transpose.ROTATE_270}


def _even(size: tuple[int, int]) -> tuple[int, int]:
    """yuv420p needs even sides."""
    return (size[0] - size[0] % 2, size[1] - size[1] % 2)


def write_frames(path: Path, frames: Iterable[Image.Image], *, fps: int = 10, codec: str | None = None,
                 size: tuple[int, int] | None = None, rotation: int = 0, gop: int | None = None,
                 faststart: bool = False, options: dict[str, str] | None = None,
                 metadata: dict[str, str] | None = None) -> Path:
    """Encode ``frames`` (upright pictures, one per 1/``fps`` second) into ``path``.

    The container is chosen by the suffix (.mp4 .mov .m4v .mkv .webm .avi); ``codec`` defaults
    to libx264 (libvpx-vp9 for .webm). ``size`` resizes every frame (default: the first
    frame's size, made even). ``rotation`` (0/90/180/270, clockwise to show upright) stores the
    frames turned the other way and writes the display matrix. ``gop`` is the largest keyframe
    interval in frames (None: the encoder's default, x264's 250 with scene cuts). ``faststart``
    puts an mp4's index (moov) before the data, as phones and web uploads do, so that a cut
    file still opens and fails only where its data ends. ``metadata`` are container tags
    (e.g. ``creation_time``). Frames are encoded as they come: a
    long generator never sits in memory.
    """
    import av

    if rotation not in ROTATIONS:
        raise ValueError(f"rotation {rotation} is not one of {ROTATIONS}")
    suffix = path.suffix.lower()
    codec = codec or (WEBM_CODEC if suffix == ".webm" else "libx264")
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = []
    if suffix in (".mp4", ".mov", ".m4v"):
        flags += ["+faststart"] if faststart else []
        # Tags beyond the standard ones (a phone's com.apple.quicktime.creationdate) are written
        # only as QuickTime metadata items.
        flags += ["+use_metadata_tags"] if set(metadata or {}) - STANDARD_TAGS else []
    container_options = {"movflags": "".join(flags)} if flags else {}
    with av.open(str(path), "w", options=container_options) as container:
        container.metadata.update(metadata or {})
        stream = None
        stored: tuple[int, int] = (0, 0)
        for count, image in enumerate(frames):
            if stream is None:
                upright = _even(size or image.size)
                stored = upright if rotation in (0, 180) else (upright[1], upright[0])
                stream = container.add_stream(codec, rate=fps, options=_codec_options(codec, options))
                stream.width, stream.height = stored
                stream.pix_fmt = PIXEL_FORMATS.get(codec, "yuv420p")
                stream.time_base = Fraction(1, fps)
                if gop is not None:
                    stream.codec_context.gop_size = gop
                if rotation:
                    # The display matrix's angle is counter-clockwise (FFmpeg's convention, what
                    # VideoFrame.rotation reads back): a phone held upright writes -90 (= 270).
                    stream.set_display_rotation(-rotation)
                upright_size = upright
            picture = image.convert("RGB")
            if picture.size != upright_size:
                picture = picture.resize(upright_size, Image.Resampling.BILINEAR)
            if rotation:
                picture = picture.transpose(_STORE_TURNED[rotation])
            assert picture.size == stored
            frame = av.VideoFrame.from_image(picture)
            frame.pts = count
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError("write_frames needs at least one frame")
        container.mux(stream.encode(None))
    return path


def _codec_options(codec: str, options: dict[str, str] | None) -> dict[str, str]:
    """Deterministic, fast encoder settings for tiny clips (``options`` added over them)."""
    chosen: dict[str, str] = {}
    if codec == "libx264":
        chosen = {"preset": X264_PRESET}
    elif codec.startswith("libvpx"):
        chosen = {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
    chosen.update(options or {})
    return chosen


def write_video(path: Path, images: list[Image.Image], *, seconds_each: float = 3.0, fps: int = 10,
                codec: str = "libx264", size: tuple[int, int] | None = None, rotation: int = 0,
                gop: int | None = None, faststart: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """A slideshow: each of ``images`` shown ``seconds_each`` seconds, image ``i`` during
    ``[i * seconds_each, (i + 1) * seconds_each)``. See :func:`write_frames` for the rest
    (``codec`` is replaced by VP9 for a .webm when left at libx264)."""
    per_image = max(1, round(seconds_each * fps))
    if path.suffix.lower() == ".webm" and codec == "libx264":
        codec = WEBM_CODEC
    frames = (image for image in images for _ in range(per_image))
    return write_frames(path, frames, fps=fps, codec=codec, size=size, rotation=rotation, gop=gop,
                        faststart=faststart, metadata=metadata)


def write_truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` share of ``source``'s bytes, as a download or a copy cut short leaves it.

    A plain mp4 loses its index (moov is written last) and cannot be opened at all; a
    ``faststart`` mp4 or an mkv opens and ends midway."""
    data = source.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:max(1, int(len(data) * keep))])
    return path


def write_corrupt(path: Path, size: int = 20_000, seed: int = 0) -> Path:
    """Random bytes under a video's name (what a failed transfer or another file renamed leaves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_damaged(path: Path, source: Path, at: float = 0.5, length: int = 4096, seed: int = 0) -> Path:
    """A copy of ``source`` with ``length`` random bytes written over it at the ``at`` share of
    the file (a bad sector inside the picture data; the container itself stays readable)."""
    shutil.copyfile(source, path)
    data = bytearray(path.read_bytes())
    start = min(int(len(data) * at), max(0, len(data) - length))
    data[start:start + length] = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def write_audio_only(path: Path, seconds: float = 1.0, rate: int = 16_000) -> Path:
    """An mp4 (or .m4v/.mov/.mkv) that holds sound only: a file with a video's name and no picture."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    samples = int(seconds * rate)
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)[None, :]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        step = 1024
        for start in range(0, samples, step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + step]), format="fltp",
                                               layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_no_frames(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    """A container with a video stream and not one frame in it (a recording stopped at once)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"preset": X264_PRESET})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # PyAV writes the header on the first packet: there is none
        container.mux(stream.encode(None))
    return path


def slideshow_images(count: int, width: int = 160, height: int = 120, start: int = 0) -> list[Image.Image]:
    """``count`` distinct photo-like pictures (tests/images.photo), small enough for fast clips."""
    from tests.images import photo

    return [photo(seed, width, height) for seed in range(start, start + count)]


def write_time_jump(path: Path, source: Path, at: float, jump: float) -> Path:
    """A copy of ``source`` (remuxed, nothing re-encoded) whose timestamps jump forward by ``jump``
    seconds at ``at`` seconds: from the first packet, in decoding order, shown at or after ``at``
    on, every packet is stamped ``jump`` later (a camera's clock set forward mid-recording, two
    recordings joined). The frames after the jump stay in order; ``at`` need not be a keyframe."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as reader, av.open(str(path), "w") as writer:
        stream = reader.streams.video[0]
        out = writer.add_stream_from_template(stream)
        time_base = stream.time_base or Fraction(1, 1)
        start = stream.start_time or 0
        offset = round(Fraction(jump) / time_base)
        jumped = False
        for packet in reader.demux(stream):
            if packet.dts is None:  # the demuxer's end
                continue
            jumped = jumped or (packet.pts is not None and (packet.pts - start) * time_base >= Fraction(at))
            if jumped:
                packet.pts = None if packet.pts is None else packet.pts + offset
                packet.dts += offset
            packet.stream = out
            writer.mux(packet)
    return path
