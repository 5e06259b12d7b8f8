"""JPEGs fitted on the device (clipdex.models.gpu_decode) against the CPU path, pixel for pixel.

Run on the CPU here (torchvision's CPU decoder, the same resampling code as on CUDA); on
a machine with CUDA the same parity checks run against nvJPEG too."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipdex.decode import JpegHeader, load_image, read_jpeg_header
from clipdex.errors import ImageDecodeError, ImageTooLarge
from clipdex.models.gpu_decode import JpegDecoder, JpegJob, orient, pillow_coefficients, supported
from tests.images import gradient, photo

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

# Width x height: landscape and portrait at camera ratios, square, a side already at the
# model's size, panoramas, tiny images (upscaled), odd sizes.
SIZES = [(320, 240), (240, 320), (150, 150), (224, 300), (400, 224), (600, 125), (45, 350),
         (17, 11), (5, 40), (1, 1), (133, 217), (321, 239)]
CONFIGS = [(224, "bicubic", "shortest"), (64, "bicubic", "shortest"), (336, "bicubic", "shortest"),
           (224, "bilinear", "shortest"), (224, "bicubic", "squash"), (96, "bilinear", "squash"),
           (128, "lanczos", "shortest")]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: on CUDA the bar is the
# issue's one level, on the CPU the pixels are the CPU path's own.
MAX_DIFFERENCE = {"cpu": 0, "cuda": 1}


def _config(size: int, interpolation: str, mode: str, **more: object):
    from clipdex.models.preprocess import PreprocessConfig

    return PreprocessConfig(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation, mode, **more)  # type: ignore[arg-type]


def _photo(seed: int, width: int, height: int) -> Image.Image:
    """A photo-like image of any size (tests.images.photo, resized: it draws shapes of 20+ px)."""
    return photo(seed).resize((width, height), Image.Resampling.BILINEAR)


def _jpeg(image: Image.Image, **kw: object) -> bytes:
    data = io.BytesIO()
    image.save(data, "JPEG", quality=90, **kw)
    return data.getvalue()


def _job(data: bytes) -> JpegJob:
    header = read_jpeg_header(io.BytesIO(data), "x.jpg")
    assert header is not None
    return JpegJob(data, header.width, header.height, header.orientation)


def _cpu_path(data: bytes, cfg) -> np.ndarray:
    from clipdex.models.preprocess import fit

    return fit(load_image(data, "x.jpg"), cfg)  # full-size decoding (no draft)


def _assert_parity(datas: list[bytes], cfg, device: str) -> None:
    pixels, failed = JpegDecoder(cfg, device).decode([_job(d) for d in datas])
    assert failed == {}
    assert pixels.shape == (len(datas), cfg.image_size, cfg.image_size, 3)
    assert pixels.dtype == torch.uint8 and pixels.device.type == device
    for data, row in zip(datas, pixels.cpu().numpy()):
        expected = _cpu_path(data, cfg)
        difference = np.abs(row.astype(int) - expected.astype(int))
        assert difference.max() <= MAX_DIFFERENCE[device], Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size, interpolation, mode", CONFIGS)
def test_device_pixels_are_the_cpu_paths(device: str, size: int, interpolation: str, mode: str) -> None:
    datas = [_jpeg(_photo(seed, w, h)) for seed, (w, h) in enumerate(SIZES)]
    _assert_parity(datas, _config(size, interpolation, mode), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("resize, crop", [(256, 224), (73, 64)])
def test_a_resize_larger_than_the_crop_and_floor_offsets(device: str, resize: int, crop: int) -> None:
    """Transformers' processors: the shorter side to ``resize``, a centre crop of ``crop`` placed
    with the floor of the margin."""
    datas = [_jpeg(_photo(seed, w, h)) for seed, (w, h) in enumerate(SIZES)]
    _assert_parity(datas, _config(crop, "bicubic", "shortest", crop_rounding="floor", resize_size=resize), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(device: str, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(_photo(orientation, 120, 80), exif=exif.tobytes())
    header = read_jpeg_header(io.BytesIO(data), "x.jpg")
    assert header is not None and header.orientation == orientation
    assert header.upright_size == load_image(data, "x.jpg").size
    for cfg in (_config(64, "bicubic", "shortest"), _config(64, "bicubic", "squash")):
        _assert_parity([data], cfg, device)


def test_orient_matches_pillows_transpose() -> None:
    image = torch.arange(3 * 4 * 5, dtype=torch.uint8).view(3, 4, 5)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    methods = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
    for orientation in range(1, 9):
        expected = np.asarray(pil.transpose(methods[orientation]) if orientation in methods else pil)
        np.testing.assert_array_equal(orient(image, orientation).permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_grayscale_and_progressive_jpegs(device: str) -> None:
    datas = [_jpeg(_photo(1, 200, 150).convert("L")), _jpeg(_photo(2, 150, 200), progressive=True),
             _jpeg(_photo(3, 160, 120), subsampling=0), _jpeg(_photo(4, 161, 121), subsampling=1)]
    _assert_parity(datas, _config(64, "bicubic", "shortest"), device)


def test_a_batch_with_a_bad_file_decodes_the_others_and_names_it() -> None:
    good = [_jpeg(_photo(seed, 100, 80)) for seed in range(3)]
    bad = good[1][: len(good[1]) // 2]  # truncated: its header still reads
    jobs = [_job(good[0]), JpegJob(bad, 100, 80), _job(good[2])]
    cfg = _config(32, "bicubic", "shortest")
    pixels, failed = JpegDecoder(cfg, "cpu").decode(jobs)
    assert list(failed) == [1] and failed[1]
    assert not pixels[1].any()
    for row, data in ((0, good[0]), (2, good[2])):
        np.testing.assert_array_equal(pixels[row].numpy(), _cpu_path(data, cfg))


def test_header_routes_cmyk_and_other_formats_to_the_cpu() -> None:
    assert read_jpeg_header(io.BytesIO(_jpeg(gradient().convert("CMYK"))), "c.jpg") is None
    png = io.BytesIO()
    gradient().save(png, "PNG")
    assert read_jpeg_header(io.BytesIO(png.getvalue()), "p.jpg") is None
    assert isinstance(read_jpeg_header(io.BytesIO(_jpeg(gradient())), "g.jpg"), JpegHeader)


def test_header_checks_the_megapixel_limit_before_decoding() -> None:
    data = _jpeg(gradient(2000, 1000))
    with pytest.raises(ImageTooLarge):
        read_jpeg_header(io.BytesIO(data), "big.jpg", max_megapixels=1.5)
    assert read_jpeg_header(io.BytesIO(data), "big.jpg", max_megapixels=2.5) is not None
    with pytest.raises(ImageDecodeError):
        read_jpeg_header(io.BytesIO(b"not an image at all"), "text.jpg")


def test_header_reads_the_date_taken() -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 12:30:00"
    header = read_jpeg_header(io.BytesIO(_jpeg(gradient(), exif=exif.tobytes())), "d.jpg")
    assert header is not None and header.taken_at == "2021-07-04T12:30:00"


def test_coefficients_are_pillows_on_a_one_row_image() -> None:
    """A one-pixel-high image resized by Pillow is one horizontal pass: the taps and
    fixed-point weights reproduce it exactly, crop box included."""
    rng = np.random.default_rng(0)
    row = rng.integers(0, 256, (1, 777), dtype=np.uint8)
    for interpolation, resample in (("bicubic", Image.Resampling.BICUBIC),
                                    ("bilinear", Image.Resampling.BILINEAR),
                                    ("lanczos", Image.Resampling.LANCZOS)):
        for box, out in (((0.0, 777.0), 224), ((13.37, 600.5), 100), ((0.0, 777.0), 1500)):
            expected = np.asarray(Image.fromarray(row).resize((out, 1), resample, box=(box[0], 0, box[1], 1)))
            taps = pillow_coefficients(777, box[0], box[1], out, interpolation)
            total = np.full(out, 1 << 21, dtype=np.int64)
            for k in range(taps.size):
                index = np.minimum(taps.start + k, 776)
                total += row[0, index].astype(np.int64) * taps.weights[:, k]
            np.testing.assert_array_equal(np.clip(total >> 22, 0, 255), expected[0])


def test_unsupported_preprocessing_is_refused() -> None:
    cfg = _config(64, "nearest", "shortest")
    assert not supported(cfg)
    with pytest.raises(ValueError, match="CPU path"):
        JpegDecoder(cfg, "cpu")


def test_a_bad_file_in_a_batch_is_found_by_halving_not_file_by_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """One file the decoder rejects fails the whole batched call: the batch is split in halves
    until it is alone, so it costs a few calls, and every other file is decoded."""
    import torchvision.io

    good = [_jpeg(_photo(seed, 160, 120)) for seed in range(15)]
    whole = _jpeg(_photo(99, 160, 120))
    bad = whole[: len(whole) // 2]  # the header is intact, the scan is cut
    jobs = [_job(d) for d in good[:11]] + [JpegJob(bad, 160, 120)] + [_job(d) for d in good[11:]]
    calls = []
    real = torchvision.io.decode_jpeg

    def counted(data: list, **kw: object) -> object:
        calls.append(len(data))
        if any(t.numel() == len(bad) for t in data):
            raise RuntimeError("Invalid JPEG data or crop window")  # as nvJPEG fails a batch
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", counted)
    pixels, failed = JpegDecoder(_config(64, "bicubic", "shortest"), "cpu").decode(jobs)
    assert list(failed) == [11] and "Invalid JPEG data" in failed[11]
    assert calls[0] == 16 and len(calls) <= 2 * 4 + 1  # 16 files: at most two calls per halving
    assert all(pixels[i].any() for i in range(16) if i != 11)
