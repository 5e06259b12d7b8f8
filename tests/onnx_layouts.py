"""The tiny open_clip model (tests/conftest.py ``tiny_model``) written in the hub layout two ways:
as Immich's exporter writes its ``immich-app/<ARCH>__<TAG>`` repositories, and by clipdex's own
export plus :func:`clipdex.models.bundle.write_export`; and plain open_clip's vectors to compare.

Immich's way, as its current exporter (``immich_model_exporter``) does it: ``torch.onnx.export``
of ``encode_image(image, normalize=True)`` with input ``image`` float32 [1, 3, S, S] and of
``encode_text(text, normalize=True)`` with input ``text`` int32 [1, context_length], output
``embedding``, the batch fixed at 1, opset 19; the tokenizer saved by Transformers'
``save_pretrained`` (a CLIPTokenizer over open_clip's vocabulary: what openai/clip-vit-base-patch32
gives), ``preprocess_cfg.json`` = ``open_clip.get_model_preprocess_cfg(model)`` and ``config.json``
= ``open_clip.get_model_config(name)``. ``dynamic_batch=True`` writes the older exporter's variant
(batch axis ``batch_size``, opset 17, outputs ``image_embedding``/``text_embedding``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TINY_NAME = "clipdex-tiny"
TINY_CONFIG = Path(__file__).parent / "data" / f"{TINY_NAME}.json"
IMMICH_OPSET = 19  # the current exporter's default; torch's TorchScript exporter writes it
OLD_IMMICH_OPSET = 17


def make_tiny_model(folder: Path) -> tuple[Path, Path]:
    """(config JSON, weights file) of the test suite's tiny CLIP: built by open_clip from
    tests/data/clipdex-tiny.json with random weights (seed 0), saved into ``folder``. The
    ``tiny_model`` fixture and CI's light smoke (.ci/light_smoke.py) both make it here."""
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{TINY_NAME}.pt"
    torch.save(model.state_dict(), weights)
    return TINY_CONFIG, weights


def tiny_open_clip(tiny_model: tuple[Path, Path]) -> Any:
    """The tiny model built by open_clip from its config and weights, in eval mode."""
    import open_clip

    config, weights = tiny_model
    open_clip.add_model_config(config)
    return open_clip.create_model(TINY_NAME, pretrained=str(weights)).eval()


def write_immich_export(tiny_model: tuple[Path, Path], dest: Path, *, dynamic_batch: bool = False) -> Path:
    """Write the tiny model into ``dest`` as Immich's exporter does; returns ``dest``."""
    import open_clip
    import torch

    model = tiny_open_clip(tiny_model)
    config = open_clip.get_model_config(TINY_NAME)
    size = int(config["vision_cfg"]["image_size"])
    length = int(config["text_cfg"].get("context_length", 77))
    for part in ("visual", "textual"):
        (dest / part).mkdir(parents=True, exist_ok=True)

    class Visual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(image, normalize=True)

    class Textual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, text: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(text, normalize=True)

    opset = OLD_IMMICH_OPSET if dynamic_batch else IMMICH_OPSET
    image_out, text_out = ("image_embedding", "text_embedding") if dynamic_batch else ("embedding", "embedding")
    # Grad mode on: nn.MultiheadAttention's fused path has no ONNX translation (as clipdex's exporter).
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Visual().eval(), (torch.randn(1, 3, size, size),), str(dest / "visual/model.onnx"),
                          input_names=["image"], output_names=[image_out], opset_version=opset, dynamo=False,
                          dynamic_axes={"image": {0: "batch_size"}} if dynamic_batch else None)
        torch.onnx.export(Textual().eval(), (torch.ones(1, length, dtype=torch.int32),),
                          str(dest / "textual/model.onnx"), input_names=["text"], output_names=[text_out],
                          opset_version=opset, dynamo=False,
                          dynamic_axes={"text": {0: "batch_size"}} if dynamic_batch else None)
    write_hf_clip_tokenizer(dest / "textual", length)
    pre = open_clip.get_model_preprocess_cfg(model)
    (dest / "visual/preprocess_cfg.json").write_text(json.dumps(pre))  # tuples become lists, as Immich's
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def write_hf_clip_tokenizer(folder: Path, context_length: int = 77) -> None:
    """Transformers' CLIP tokenizer over open_clip's vocabulary, saved as Immich's exporter saves
    openai/clip-vit-base-patch32's (``save_pretrained``: tokenizer.json, tokenizer_config.json…)."""
    from transformers import CLIPTokenizer

    from clipdex.models.clip_bpe import vocabulary

    vocab, merges = vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)
    tokenizer.save_pretrained(str(folder))


def to_external_data(model_file: Path) -> list[Path]:
    """Rewrite ``model_file`` with each tensor in its own file beside it, as a large model's export
    (over protobuf's 2 GB) is; returns those files."""
    import onnx

    before = set(model_file.parent.iterdir())
    proto = onnx.load_model(str(model_file))
    onnx.save_model(proto, str(model_file), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    return sorted(set(model_file.parent.iterdir()) - before)


def clipdex_cache_export(spec: Any) -> Any:
    """clipdex's own export of ``spec`` into its cache (exported with torch where missing), as the
    :class:`~clipdex.models.bundle.Export` that :func:`~clipdex.models.bundle.write_export` takes."""
    from clipdex.models.onnx_export import cache_export
    from clipdex.models.runtimes import openclip_torch

    return cache_export(spec, "fp32", openclip_torch.export)


def write_clipdex_export(tiny_model: tuple[Path, Path], dest: Path, home: Path) -> Path:
    """Write the tiny model into ``dest`` the way ``clipdex models export`` does (clipdex's cache
    export, in a clipdex home ``home``, then ``write_export``); returns ``dest``."""
    from clipdex.models.bundle import write_export
    from clipdex.models.registry import resolve_model

    config, weights = tiny_model
    saved = os.environ.get("CLIPDEX_HOME")
    os.environ["CLIPDEX_HOME"] = str(home)
    try:
        spec = resolve_model(weights=str(weights), model_config=str(config))
        return write_export(clipdex_cache_export(spec), dest)
    finally:
        if saved is None:
            os.environ.pop("CLIPDEX_HOME", None)
        else:
            os.environ["CLIPDEX_HOME"] = saved


def reference_vectors(tiny_model: tuple[Path, Path], images: Sequence[Any],
                      texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Plain open_clip's L2-normalised vectors of ``images`` (PIL images, through open_clip's own
    evaluation transform) and ``texts`` (its own tokenizer): what every layout must reproduce."""
    import open_clip
    import torch

    model = tiny_open_clip(tiny_model)
    preprocess = open_clip.create_model_and_transforms(TINY_NAME, pretrained=None)[2]
    tokenizer = open_clip.get_tokenizer(TINY_NAME)
    with torch.inference_mode():
        image_vectors = (model.encode_image(torch.stack([preprocess(image) for image in images]), normalize=True)
                         if len(images) else torch.zeros(0, model.visual.output_dim))
        text_vectors = (model.encode_text(tokenizer(list(texts)), normalize=True)
                        if len(texts) else torch.zeros(0, model.visual.output_dim))
    return image_vectors.numpy().astype(np.float32), text_vectors.numpy().astype(np.float32)
