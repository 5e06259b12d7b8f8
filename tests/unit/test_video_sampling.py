"""clipdex.video_sampling on tiny videos written by tests/videos.py: frames at scene changes and every
interval, static shots merged, rotation applied, frames by time, damaged files reported."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdex.decode import ORIGINAL_SIZE, open_image_file
from clipdex.errors import ImageDecodeError, ImageTooLarge, ImageUnreadable
from clipdex.video import frame_path
from clipdex.video_sampling import VideoError, frame_at, probe, sample
from tests.images import photo
from tests.videos import (
    slideshow_images,
    write_audio_only,
    write_corrupt,
    write_damaged,
    write_frames,
    write_no_frames,
    write_time_jump,
    write_truncated,
    write_video,
)

SECONDS_EACH = 3.0
FPS = 10
INTERVAL = 2.0
# Frames no other frame refers to (x264's B-frames: up to 3 in a row) are not decoded when a gap is
# filled: the frame looked at is the first decoded one at or after the time asked for.
LAG = 3 / FPS
# Mean absolute difference (0-255) under which a decoded frame is the picture that was encoded
# (H.264 at these sizes stays within ~3; two different test photos differ by 40 or more).
SAME_PICTURE = 10.0


def difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute pixel difference of two pictures, compared at ``a``'s size."""
    left = np.asarray(a.convert("RGB"), dtype=np.float32)
    right = np.asarray(b.convert("RGB").resize(a.size, Image.Resampling.BILINEAR), dtype=np.float32)
    return float(np.mean(np.abs(left - right)))


def which(image: Image.Image, pictures: list[Image.Image]) -> int:
    """Index of the picture ``image`` shows (asserting it clearly shows one)."""
    distances = [difference(image, picture) for picture in pictures]
    best = int(np.argmin(distances))
    assert distances[best] < SAME_PICTURE, distances
    return best


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    return slideshow_images(4)


@pytest.fixture(scope="module")
def slideshow(tmp_path_factory: pytest.TempPathFactory, pictures: list[Image.Image]) -> Path:
    """Four pictures, 3 s each (12 s at 10 fps, 160 x 120), x264's default keyframes (at its cuts)."""
    return write_video(tmp_path_factory.mktemp("videos") / "slideshow.mp4", pictures,
                       seconds_each=SECONDS_EACH, fps=FPS)


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv", ".avi", ".mov"])
def test_each_picture_of_a_slideshow_is_found_once_near_its_time(tmp_path: Path, pictures: list[Image.Image],
                                                                 suffix: str) -> None:
    # .webm is VP9 at its real-time setting: one keyframe at the start, the cuts found by filling gaps.
    video = write_video(tmp_path / f"slideshow{suffix}", pictures, seconds_each=SECONDS_EACH, fps=FPS)
    frames = list(sample(str(video), interval=INTERVAL))
    shown = [which(frame.image, pictures) for frame in frames]
    assert shown == [0, 1, 2, 3]
    for i, frame in enumerate(frames):
        assert i * SECONDS_EACH - 0.2 <= frame.t <= i * SECONDS_EACH + INTERVAL + 0.2, (i, frame.t)
    assert [frame.scene for frame in frames] == [0, 1, 2, 3]
    assert frames[0].t == pytest.approx(0.0, abs=0.15)


def test_cuts_are_found_at_their_keyframes(tmp_path: Path, pictures: list[Image.Image]) -> None:
    """x264 puts a keyframe at each cut: one that comes before the next sample is due is sampled (and
    the next sample is due an interval after it)."""
    seconds = [3.0, 4.5, 2.5, 4.0]  # cuts at 3, 7.5 and 10 s: off any cadence
    frames = [picture for picture, shown in zip(pictures, seconds) for _ in range(round(shown * FPS))]
    video = write_frames(tmp_path / "cuts.mp4", frames, fps=FPS)
    sampled = list(sample(str(video), interval=INTERVAL))
    assert [frame.t for frame in sampled] == pytest.approx([0.0, 3.0, 7.5, 10.0], abs=1e-6)
    assert [frame.scene for frame in sampled] == [0, 1, 2, 3]


