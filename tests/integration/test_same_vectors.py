"""Same vectors whichever way a model came: plain open_clip, clipdex's own export in its cache, a
folder written by ``clipdex models export`` and Immich's layout, all of the same tiny weights,
through clipdex's whole pipeline (decode workers, preprocessing, the runtime, the index)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdex import Index
from clipdex.errors import ModelError, ModelMismatch
from clipdex.models.factory import make_encoder
from clipdex.models.registry import resolve_model
from tests.images import write_photos
from tests.onnx_layouts import reference_vectors, write_clipdex_export, write_immich_export

TEXTS = ["a photo of a dog in the snow", "listen to music", "a red car", "two people on a beach at dusk"]
BAR = 0.999


def _worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


@pytest.fixture()
def sources(model_kwargs: dict[str, str], clipdex_export_dir: Path, immich_export_dir: Path) -> dict[str, dict]:
    return {
        "cache": model_kwargs,
        "clipdex layout": {"model": f"onnx:{clipdex_export_dir}"},
        "immich layout": {"model": f"onnx:{immich_export_dir}"},
    }


@pytest.mark.parametrize("source", ["cache", "clipdex layout", "immich layout"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_source_gives_open_clips_vectors(tmp_path: Path, photos: Path, tiny_model: tuple[Path, Path],
                                               sources: dict[str, dict], source: str, precision: str) -> None:
    with Index.open(tmp_path / "idx", create=True, precision=precision, **sources[source]) as index:
        assert not index.add(photos).failed
        found = index.searchable()
    images = [Image.open(p).convert("RGB") for p in found.paths]
    want_images, want_texts = reference_vectors(tiny_model, images, TEXTS)
    got = found.vectors.astype(np.float32)
    bar = BAR if precision == "fp32" else 0.99  # int8: the image tower quantised, texts stay fp32
    assert _worst_cosine(got, want_images) >= bar, source
    encoder = make_encoder(resolve_model(**sources[source]), device="cpu", for_queries=True)
    assert _worst_cosine(encoder.encode_texts(TEXTS), want_texts) >= BAR, source


def test_an_export_of_the_same_weights_shares_the_index(tmp_path: Path, photos: Path,
                                                        model_kwargs: dict[str, str], clipdex_export_dir: Path) -> None:
    """clipdex.json carries the model's key: the exported folder's vectors are the cache's, so an index
    built from the weights is continued (and searched) from the export without encoding again."""
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        expected = [hit.path for hit in index.search("a dog", k=5)]
    with Index.open(tmp_path / "idx", model=f"onnx:{clipdex_export_dir}") as index:
        assert index.add(photos).encoded == 0
        assert [hit.path for hit in index.search("a dog", k=5)] == expected


def test_another_model_needs_add_model(tmp_path: Path, photos: Path, model_kwargs: dict[str, str],
                                       immich_export_dir: Path) -> None:
    """Immich's folder names another model ('ViT-T/tiny'): it is not mixed in unasked."""
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
    with Index.open(tmp_path / "idx", model=f"onnx:{immich_export_dir}") as index, pytest.raises(ModelMismatch):
        index.add(photos)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny architecture with other weights (seed 1): another model, of the same dimension."""
    import open_clip
    import torch

    from tests.conftest import TINY_CONFIG

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(1)
    model = open_clip.create_model("clipdex-tiny", pretrained=None)
    weights = tmp_path_factory.mktemp("other-model") / "clipdex-tiny-seed1.pt"
    torch.save(model.state_dict(), weights)
    return TINY_CONFIG, weights


def test_an_export_folder_replaced_by_another_model_is_refused(tmp_path: Path, photos: Path, clipdex_export_dir: Path,
                                                               other_model: tuple[Path, Path]) -> None:
    """`clipdex models export` replaces an earlier export in place: an index built from that folder
    must not file the new model's vectors under the old model's key."""
    folder = tmp_path / "export"
    shutil.copytree(clipdex_export_dir, folder)
    with Index.open(tmp_path / "idx", create=True, model=f"onnx:{folder}") as index:
        index.add(photos)
    write_clipdex_export(other_model, folder, tmp_path / "home-other")
    with Index.open(tmp_path / "idx") as index, pytest.raises(ModelError, match="was replaced since"):
        index.search("a dog", k=1)


def test_same_name_other_weights_is_caught_by_the_probe(tmp_path: Path, photos: Path, immich_export_dir: Path,
                                                        other_model: tuple[Path, Path]) -> None:
    """An Immich folder is known by its name (ARCH__TAG): towers swapped for another model's keep the
    name, so the index checks the vectors of the rewritten folder and refuses them."""
    folder = tmp_path / "ViT-T__tiny"
    shutil.copytree(immich_export_dir, folder)
    with Index.open(tmp_path / "idx", create=True, model=f"onnx:{folder}") as index:
        index.add(photos)
    shutil.rmtree(folder)
    write_immich_export(other_model, folder)
    more = tmp_path / "more"
    write_photos(more, 2, start=40)
    with Index.open(tmp_path / "idx") as index, pytest.raises(ModelMismatch, match=r"0\.99"):
        index.add(more)
    with Index.open(tmp_path / "idx") as index, pytest.raises(ModelMismatch):
        index.search("a dog", k=1)
