"""Transformers checkpoints without a model: references to specs, the image processor's pixels
reproduced by clipdex's own resize and crop, what cannot be reproduced, what to download."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clipdex.errors import ModelError
from clipdex.models.hf import download_patterns, processor_config, resolve
from clipdex.models.preprocess import fit
from tests.images import photo

# (width, height) of the test images: landscape, portrait, square, odd margins on both
# sides, smaller than the model's input, and very long.
SIZES = [(640, 480), (481, 640), (100, 100), (33, 47), (301, 199), (20, 31), (37, 1000), (1001, 64),
         (300, 1000)]  # a phone-like portrait: Pillow resizes its rows first
PROCESSORS = [  # (model family, processor keyword arguments)
    ("clip", {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "resample": 3}),
    ("clip", {"size": {"shortest_edge": 33}, "crop_size": {"height": 33, "width": 33}, "resample": 2}),
    ("clip", {"size": 64, "crop_size": 64, "resample": 1}),  # the old int sizes of openai's checkpoints
    ("clip", {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "resample": 0}),
    ("clip", {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "resample": 3}),
    ("clip", {"size": {"shortest_edge": 41}, "crop_size": {"height": 32, "width": 32}, "resample": 2}),
    ("siglip", {"size": {"height": 224, "width": 224}, "resample": 3}),
    ("siglip", {"size": {"height": 47, "width": 47}, "resample": 0}),
]


def _image(width: int, height: int) -> Any:
    image = photo(width * 31 + height, max(width, 64), max(height, 64)).crop((0, 0, width, height))
    # Sensor-like noise on top: a smooth picture hides a resampling order that differs.
    noise = np.random.default_rng(width + height).integers(-40, 41, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def _pil_processor(family: str, kwargs: dict[str, Any]) -> Any:
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    return (CLIPImageProcessorPil if family == "clip" else SiglipImageProcessorPil)(**kwargs)


@pytest.mark.parametrize("family, kwargs", PROCESSORS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(PROCESSORS)])
def test_fit_gives_the_pixels_of_the_checkpoints_pil_processor(family: str, kwargs: dict[str, Any]) -> None:
    processor = _pil_processor(family, kwargs)
    cfg = processor_config(processor.to_dict(), family)
    assert cfg.crop_rounding == "floor"
    for width, height in SIZES:
        image = _image(width, height)
        theirs = processor(images=image, do_rescale=False, do_normalize=False,
                           return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        ours = fit(image, cfg)
        assert ours.shape == theirs.shape, (width, height)
        assert np.abs(ours.astype(np.float32) - theirs).max() <= 1, (width, height)


@pytest.mark.parametrize("extra", [{}, {"rescale_factor": 1 / 127.5, "image_mean": [1, 1, 1], "image_std": [1, 1, 1]},
                                   {"do_normalize": False}, {"do_rescale": False, "image_mean": [120, 110, 100],
                                                             "image_std": [60, 50, 40]}])
def test_normalisation_equals_the_processors(extra: dict[str, Any]) -> None:
    """Rescale factors and mean/std, however the checkpoint sets them, become clipdex's
    ``x * scale - shift`` on 8-bit pixels."""
    processor = _pil_processor("siglip", {"size": {"height": 40, "width": 40}, **extra})
    cfg = processor_config(processor.to_dict(), "siglip")
    image = _image(90, 70)
    theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
    scale, shift = (np.array(v, np.float64).reshape(3, 1, 1) for v in cfg.scale_shift())
    ours = fit(image, cfg).transpose(2, 0, 1) * scale - shift
    assert np.abs(ours - theirs).max() < 1e-4


def test_openai_checkpoints_old_processor_config() -> None:
    """openai/clip-vit-base-patch32's preprocessor_config.json, as published (int sizes,
    a feature extractor's type)."""
    cfg = processor_config({"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                            "feature_extractor_type": "CLIPFeatureExtractor",
                            "image_mean": [0.48145466, 0.4578275, 0.40821073],
                            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}, "clip")
    assert (cfg.image_size, cfg.resize_mode, cfg.interpolation, cfg.crop_rounding) == (224, "shortest", "bicubic",
                                                                                       "floor")


def test_missing_keys_take_the_processor_class_defaults() -> None:
    clip = processor_config({"image_processor_type": "CLIPImageProcessor"}, "clip")
    siglip = processor_config({}, "siglip")
    assert (clip.image_size, clip.resize_mode, clip.mean[0]) == (224, "shortest", 0.48145466)
    assert (siglip.image_size, siglip.resize_mode, siglip.mean, siglip.interpolation) == (
        224, "squash", (0.5, 0.5, 0.5), "bicubic")


