"""Indexing through the device-decoding stage (JPEGs decoded, turned and fitted on the
encoder's device), run on the CPU with gpu_decode="force": the same vectors as Pillow's path,
CMYK and other formats through Pillow, a bad file recorded as a failure."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdex import Index, IndexSettings
from clipdex.settings import gpu_decode_setting
from tests.images import gradient, photo, write_photos

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    """JPEGs (one EXIF-rotated, one grayscale, one CMYK, a copy), a PNG and a corrupt JPEG."""
    folder = tmp_path / "mixed"
    write_photos(folder, 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(20).save(folder / "rotated.jpg", "JPEG", quality=90, exif=exif.tobytes())
    photo(21).convert("L").save(folder / "gray.jpg", "JPEG", quality=90)
    photo(22).convert("CMYK").save(folder / "cmyk.jpg", "JPEG", quality=90)
    photo(23).save(folder / "picture.png")
    shutil.copy(folder / "photo-001.jpg", folder / "copy-of-001.jpg")
    data = io.BytesIO()
    gradient(400, 300).save(data, "JPEG")
    (folder / "corrupt.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    return folder


def _index(tmp_path: Path, name: str, folder: Path, model_kwargs: dict[str, str],
           settings: IndexSettings) -> tuple[dict[str, np.ndarray], object]:
    with Index.open(tmp_path / name, create=True, device="cpu", precision="fp32", **model_kwargs) as index:
        report = index.add(folder, settings=settings)
        found = index.searchable()
        vectors = {Path(p).name: np.asarray(v, dtype=np.float32) for p, v in zip(found.paths, found.vectors)}
    return vectors, report


def test_device_decoding_gives_the_cpu_paths_vectors(tmp_path: Path, mixed: Path,
                                                     model_kwargs: dict[str, str]) -> None:
    forced, report = _index(tmp_path, "forced", mixed, model_kwargs,
                            IndexSettings(gpu_decode="force", batch_size=4, workers=2))
    full, _ = _index(tmp_path, "full", mixed, model_kwargs,
                     IndexSettings(gpu_decode=False, reduced_decode=False, batch_size=4, workers=2))
    usual, plain = _index(tmp_path, "usual", mixed, model_kwargs, IndexSettings(gpu_decode=False))

    # 6 photos + rotated + gray decoded on the device (the copy reuses its twin's vector);
    # CMYK and PNG by Pillow; the corrupt one failed both.
    assert report.device_decoded == 8
    assert plain.device_decoded == 0
    assert [Path(f.path).name for f in report.failed] == ["corrupt.jpg"]
    assert [f.reason for f in report.failed] == [f.reason for f in plain.failed]
    assert set(forced) == set(usual) == {*(f"photo-{i:03d}.jpg" for i in range(6)), "rotated.jpg", "gray.jpg",
                                         "cmyk.jpg", "picture.png", "copy-of-001.jpg"}
    for name in forced:
        # Full-size decoding on both sides: the same pixels, so the same vector.
        assert float(forced[name] @ full[name]) > 0.99999, name
        # Against the default CPU path, which decodes large JPEGs at reduced size (draft).
        assert float(forced[name] @ usual[name]) >= 0.999, name


def test_device_decoding_records_sizes_dates_and_limits(tmp_path: Path, mixed: Path,
                                                        model_kwargs: dict[str, str]) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2019:05:06 07:08:09"
    photo(30, 800, 600).save(mixed / "dated.jpg", "JPEG", exif=exif.tobytes())
    with Index.open(tmp_path / "idx", create=True, device="cpu", **model_kwargs) as index:
        report = index.add(mixed, settings=IndexSettings(gpu_decode="force", max_megapixels=0.4))
        failed = {Path(f.path).name: f for f in report.failed}
        assert failed["dated.jpg"].kind == "limit"  # 0.48 MP, checked from the header alone
        assert set(failed) == {"dated.jpg", "corrupt.jpg"}
        report = index.add(mixed, settings=IndexSettings(gpu_decode="force"))
        assert report.failed and [Path(f.path).name for f in report.failed] == ["corrupt.jpg"]
        files = {Path(p).name: f for p, f in index.store.files_under(str(mixed)).items()}
    assert (files["rotated.jpg"].width, files["rotated.jpg"].height) == (480, 640)  # upright
    assert (files["dated.jpg"].width, files["dated.jpg"].height) == (800, 600)
    assert (files["dated.jpg"].taken_at, files["dated.jpg"].taken_source) == ("2019-05-06T07:08:09", "exif")


def test_the_environment_turns_it_off_or_forces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPDEX_GPU_DECODE", raising=False)
    assert gpu_decode_setting() is True
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv("CLIPDEX_GPU_DECODE", off)
        assert gpu_decode_setting() is False
        assert IndexSettings().gpu_decode is False
    monkeypatch.setenv("CLIPDEX_GPU_DECODE", "force")
    assert gpu_decode_setting() == "force"


def test_on_the_cpu_the_default_leaves_decoding_to_pillow(tmp_path: Path, mixed: Path,
                                                          model_kwargs: dict[str, str]) -> None:
    _, report = _index(tmp_path, "idx", mixed, model_kwargs, IndexSettings())
    assert report.device_decoded == 0


def test_a_device_stage_that_fails_as_a_whole_hands_every_file_to_pillow(
        tmp_path: Path, mixed: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A driver error in the device stage costs speed, never the run: every file is indexed
    by Pillow, the failure is logged once, nothing counts as decoded on the device."""
    from clipdex.models.gpu_decode import JpegDecoder

    calls = []

    def broken(self: JpegDecoder, jobs: object) -> None:
        calls.append(jobs)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(JpegDecoder, "decode", broken)
    with caplog.at_level("WARNING", logger="clipdex.indexer"):
        vectors, report = _index(tmp_path, "broken", mixed, model_kwargs,
                                 IndexSettings(gpu_decode="force", batch_size=4, workers=2))
    usual, plain = _index(tmp_path, "usual", mixed, model_kwargs, IndexSettings(gpu_decode=False))
    assert report.device_decoded == 0
    assert len(calls) == 1  # turned off for the rest of the run after the first failure
    assert set(vectors) == set(usual)
    assert [f.path for f in report.failed] == [f.path for f in plain.failed]
    assert sum("Pillow decodes them for the rest of this run" in r.getMessage() for r in caplog.records) == 1