def test_an_intra_only_video_is_not_decoded_frame_by_frame(tmp_path: Path, pictures: list[Image.Image]) -> None:
    video = write_video(tmp_path / "mjpeg.avi", pictures, codec="mjpeg", seconds_each=SECONDS_EACH, fps=FPS)
    frames = list(sample(str(video), interval=INTERVAL))
    assert [which(frame.image, pictures) for frame in frames] == [0, 1, 2, 3]


def test_a_long_static_shot_is_one_frame(tmp_path: Path) -> None:
    still = photo(7, 160, 120)
    for gop in (None, FPS):  # x264's default keyframes (long GOP: gaps filled), and one each second
        video = write_video(tmp_path / f"static-{gop}.mp4", [still], seconds_each=20.0, fps=FPS, gop=gop)
        frames = list(sample(str(video), interval=INTERVAL))
        assert len(frames) == 1
        assert frames[0].t == 0.0 and frames[0].scene == 0
        assert difference(frames[0].image, still) < SAME_PICTURE


def pan(seconds: float, fps: int, size: tuple[int, int] = (160, 120)) -> list[Image.Image]:
    """A slow pan across a wide photo: every frame a little to the right of the one before."""
    wide = photo(11, size[0] * 4, size[1])
    steps = int(seconds * fps)
    return [wide.crop((x, 0, x + size[0], size[1]))
            for x in np.linspace(0, wide.width - size[0], steps).astype(int)]


def test_gaps_without_keyframes_are_filled_every_interval(tmp_path: Path) -> None:
    video = write_frames(tmp_path / "pan.mp4", pan(12.0, FPS), fps=FPS, gop=300)  # one keyframe only
    times = [frame.t for frame in sample(str(video), interval=INTERVAL)]
    assert times[0] == 0.0
    assert np.diff(times).max() <= INTERVAL + LAG + 1e-6, times
    assert times[-1] >= 12.0 - INTERVAL - LAG
    assert [frame.scene for frame in sample(str(video), interval=INTERVAL)] == [0] * len(times)  # a pan, no cut
    shorter = [frame.t for frame in sample(str(video), interval=1.0)]
    assert len(shorter) > len(times)


def test_a_phones_keyframe_every_second_gives_a_frame_every_interval(tmp_path: Path) -> None:
    video = write_frames(tmp_path / "phone.mp4", pan(12.0, FPS), fps=FPS, gop=FPS)
    times = [frame.t for frame in sample(str(video), interval=INTERVAL)]
    # The second keyframe is sampled (no cadence known yet), then one every interval: no fills.
    assert times == pytest.approx([0.0, 1.0, 3.0, 5.0, 7.0, 9.0, 11.0], abs=1e-6)