@pytest.mark.parametrize("processor, words", [
    ({"size": {"shortest_edge": 200}, "crop_size": {"height": 224, "width": 224}},
     ["resized to 200, less than the crop of 224"]),
    ({"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 200}}, ["not square"]),
    ({"size": {"shortest_edge": 224}, "do_center_crop": False}, ["no centre crop"]),
    ({"size": {"height": 224, "width": 256}, "do_center_crop": False}, ["not square"]),
    ({"do_resize": False}, ["do_resize is false"]),
    ({"size": {"shortest_edge": 224, "longest_edge": 1000}}, ["longest_edge"]),
    ({"resample": 4}, ["resample 4", "bicubic"]),
    ({"image_processor_type": "ViTImageProcessor"}, ["ViTImageProcessor", "CLIPImageProcessor"]),
])
def test_what_clipdex_cannot_reproduce_is_refused_with_what_to_do(processor: dict[str, Any],
                                                                   words: list[str]) -> None:
    with pytest.raises(ModelError) as e:
        processor_config({"image_processor_type": "CLIPImageProcessor", **processor}, "clip", "/ckpt")
    message = str(e.value)
    assert "/ckpt/preprocessor_config.json" in message
    assert all(w in message for w in words), message
    assert "Save" in message or "use" in message


def _fake_checkpoint(folder: Path, model_type: str = "clip", weights: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["XModel"]}))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_a_local_folder_is_keyed_by_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _fake_checkpoint(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    spec = resolve("./ckpt", None)
    assert (spec.family, spec.arch, spec.weights, spec.pretrained) == ("hf", "hf", str(folder), None)
    assert spec.name == f"hf:{folder}" and spec.key.startswith("hf@sha256:")
    assert resolve(str(folder), "mine").name == "mine"
    (folder / "model.safetensors").write_bytes(b"fine-tuned")
    assert resolve(str(folder), None).key != spec.key


def test_a_hub_reference_is_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = resolve("openai/clip-vit-base-patch32", None)
    assert (spec.name, spec.key, spec.pretrained, spec.weights) == (
        "hf:openai/clip-vit-base-patch32", "hf:openai/clip-vit-base-patch32", "openai/clip-vit-base-patch32", None)


@pytest.mark.parametrize("make, reference, words", [
    (None, "", ["empty", "hf:owner/name"]),
    (None, "not a repo", ["neither a hub repository", "hf:/path/to/folder"]),
    (None, "/no/such/folder", ["no folder /no/such/folder", "save_pretrained"]),
    ("empty", "{tmp}/empty", ["has no config.json", "save_pretrained"]),
    ("bert", "{tmp}/bert", ["bert", "CLIPModel", "SiglipModel"]),
    ("noweights", "{tmp}/noweights", ["no weights", "model.safetensors"]),
    ("bert", "{tmp}/bert/config.json", ["is a file", "the folder that holds it", "--model hf:"]),
])
def test_bad_references_say_what_to_pass(tmp_path: Path, make: str | None, reference: str,
                                         words: list[str]) -> None:
    if make == "empty":
        (tmp_path / "empty").mkdir()
    elif make == "bert":
        _fake_checkpoint(tmp_path / "bert", "bert")
    elif make == "noweights":
        _fake_checkpoint(tmp_path / "noweights").joinpath("model.safetensors").unlink()
    with pytest.raises(ModelError) as e:
        resolve(reference.format(tmp=tmp_path), None)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_download_patterns_prefer_safetensors_and_skip_other_frameworks() -> None:
    small = ["config.json", "preprocessor_config.json", "tokenizer.json"]
    both = download_patterns(small + ["model.safetensors", "pytorch_model.bin", "flax_model.msgpack", "tf_model.h5"])
    assert "model.safetensors" in both and not {"pytorch_model.bin", "flax_model.msgpack", "tf_model.h5"} & set(both)
    sharded = download_patterns(small + ["model.safetensors.index.json", "model-00001-of-00002.safetensors"])
    assert {"model.safetensors.index.json", "model-*.safetensors"} <= set(sharded)
    assert "pytorch_model.bin" in download_patterns(small + ["pytorch_model.bin", "tf_model.h5"])
    with pytest.raises(ModelError, match="no PyTorch weights"):
        download_patterns(small + ["flax_model.msgpack", "onnx/model.onnx"])
