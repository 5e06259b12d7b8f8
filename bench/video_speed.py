"""How fast clipdex samples videos (clipdex.video_sampling), against decoding every frame.

    nice -n 10 python bench/video_speed.py                          # 1080p and 4K, both GOP styles, 1/2/5 s
    nice -n 10 python bench/video_speed.py --sizes 1080p --intervals 2
    nice -n 10 python bench/video_speed.py --index                  # plus `clipdex index` end to end
    python bench/video_speed.py --thresholds 1000                   # what MERGE_DIFF and SCENE_DIFF rest on

The videos are H.264 made once from the shared Unsplash photos into --work (never the repo):
a photo a shot (1.8 to 5 s, 3.2 s on average), static, panning or zooming in turn (so frames within a shot differ),
with a little sensor-like grain so the encoder spends bits as on a camera's video. Two GOP styles:

* ``phone``: what phones record: a keyframe every second, no B-frames, no scene-cut keyframes,
  16 Mbit/s at 1080p and 48 Mbit/s at 4K (the rates of phones' default H.264 modes).
* ``x264``: what editors and downloads give: x264's defaults (a keyframe at each cut and at
  least every 250 frames, B-frames), constant quality (CRF 20).

For each video: the baseline, decoding every frame (what a "decode everything" sampler pays:
frames/s and real-time factor, libav's threads on every core), then :func:`sample` at each
interval with the indexer's reduction (224-pixel shorter side): real-time factor (seconds of
video per wall second), CPU seconds per video second, frames decoded and frames kept.
``--index`` adds ``clipdex index`` of a folder holding the video alone (ViT-B-32 with random
weights through open_clip, default precision, a fresh index each time): its own real-time factor
for the video stage and for the whole command (model loading included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_line

import clipdex.video_sampling as video_sampling

PHOTOS = Path("/work/shared/datasets/unsplash-1k/images")
WORK = Path("/tmp/clipdex-bench/videos")
WEIGHTS = Path("/tmp/clipdex-bench/vit-b-32-random.pt")
SIZES = {"1080p": (1920, 1080), "4k": (3840, 2160)}
FPS = 30
# Lengths of the shots in turn (3.2 s on average): irregular, as an edit's cuts are (a slideshow's
# regular cuts would look like a phone's keyframe cadence).
SHOTS = (3.0, 2.2, 4.1, 2.7, 3.6, 1.8, 3.3, 5.0, 2.4, 3.9)
CONTENT = "shots2"  # in the videos' names: made again when the content changes
GRAIN = 3.0  # standard deviation of the added grain, grey levels
GRAIN_FIELDS = 4  # grain fields cycled through (drawn once: drawing 4K noise per frame would dominate)
PAN_SHARE = 0.2  # a pan crosses this share of the photo's width in one shot
ZOOM_SHARE = 0.3  # a zoom narrows the view by this share in one shot
PHONE_BITRATE = {"1080p": 16_000_000, "4k": 48_000_000}
X264_CRF = "20"
PRESET = "veryfast"
MIN_SIDE = 224  # what the indexer asks for with a 224-pixel model (clipdex.indexer.draft_size)
STYLES = ("phone", "x264")


def frames(size: tuple[int, int], seconds: float, seed: int = 0) -> Iterator[np.ndarray]:
    """RGB frames of the slideshow: one photo per shot, static / pan / zoom in turn, with grain."""
    from PIL import Image

    photos = sorted(PHOTOS.glob("*.jpg"))
    width, height = size
    rng = np.random.default_rng(seed)
    grain = [rng.normal(0.0, GRAIN, (height, width, 1)).astype(np.int16) for _ in range(GRAIN_FIELDS)]
    starts = np.cumsum([0] + [round(SHOTS[k % len(SHOTS)] * FPS) for k in range(round(seconds) + 1)])
    photo = None
    for i in range(round(seconds * FPS)):
        shot = int(np.searchsorted(starts, i, side="right")) - 1
        step, per_shot = i - starts[shot], starts[shot + 1] - starts[shot]
        if step == 0:
            with Image.open(photos[(seed + shot) % len(photos)]) as opened:
                photo = opened.convert("RGB")
        assert photo is not None
        w, h = photo.size
        box_w = min(w, h * width / height)
        box_h = box_w * height / width
        u = step / per_shot
        kind = shot % 3
        if kind == 1:  # pan left to right
            crop_w, crop_h = box_w * (1 - PAN_SHARE), box_h * (1 - PAN_SHARE)
            x = (w - crop_w) * (0.5 - PAN_SHARE / 2 + PAN_SHARE * u)
            box = (x, (h - crop_h) / 2, x + crop_w, (h + crop_h) / 2)
        else:  # static (kind 0) or zooming in (kind 2)
            scale = 1 - ZOOM_SHARE * u if kind == 2 else 1.0
            crop_w, crop_h = box_w * scale, box_h * scale
            box = ((w - crop_w) / 2, (h - crop_h) / 2, (w + crop_w) / 2, (h + crop_h) / 2)
        pixels = np.asarray(photo.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.int16)
        pixels += grain[i % GRAIN_FIELDS]
        yield np.clip(pixels, 0, 255).astype(np.uint8)


def make_video(work: Path, size_name: str, style: str, seconds: float) -> Path:
    """The bench video of that size and style (made once; the name says how it was made)."""
    import av

    path = work / f"{size_name}-{style}-{seconds:g}s-{CONTENT}.mp4"
    if path.exists():
        return path
    work.mkdir(parents=True, exist_ok=True)
    size = SIZES[size_name]
    if style == "phone":
        options = {"preset": PRESET, "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:bframes=0"}
    else:
        options = {"preset": PRESET, "crf": X264_CRF}
    tmp = path.with_suffix(".part.mp4")
    started = time.perf_counter()
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, FPS)
        if style == "phone":
            stream.bit_rate = PHONE_BITRATE[size_name]
        for i, pixels in enumerate(frames(size, seconds)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    os.replace(tmp, path)
    print(f"made {path} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return path


def keyframes(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.is_keyframe)


def decode_all(path: Path) -> tuple[int, float, float]:
    """The baseline: every frame decoded (libav's threads), none converted. (frames, wall s, cpu s)."""
    import av

    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            count += 1
    return count, time.perf_counter() - wall, time.process_time() - cpu


def sample_timed(path: Path, interval: float) -> tuple[int, int, float, float]:
    """clipdex's sampler as the indexer runs it. (frames kept, frames decoded, wall s, cpu s)."""
    decoded = 0
    original = video_sampling._Decoder.decode

    def counting(self: video_sampling._Decoder, packet):  # type: ignore[no-untyped-def]
        nonlocal decoded
        out = original(self, packet)
        decoded += len(out)
        return out

    video_sampling._Decoder.decode = counting  # type: ignore[method-assign]
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        kept = sum(1 for _ in video_sampling.sample(str(path), interval=interval, min_side=MIN_SIDE))
        return kept, decoded, time.perf_counter() - wall, time.process_time() - cpu
    finally:
        video_sampling._Decoder.decode = original  # type: ignore[method-assign]


def index_timed(path: Path, interval: float) -> tuple[float, float, int]:
    """`clipdex index` of a folder holding only ``path`` into a fresh index.
    (real-time factor of the video stage as the report gives it, of the whole command, moments)."""
    with tempfile.TemporaryDirectory(prefix="clipdex-video-bench-") as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        os.symlink(path, folder / path.name)
        clipdex = Path(sys.executable).with_name("clipdex")
        command = [str(clipdex), "index", str(folder), "--model", "ViT-B-32", "--weights", str(WEIGHTS),
                   "--index", str(Path(tmp) / "index"), "--video-interval", str(interval), "--json"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
    report = json.loads(done.stdout)
    seconds = float(report.get("video_seconds") or 0.0)
    return float(report.get("video_realtime") or float("nan")), seconds / wall, int(report.get("frames") or 0)


def thresholds(count: int) -> None:
    """The distributions behind MERGE_DIFF and SCENE_DIFF, on ``count`` shared photos: a 16:9 view of
    each compared (as the sampler compares frames) with the next photo's (a cut), with itself
    shifted by 5% and 20% of the view's width (pans) and narrowed by 10/20/30% (zooms), and with
    itself plus fresh grain (the same picture, as a static shot's frames)."""
    import av
    from PIL import Image

    photos = sorted(PHOTOS.glob("*.jpg"))[:count]
    size = (480, 270)
    rng = np.random.default_rng(0)

    def view(photo: Image.Image, shift: float = 0.0, scale: float = 1.0, grain: bool = False):  # type: ignore[no-untyped-def]
        w, h = photo.size
        box_w = min(w, h * 16 / 9) * 0.8 * scale
        box_h = box_w * 9 / 16
        x = min(max(0.0, (w - box_w) / 2 + shift * box_w), w - box_w)
        pixels = np.asarray(photo.resize(size, Image.Resampling.BILINEAR,
                                         box=(x, (h - box_h) / 2, x + box_w, (h + box_h) / 2)), dtype=np.float32)
        if grain:
            pixels = np.clip(pixels + rng.normal(0.0, GRAIN, pixels.shape), 0, 255)
        return video_sampling._Thumbnail.of(av.VideoFrame.from_ndarray(pixels.astype(np.uint8), format="rgb24"))

    cases: dict[str, list[tuple[float, float]]] = {}
    previous = None
    for path in photos:
        with Image.open(path) as opened:
            photo = opened.convert("RGB")
        base = view(photo)
        variants = {"same picture, new grain": view(photo, grain=True), "pan 5%": view(photo, shift=0.05),
                    "pan 20%": view(photo, shift=0.2), "zoom 10%": view(photo, scale=0.9),
                    "zoom 20%": view(photo, scale=0.8), "zoom 30%": view(photo, scale=0.7)}
        if previous is not None:
            variants["cut (next photo)"] = previous
        for name, other in variants.items():
            cases.setdefault(name, []).append((base.grey_difference(other), base.histogram_distance(other)))
        previous = base
    print(f"thumbnail differences on {len(photos)} photos: grey = mean absolute grey difference (0-255, "
          f"merged at <= {video_sampling.MERGE_DIFF:g}); colours = histogram distance (0-1, a new scene "
          f"at > {video_sampling.SCENE_DIFF:g})")
    print(f"{'case':<24} {'grey p1':>8} {'p5':>6} {'p50':>6} {'p99':>6} {'merged':>7}   "
          f"{'colours p1':>10} {'p50':>6} {'p99':>6} {'new scene':>9}")
    for name, values in cases.items():
        grey, colours = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        g1, g5, g50, g99 = np.percentile(grey, [1, 5, 50, 99])
        c1, c50, c99 = np.percentile(colours, [1, 50, 99])
        print(f"{name:<24} {g1:>8.2f} {g5:>6.2f} {g50:>6.2f} {g99:>6.2f} "
              f"{np.mean(grey <= video_sampling.MERGE_DIFF):>7.1%}   {c1:>10.3f} {c50:>6.3f} {c99:>6.3f} "
              f"{np.mean(colours > video_sampling.SCENE_DIFF):>9.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1080p,4k")
    parser.add_argument("--styles", default=",".join(STYLES))
    parser.add_argument("--intervals", default="1,2,5")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each video (default 60)")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--index", action="store_true", help="add `clipdex index` end to end (random ViT-B-32)")
    parser.add_argument("--make-only", action="store_true", help="make the videos (once) and stop")
    parser.add_argument("--thresholds", type=int, metavar="PHOTOS", default=0,
                        help="print the thumbnail differences behind MERGE_DIFF and SCENE_DIFF on this many "
                             "shared photos, and stop")
    args = parser.parse_args()
    if args.thresholds:
        print(cpu_line())
        thresholds(args.thresholds)
        return
    intervals = [float(x) for x in args.intervals.split(",")]
    if args.index and not WEIGHTS.exists():
        sys.exit(f"--index needs {WEIGHTS} (python bench/make_random_checkpoint.py)")
    videos = [(size, style, make_video(args.work, size, style, args.seconds))
              for size in args.sizes.split(",") for style in args.styles.split(",")]
    if args.make_only:
        return

    print(cpu_line())
    print(f"videos: {args.seconds:g} s at {FPS} fps, a photo a shot ({min(SHOTS):g}-{max(SHOTS):g} s; "
          f"static / pan / zoom); sampled with min_side={MIN_SIDE}")
    print()
    header = (f"{'video':<14} {'Mbit/s':>6} {'keys':>5} {'how':<22} {'frames':>7} {'kept':>5} "
              f"{'wall s':>7} {'frames/s':>8} {'x real':>7} {'cpu s/s':>7}")
    if args.index:
        header += f" {'index x':>7} {'cmd x':>6}"
    print(header)
    for size, style, path in videos:
        name = f"{size}-{style}"
        rate = path.stat().st_size * 8 / args.seconds / 1e6
        keys = keyframes(path)
        count, wall, cpu = decode_all(path)
        row = (f"{name:<14} {rate:>6.1f} {keys:>5} {'decode every frame':<22} {count:>7} {'':>5} "
               f"{wall:>7.2f} {count / wall:>8.0f} {args.seconds / wall:>7.1f} {cpu / args.seconds:>7.3f}")
        print(row + ("" if not args.index else f" {'':>7} {'':>6}"), flush=True)
        for interval in intervals:
            kept, decoded, wall, cpu = sample_timed(path, interval)
            row = (f"{'':<14} {'':>6} {'':>5} {f'sample, interval {interval:g} s':<22} {decoded:>7} {kept:>5} "
                   f"{wall:>7.2f} {decoded / wall:>8.0f} {args.seconds / wall:>7.1f} {cpu / args.seconds:>7.3f}")
            if args.index:
                stage, whole, _ = index_timed(path, interval)
                row += f" {stage:>7.1f} {whole:>6.1f}"
            print(row, flush=True)
    print()
    print("frames: decoded (for sampling: keyframes, frames decoded to fill gaps and what the decoder must decode "
          "to reach them); x real: seconds of video per wall second; cpu s/s: CPU seconds per second of video "
          "(all threads)" + ("; index x: the index report's real-time factor of its video stage, cmd x: of the "
                             "whole `clipdex index` command, model loading included" if args.index else ""))


if __name__ == "__main__":
    main()
