"""The ONNX path against open_clip itself: tokenizer, text and image vectors, int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipdex import Index
from clipdex.models.factory import make_encoder
from clipdex.models.registry import resolve_model
from clipdex.models.runtimes.openclip_torch import TorchEncoder
from tests.images import photo, write_photos

TEXTS = ["dog", "dog in the snow", "listen to music", "A photo taken at DUSK!!", "café & crème brûlée",
         "emoji 🐶 test", "it's they're we'll", "&amp;quot; html", "", "word " * 100]


def test_tokenizer_matches_open_clip_token_for_token() -> None:
    import open_clip

    from clipdex.models.tokenizer import ClipTokenizer

    ours = ClipTokenizer()(TEXTS)
    theirs = open_clip.get_tokenizer("ViT-B-32")(TEXTS).numpy()
    assert (ours == theirs).all()


def test_onnx_text_and_image_vectors_equal_torch(tiny_model) -> None:
    config, weights = tiny_model
    spec = resolve_model(None, weights, config)
    onnx = make_encoder(spec, device="cpu", precision="fp32")
    torch_encoder = TorchEncoder(spec, device="cpu")
    assert onnx.backend == "onnx"
    a, b = onnx.encode_texts(TEXTS), torch_encoder.encode_texts(TEXTS)
    assert np.sum(a * b, axis=1).min() >= 0.999
    images = [photo(seed) for seed in range(4)]
    a, b = onnx.encode_pil(images), torch_encoder.encode_pil(images)
    assert np.sum(a * b, axis=1).min() >= 0.999
    assert onnx.dim == torch_encoder.dim and onnx.logit_scale == pytest.approx(torch_encoder.logit_scale)


def test_int8_vectors_are_kept_apart_and_close(tmp_path: Path, photos: Path, model_kwargs) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        exact = index.searchable()
    with Index.open(tmp_path / "idx", precision="int8", **model_kwargs) as index:
        index.add(photos, allow_new_model=True)
        keys = [m.key for m in index.status().models]
        fast = index.searchable()
        assert index.search("dog", k=3)
    assert keys[1] == keys[0] + "#int8" and [m for m in keys]
    assert fast.paths == exact.paths
    assert np.sum(fast.vectors * exact.vectors, axis=1).min() >= 0.99, np.sum(fast.vectors * exact.vectors, axis=1)


def _fresh_python(statement: str) -> list[str]:
    """What a new interpreter prints for ``statement`` (with Index imported), then
    whether torch, and open_clip or transformers, were imported."""
    import subprocess
    import sys

    code = (f"import sys; from clipdex import Index; {statement}; "
            "print('torch' in sys.modules, 'open_clip' in sys.modules or 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_cpu_indexing_does_not_import_torch_once_exported(tmp_path: Path, photos: Path,
                                                         model_kwargs) -> None:
    from clipdex.models.devices import accelerator_possible

    if accelerator_possible():
        pytest.skip("a GPU may be present here: torch is rightly asked which device to use")
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)  # exports the model (torch, once)
    more = tmp_path / "more"
    write_photos(more, 2, start=100)
    out = _fresh_python(f"print(Index.open({str(tmp_path / 'idx')!r}).add({str(more)!r}).encoded)")
    assert out == ["2", "False", "False"]


def test_search_path_does_not_import_torch(tmp_path: Path, photos: Path, model_kwargs) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        index.search("warm the export", k=1)
    out = _fresh_python(f"print(len(Index.open({str(tmp_path / 'idx')!r}).search('dog in the snow', k=3)))")
    assert out == ["3", "False", "False"]


def test_a_transformers_checkpoint_is_searched_without_torch_or_transformers(tmp_path: Path, photos: Path,
                                                                             hf_clip_dir: Path) -> None:
    """Its own tokenizer.json runs through the tokenizers library; the towers on ONNX Runtime."""
    with Index.open(tmp_path / "idx", create=True, model=f"hf:{hf_clip_dir}") as index:
        index.add(photos)
        expected = index.search("dog in the snow", k=3)
    out = _fresh_python(f"print([r.path for r in Index.open({str(tmp_path / 'idx')!r}).search('dog in the snow', "
                        "k=3)] == " + repr([r.path for r in expected]) + ")")
    assert out == ["True", "False", "False"]


def test_export_replaces_older_export_formats_only(model_kwargs) -> None:
    from clipdex.models import onnx_export as onnx
    from clipdex.models.runtimes.onnx import ensure_exported

    spec = resolve_model(None, model_kwargs["weights"], model_kwargs["model_config"])
    folder = onnx.export_dir(spec)
    stem = folder.name[:-len(f"-v{onnx.EXPORT_VERSION}")]
    older, newer = (folder.parent / f"{stem}-v{onnx.EXPORT_VERSION - 1}",
                    folder.parent / f"{stem}-v{onnx.EXPORT_VERSION + 1}")
    for d in (older, newer):
        d.mkdir(parents=True)
        (d / "visual-fp32.onnx").write_bytes(b"old")
    ensure_exported(spec, "int8")
    assert not older.exists() and newer.exists()  # a newer clipdex sharing the cache keeps its own
    assert {p.name for p in folder.iterdir()} >= {"meta.json", "visual-fp32.onnx", "visual-int8-r2.onnx",
                                                  "text-fp32.onnx"}