def test_gaps_are_filled_as_late_as_they_may_be(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two sampled keyframes (cuts at 0 and 5 s, a pan between), the frames filling the gap
    are placed back from the second (at 3 and 1 s: 3 s of the shot decoded, not 4). Past
    LOOKAHEAD_BYTES of packets held back, gaps are filled as they come (at 2 and 4 s)."""
    import clipdex.video_sampling as video_sampling

    frames = pan(5.0, FPS) + [photo(5, 160, 120)] * (2 * FPS)
    video = write_frames(tmp_path / "cut.mp4", frames, fps=FPS)
    times = [frame.t for frame in sample(str(video), interval=INTERVAL)]
    assert times[0] == 0.0 and times[-1] == pytest.approx(5.0)
    assert times[1:-1] == pytest.approx([1.0, 3.0], abs=LAG + 1e-6)
    monkeypatch.setattr(video_sampling, "LOOKAHEAD_BYTES", 0)
    times = [frame.t for frame in sample(str(video), interval=INTERVAL)]
    assert times[1:-1] == pytest.approx([2.0, 4.0], abs=LAG + 1e-6) and times[-1] == pytest.approx(5.0)


def test_sampling_is_deterministic(tmp_path: Path) -> None:
    video = write_frames(tmp_path / "pan.mp4", pan(8.0, FPS), fps=FPS)
    first = [(f.t, f.scene, f.image.tobytes()) for f in sample(str(video), interval=1.5)]
    again = [(f.t, f.scene, f.image.tobytes()) for f in sample(str(video), interval=1.5)]
    assert first == again


@pytest.mark.parametrize(("rotation", "suffix"), [(90, ".mp4"), (270, ".mov"), (180, ".mp4")])
def test_rotation_is_applied(tmp_path: Path, pictures: list[Image.Image], rotation: int, suffix: str) -> None:
    """A phone's video: stored on its side, with a display matrix; frames come out upright."""
    video = write_video(tmp_path / f"phone{suffix}", pictures[:2], rotation=rotation, fps=FPS)
    info = probe(str(video))
    assert (info.width, info.height, info.rotation) == (160, 120, rotation)
    frames = list(sample(str(video), interval=INTERVAL))
    assert [frame.image.size for frame in frames] == [(160, 120), (160, 120)]
    assert [which(frame.image, pictures) for frame in frames] == [0, 1]
    assert frames[0].image.info[ORIGINAL_SIZE] == (160, 120)
    assert which(frame_at(str(video), 4.0), pictures) == 1
    reduced = list(sample(str(video), interval=INTERVAL, min_side=60))
    assert [frame.image.size for frame in reduced] == [(80, 60), (80, 60)]


def test_min_side_reduces_and_never_enlarges(slideshow: Path) -> None:
    assert next(sample(str(slideshow), interval=INTERVAL, min_side=60)).image.size == (80, 60)
    assert next(sample(str(slideshow), interval=INTERVAL, min_side=500)).image.size == (160, 120)
    assert frame_at(str(slideshow), 1.0, min_side=30).size == (40, 30)


def test_probe(tmp_path: Path, slideshow: Path, pictures: list[Image.Image]) -> None:
    info = probe(str(slideshow))
    assert info.duration == pytest.approx(12.0)
    assert (info.width, info.height, info.fps, info.codec, info.rotation) == (160, 120, 10.0, "h264", 0)
    assert info.taken_at is None
    tagged = write_video(tmp_path / "tagged.mov", pictures[:1], metadata={
        "creation_time": "2021-07-04T18:30:00.000000Z",  # UTC, as every muxer writes it
        "com.apple.quicktime.creationdate": "2021-07-04T20:31:00+0200"})  # the phone's own local time
    assert probe(str(tagged)).taken_at == "2021-07-04T20:31:00"
    unset = write_video(tmp_path / "unset.mp4", pictures[:1], metadata={"creation_time": "1970-01-01T00:00:00Z"})
    assert probe(str(unset)).taken_at is None


def test_frame_at_gives_the_frame_shown_at_a_time(slideshow: Path, pictures: list[Image.Image]) -> None:
    path = str(slideshow)
    assert [which(frame_at(path, t), pictures) for t in (0.0, 2.95, 3.0, 4.5, 8.99, 9.0, 11.9)] == [0, 0, 1, 1, 2, 3, 3]
    assert which(frame_at(path, 500.0), pictures) == 3  # past the end: the last frame


def test_frame_at_a_sampled_time_gives_the_sampled_frame(tmp_path: Path) -> None:
    video = write_frames(tmp_path / "pan.mp4", pan(6.0, 30), fps=30)
    for frame in sample(str(video), interval=1.0):
        rounded = float(f"{frame.t:.3f}")  # what a frame path keeps
        assert frame_at(str(video), rounded).tobytes() == frame.image.tobytes()


def test_open_image_file_opens_a_frame_path(slideshow: Path, pictures: list[Image.Image]) -> None:
    image = open_image_file(frame_path(str(slideshow), 7.5))
    assert image.mode == "RGB" and which(image, pictures) == 2
    assert image.info[ORIGINAL_SIZE] == (160, 120)
    assert open_image_file(frame_path(str(slideshow), 7.5), draft_size=60).size == (80, 60)
    with pytest.raises(ImageUnreadable):
        open_image_file(frame_path(str(slideshow.with_name("gone.mp4")), 1.0))


def test_a_truncated_video_says_where_it_stops(tmp_path: Path, pictures: list[Image.Image]) -> None:
    whole = write_video(tmp_path / "whole.mp4", pictures, fps=FPS, faststart=True)
    cut = write_truncated(tmp_path / "cut.mp4", whole, keep=0.5)
    frames: list[float] = []
    with pytest.raises(VideoError) as failed:
        frames.extend(frame.t for frame in sample(str(cut), interval=INTERVAL))
    assert "truncated: no frame after 0:00:0" in failed.value.reason and "0:00:12" in failed.value.reason
    assert frames and frames[0] == 0.0  # what could be decoded came first
    assert isinstance(failed.value, ImageDecodeError) and failed.value.path == str(cut)


def test_a_truncated_mp4_without_its_index_is_reported(tmp_path: Path, slideshow: Path) -> None:
    cut = write_truncated(tmp_path / "cut.mp4", slideshow, keep=0.6)  # moov is written last: gone
    with pytest.raises(VideoError, match=r"truncated: .*'mdat'.*'moov'.*missing"):
        probe(str(cut))
    with pytest.raises(VideoError, match="truncated"):
        list(sample(str(cut), interval=INTERVAL))


@pytest.mark.parametrize(("writer", "reason"), [
    (lambda p: write_corrupt(p / "corrupt.mp4"), "not a video FFmpeg can read"),
    (lambda p: write_audio_only(p / "sound.mp4"), "no video stream (only audio)"),
    (lambda p: write_no_frames(p / "empty.mkv"), "before its first frame"),
    (lambda p: write_no_frames(p / "empty.mp4"), "no video stream"),
])
def test_files_without_a_picture_are_video_errors(tmp_path: Path, writer, reason: str) -> None:  # type: ignore[no-untyped-def]
    video = writer(tmp_path)
    for read in (lambda: probe(str(video)), lambda: list(sample(str(video), interval=INTERVAL)),
                 lambda: frame_at(str(video), 1.0)):
        with pytest.raises(VideoError, match=re.escape(reason)):
            read()


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        list(sample(str(tmp_path / "gone.mp4"), interval=INTERVAL))


@pytest.mark.parametrize("at", [0.1, 0.5, 0.9])
def test_damage_inside_the_picture_data_never_hangs(tmp_path: Path, slideshow: Path, at: float) -> None:
    damaged = write_damaged(tmp_path / "damaged.mp4", slideshow, at=at, length=3000)
    try:
        frames = list(sample(str(damaged), interval=INTERVAL))
    except VideoError as e:
        assert e.reason.startswith("damaged: "), e.reason
    else:  # the decoder conceals what it can; a frame lost is skipped
        assert frames and np.all(np.diff([frame.t for frame in frames]) > 0)


def test_stop_ends_sampling(slideshow: Path) -> None:
    stop = threading.Event()
    frames = sample(str(slideshow), interval=INTERVAL, stop=stop)
    assert next(frames).t == 0.0
    stop.set()
    assert list(frames) == []
    stop_now = threading.Event()
    stop_now.set()
    assert list(sample(str(slideshow), interval=INTERVAL, stop=stop_now)) == []


def test_interval_must_be_positive(slideshow: Path) -> None:
    with pytest.raises(ValueError, match="interval"):
        list(sample(str(slideshow), interval=0))


def test_a_picture_above_the_megapixel_limit_is_refused_before_decoding(
        slideshow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit photos are held to (a decompression bomb under a video's name), from the stream's
    header: ImageTooLarge (the indexer's 'limit' failure, retried once the limit is raised)."""
    import clipdex.video_sampling as video_sampling

    def never(*_: object) -> None:
        raise AssertionError("decoded a picture above the limit")

    monkeypatch.setattr(video_sampling._Decoder, "decode", never)
    limit = 160 * 120 / 1e6 * 0.99  # just under the slideshow's 160 x 120
    for read in (lambda: probe(str(slideshow), max_megapixels=limit),
                 lambda: list(sample(str(slideshow), interval=INTERVAL, max_megapixels=limit)),
                 lambda: frame_at(str(slideshow), 1.0, max_megapixels=limit),
                 lambda: open_image_file(frame_path(str(slideshow), 1.0), max_megapixels=limit)):
        with pytest.raises(ImageTooLarge, match="160x120") as refused:
            read()
        assert refused.value.pixels == 160 * 120 and refused.value.needed == 1
        assert not isinstance(refused.value, VideoError)
    monkeypatch.undo()
    assert probe(str(slideshow), max_megapixels=160 * 120 / 1e6).width == 160  # at the limit: read


@pytest.mark.parametrize(("name", "kind", "found"), [
    ("bomb.mp4", "PNG", "(a PNG image named .mp4)"),
    ("photo.mov", "JPEG", "(a JPEG image named .mov)"),
    ("anim.mkv", "GIF", "(CompuServe Graphics Interchange Format (GIF), FFmpeg's 'gif' format, named .mkv)"),
])
def test_other_kinds_of_file_under_a_video_name_are_not_videos(tmp_path: Path, name: str, kind: str,
                                                                found: str) -> None:
    """FFmpeg opens a file by its content: an image renamed .mp4 is not a one-frame video."""
    path = tmp_path / name
    photo(3, 160, 120).save(path, format=kind)
    for read in (lambda: probe(str(path)), lambda: list(sample(str(path), interval=INTERVAL)),
                 lambda: frame_at(str(path), 0.0)):
        with pytest.raises(VideoError, match=re.escape(f"is not a video file {found}")):
            read()


@pytest.mark.parametrize("lookahead", [True, False])
def test_a_forward_jump_in_the_timestamps_is_not_sampled_frame_by_frame(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lookahead: bool) -> None:
    """A pan whose timestamps jump 1000 s forward at 5 s (no keyframe there): the frames after the jump
    are looked at every interval, as those before it, not each one taken for a frame overdue; the
    first after the jump is looked at (it is more than an interval from any before it)."""
    import clipdex.video_sampling as video_sampling

    looked: list[float] = []
    thumbnail = video_sampling._Thumbnail.of.__func__  # type: ignore[attr-defined]

    def counted(cls: type, frame: object) -> object:
        looked.append(float(frame.time))  # type: ignore[attr-defined]
        return thumbnail(cls, frame)

    monkeypatch.setattr(video_sampling._Thumbnail, "of", classmethod(counted))
    if not lookahead:  # the packets are not held back: gaps filled as they come
        monkeypatch.setattr(video_sampling, "LOOKAHEAD_BYTES", 0)
    steady = write_frames(tmp_path / "pan.mp4", pan(10.0, FPS), fps=FPS, gop=300)  # one keyframe only
    jumped = write_time_jump(tmp_path / "jump.mp4", steady, at=5.0, jump=1000.0)
    list(sample(str(steady), interval=INTERVAL))
    without_jump, looked[:] = len(looked), []
    times = [frame.t for frame in sample(str(jumped), interval=INTERVAL)]
    assert len(looked) <= without_jump + 1, looked
    assert any(1005.0 <= t <= 1005.0 + LAG for t in times), times
    assert times[-1] >= 1010.0 - INTERVAL - LAG and np.all(np.diff(times) > 0)
