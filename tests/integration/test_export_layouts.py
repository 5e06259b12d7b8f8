"""The tiny model written in the hub layout by Immich's exporter and by clipdex (tests/onnx_layouts.py),
read by clipdex.models.bundle: the facts open_clip has, graphs Immich's shape, write_export's round trip.
(The runtimes' vectors across layouts are tested with the runtimes.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from clipdex.models.bundle import identity_of, read_export, write_export
from tests.onnx_layouts import TINY_NAME, clipdex_cache_export, reference_vectors, tiny_open_clip, to_external_data

TEXTS = ["a photo of a dog", "Snow on the mountains, at dawn!", "東京の夜景 🌃", "x " * 90]


def test_immich_layout_reads_open_clips_facts(immich_export_dir: Path, tiny_model: tuple[Path, Path]) -> None:
    import onnxruntime as ort
    import open_clip

    model = tiny_open_clip(tiny_model)
    pre = open_clip.get_model_preprocess_cfg(model)
    export = read_export(immich_export_dir, source=f"folder {immich_export_dir}", work=immich_export_dir.parent)
    meta = export.meta
    assert export.origin == "immich" and meta["pixel_input"] == "float-nchw"
    assert meta["image_size"] == pre["size"][0] and meta["mean"] == list(pre["mean"])
    assert meta["std"] == list(pre["std"]) and meta["resize_mode"] == pre["resize_mode"]
    assert meta["dim"] == open_clip.get_model_config(TINY_NAME)["embed_dim"] and meta["context_length"] == 77
    assert (meta["pad_token"], meta["pad_id"]) == ("<|endoftext|>", 49407)
    assert identity_of(immich_export_dir, str(immich_export_dir)) == "ViT-T/tiny"
    visual = ort.InferenceSession(str(export.visual["fp32"]), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(export.text), providers=["CPUExecutionProvider"])
    (image_in,), (text_in,) = visual.get_inputs(), text.get_inputs()
    assert (image_in.name, image_in.type, image_in.shape) == ("image", "tensor(float)", [1, 3, 64, 64])
    assert (text_in.name, text_in.type, text_in.shape) == ("text", "tensor(int32)", [1, 77])
    assert visual.get_outputs()[0].name == "embedding"


def test_immich_tokenizer_and_graphs_give_open_clips_vectors(immich_export_dir: Path,
                                                             tiny_model: tuple[Path, Path]) -> None:
    """Fed as Immich feeds them (one item, int32 ids padded with the end token, float pixels), the
    fixture's towers give plain open_clip's vectors: the fixture and reference_vectors agree."""
    import onnxruntime as ort
    from PIL import Image

    from clipdex.models.hf_tokenizer import HfTokenizer
    from clipdex.models.preprocess import PreprocessConfig, fit
    from tests.images import write_photos

    export = read_export(immich_export_dir, source="folder", work=immich_export_dir.parent)
    folder = immich_export_dir.parent / "photos"
    if not folder.exists():
        write_photos(folder, 3)
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))[:3]]
    ref_images, ref_texts = reference_vectors(tiny_model, images, TEXTS)
    tokenizer = HfTokenizer.from_export(export.tokenizer.parent if export.tokenizer else Path(), export.meta)
    text = ort.InferenceSession(str(export.text), providers=["CPUExecutionProvider"])
    visual = ort.InferenceSession(str(export.visual["fp32"]), providers=["CPUExecutionProvider"])
    cfg = PreprocessConfig.from_meta(export.meta)
    for i, phrase in enumerate(TEXTS):
        ids = tokenizer([phrase])["input_ids"].astype(np.int32)
        vector = text.run(None, {"text": ids})[0][0]
        assert float(vector @ ref_texts[i]) >= 0.999, phrase
    for i, image in enumerate(images):
        vector = visual.run(None, {"image": export.pixel_feed(fit(image, cfg)[None])})[0][0]
        assert float(vector @ ref_images[i]) >= 0.999


def test_older_exporter_layout_reads(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    import onnxruntime as ort

    from tests.onnx_layouts import write_immich_export

    root = write_immich_export(tiny_model, tmp_path / "ViT-T__tiny", dynamic_batch=True)
    export = read_export(root, source="folder", work=tmp_path)
    session = ort.InferenceSession(str(export.visual["fp32"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch_size"
    out = session.run(None, {"image": export.pixel_feed(np.zeros((2, 64, 64, 3), np.uint8))})[0]
    assert out.shape == (2, 32)


def test_clipdex_layout_round_trip(clipdex_export_dir: Path, tiny_model: tuple[Path, Path]) -> None:
    """read_export of what write_export wrote has the cache's facts, and its tokenizer open_clip's ids."""
    from open_clip.tokenizer import SimpleTokenizer

    from clipdex.models.hf_tokenizer import HfTokenizer
    from clipdex.models.registry import resolve_model

    export = read_export(clipdex_export_dir, source="folder", work=clipdex_export_dir.parent)
    config, weights = tiny_model
    spec = resolve_model(weights=str(weights), model_config=str(config))
    cache = clipdex_cache_export(spec)
    assert export.origin == "clipdex" and export.pixel_input == "uint8-nhwc"
    assert identity_of(clipdex_export_dir, "whatever") == spec.key == export.meta["key"]
    for name in ("dim", "logit_scale", "logit_bias", "image_size", "mean", "std", "interpolation", "resize_mode",
                 "crop_rounding", "resize_size", "context_length", "trim_tokens"):
        assert export.meta[name] == cache.meta[name], name
    assert export.meta["tokenizer"] == "tokenizers"
    ids = HfTokenizer.from_export(clipdex_export_dir / "textual", export.meta)(TEXTS)["input_ids"]
    reference = SimpleTokenizer(context_length=77)(TEXTS).numpy()
    np.testing.assert_array_equal(ids, reference[:, :ids.shape[1]])
    assert not reference[:, ids.shape[1]:].any()


def test_external_weights_stay_beside_their_graph(tmp_path: Path, immich_export_dir: Path,
                                                  clipdex_export_dir: Path) -> None:
    """A large model's tensors in files beside model.onnx: read where they lie, and written out whole."""
    import onnxruntime as ort

    from clipdex.models.bundle import Export

    root = tmp_path / "ViT-T__tiny"
    shutil.copytree(immich_export_dir, root)
    files = to_external_data(root / "visual/model.onnx")
    assert len(files) > 3
    export = read_export(root, source="folder", work=tmp_path)
    session = ort.InferenceSession(str(export.visual["fp32"]), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": np.zeros((1, 3, 64, 64), np.float32)})[0].shape == (1, 32)
    # A cache export whose towers keep external weights is written with them.
    cache = tmp_path / "cache"
    shutil.copytree(clipdex_export_dir, cache)
    to_external_data(cache / "visual/model.onnx")
    mine = read_export(cache, source="folder", work=tmp_path)
    source = Export(cache, {**mine.meta, "tokenizer": "tokenizers"}, "cache", "exported here", mine.visual,
                    mine.text, mine.tokenizer, cache)
    out = write_export(source, tmp_path / "out")
    written = read_export(out, source="folder", work=tmp_path)
    session = ort.InferenceSession(str(written.visual["fp32"]), providers=["CPUExecutionProvider"])
    assert session.run(None, {"pixels": np.zeros((1, 64, 64, 3), np.uint8)})[0].shape == (1, 32)
    assert len(list((out / "visual").iterdir())) == len(list((cache / "visual").iterdir()))


@pytest.mark.parametrize("layout", ["immich", "clipdex"])
def test_damaged_tower_is_a_clear_error(tmp_path: Path, immich_export_dir: Path, clipdex_export_dir: Path,
                                        layout: str) -> None:
    from clipdex.errors import ModelError

    root = tmp_path / "ViT-T__tiny"
    shutil.copytree(immich_export_dir if layout == "immich" else clipdex_export_dir, root)
    (root / "textual/model.onnx").unlink()
    advice = "hf download immich-app/ViT-T__tiny" if layout == "immich" else "clipdex models export"
    with pytest.raises(ModelError, match=advice) as error:
        read_export(root, source="folder", work=tmp_path)
    assert "textual/model.onnx" in str(error.value) and str(root) in str(error.value)
