"""Transformers checkpoints against Transformers itself: tiny random CLIPModel and SiglipModel
folders made with save_pretrained (tests/hf_checkpoints.py), run through clipdex's factory
(torch through Transformers, the default CPU path on ONNX Runtime, int8) and an index, and
compared with the model's own ``get_image_features`` / ``get_text_features`` on its own
processor's output, its own tokenizer's ids, and its own logits."""

from __future__ import annotations

import shutil
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clipdex import Index
from clipdex.errors import ModelError, ModelUnavailable
from clipdex.labels import make_label_set
from clipdex.models.factory import make_encoder
from clipdex.models.hf import checkpoint_facts
from clipdex.models.registry import resolve_model
from clipdex.models.runtimes.hf_torch import HfTorchEncoder
from clipdex.models.runtimes.onnx import ensure_exported
from tests.conftest import free_port, run_cli
from tests.hf_checkpoints import cache_repo
from tests.images import photo, write_photos

CHECKPOINTS = ["hf_clip_dir", "hf_siglip_dir"]
TEXTS = ["dog", "dog in the snow", "listen to music", "A photo taken at DUSK!!", "café & crème brûlée",
         "emoji 🐶 test", "it's they're we'll", "&amp;quot; html", "", "word " * 100, "  spaced   out  ",
         "Ünïcödé ÄÖÜ ß 日本語", "punctuation... (lots) of it; yes: no?"]
# (width, height): landscape, portrait, square, odd margins, smaller than the input, very long.
SIZES = [(640, 480), (481, 640), (100, 100), (33, 47), (301, 199), (20, 31), (37, 500)]
PATHS = [("transformers", "fp32", 0.999), ("onnx", "fp32", 0.999), ("onnx", "int8", 0.99)]
PROB_TOLERANCE = 1e-4


@pytest.fixture(params=CHECKPOINTS, ids=["clip", "siglip"])
def checkpoint(request: pytest.FixtureRequest) -> Path:
    folder: Path = request.getfixturevalue(request.param)
    return folder


def _images() -> list[Image.Image]:
    return [photo(w * 13 + h, max(w, 64), max(h, 64)).crop((0, 0, w, h)) for w, h in SIZES]


@lru_cache(maxsize=4)
def _reference(folder: Path) -> tuple[Any, Any, Any]:
    """The checkpoint as Transformers loads it: (model, image processor, tokenizer)."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    return (AutoModel.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder),
            AutoTokenizer.from_pretrained(folder))


def _unit(features: Any) -> np.ndarray:
    import torch

    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    return torch.nn.functional.normalize(features, dim=-1).detach().numpy()


def _tokens(folder: Path, texts: list[str], max_length: int | None = None, padding: str | None = None) -> Any:
    facts = checkpoint_facts(folder)
    return _reference(folder)[2](texts, padding=padding or facts.padding, truncation=True,
                                 max_length=max_length or facts.context_length, return_tensors="pt")


def reference_images(folder: Path, images: list[Image.Image], processor: Any = None) -> np.ndarray:
    import torch

    model, default, _ = _reference(folder)
    with torch.no_grad():
        return _unit(model.get_image_features(**(processor or default)(images=images, return_tensors="pt")))


def reference_texts(folder: Path, texts: list[str]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _unit(_reference(folder)[0].get_text_features(**_tokens(folder, texts)))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.mark.parametrize("runtime, precision, least", PATHS, ids=[f"{r}-{p}" for r, p, _ in PATHS])
def test_image_vectors_equal_transformers_own(checkpoint: Path, runtime: str, precision: str, least: float) -> None:
    """Against get_image_features on the checkpoint's default processor's output (torchvision)."""
    encoder = make_encoder(resolve_model(f"hf:{checkpoint}"), device="cpu", precision=precision, runtime=runtime)
    assert encoder.backend == runtime
    images = _images()
    ours = encoder.encode_pil(images)
    assert ours.dtype == np.float32 and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert _cosines(ours, reference_images(checkpoint, images)).min() >= least


def test_pil_processor_gives_the_same_vectors(checkpoint: Path) -> None:
    """The PIL backend of the checkpoint's processor (Transformers 4's default) too."""
    from transformers import AutoImageProcessor

    pil = AutoImageProcessor.from_pretrained(checkpoint, backend="pil")
    assert type(pil).__name__.endswith("Pil")
    images = _images()
    encoder = make_encoder(resolve_model(f"hf:{checkpoint}"), device="cpu", precision="fp32")
    assert _cosines(encoder.encode_pil(images), reference_images(checkpoint, images, pil)).min() >= 0.9999


def test_text_ids_equal_the_checkpoints_tokenizer_token_for_token(checkpoint: Path) -> None:
    import onnxruntime as ort

    from clipdex.models.hf_tokenizer import HfTokenizer
    from clipdex.models.onnx_export import TEXT_FILE, export_dir

    spec = resolve_model(f"hf:{checkpoint}")
    meta = ensure_exported(spec)
    assert meta["tokenizer"] == "tokenizers"
    feeds = HfTokenizer.from_export(export_dir(spec), meta)(TEXTS)
    theirs = _tokens(checkpoint, TEXTS)
    assert set(feeds) == {k for k in theirs if k in ("input_ids", "attention_mask")}
    for name, ids in feeds.items():
        assert ids.dtype == np.int64 and (ids == theirs[name].numpy()).all(), name
    session = ort.InferenceSession(str(export_dir(spec) / TEXT_FILE), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(feeds)
    facts = checkpoint_facts(checkpoint)
    assert feeds["input_ids"].shape[1] == (facts.context_length if facts.padding == "max_length"
                                           else theirs["input_ids"].shape[1])


@pytest.mark.parametrize("runtime", ["transformers", "onnx"])
def test_text_vectors_equal_transformers_own(checkpoint: Path, runtime: str) -> None:
    encoder = make_encoder(resolve_model(f"hf:{checkpoint}"), device="cpu", precision="fp32", runtime=runtime)
    ours = encoder.encode_texts(TEXTS)
    assert ours.shape == (len(TEXTS), encoder.dim)
    assert _cosines(ours, reference_texts(checkpoint, TEXTS)).min() >= 0.999


def test_exported_text_tower_takes_any_length(checkpoint: Path) -> None:
    """The text graph is traced once but runs on inputs of other lengths (and batches)."""
    import onnxruntime as ort
    import torch

    from clipdex.models.onnx_export import TEXT_FILE, export_dir

    spec = resolve_model(f"hf:{checkpoint}")
    ensure_exported(spec)
    session = ort.InferenceSession(str(export_dir(spec) / TEXT_FILE), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    model = _reference(checkpoint)[0]
    for length, texts in ((5, TEXTS[:3]), (17, TEXTS)):
        tokens = _tokens(checkpoint, texts, max_length=length, padding="max_length")
        assert tokens["input_ids"].shape == (len(texts), length)
        (ours,) = session.run(None, {n: tokens[n].numpy() for n in names})
        with torch.no_grad():
            theirs = _unit(model.get_text_features(**{n: tokens[n] for n in names}))
        assert _cosines(ours, theirs).min() >= 0.999, length


def test_scores_and_facts(checkpoint: Path) -> None:
    model = _reference(checkpoint)[0]
    scale = float(model.logit_scale.detach().exp())
    bias = getattr(model, "logit_bias", None)
    bias = None if bias is None else float(bias.detach())
    spec = resolve_model(f"hf:{checkpoint}")
    torch_encoder = HfTorchEncoder(spec, device="cpu")
    onnx = make_encoder(spec, device="cpu", precision="fp32")
    for encoder in (torch_encoder, onnx):
        assert encoder.logit_scale == pytest.approx(scale)
        assert encoder.logit_bias == (None if bias is None else pytest.approx(bias))
        assert encoder.dim == reference_images(checkpoint, _images()[:1]).shape[1]
        assert encoder.preprocess_config == checkpoint_facts(checkpoint).preprocess
    assert onnx.encode_texts([]).shape == (0, torch_encoder.dim)


def _small_photos(folder: Path, count: int = 5) -> list[Path]:
    """JPEGs small enough that the indexer decodes them at full size (no JPEG draft), as
    Transformers' reference opens them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"small-{seed}.jpg"
        photo(seed, 80 + 7 * seed, 60 + 3 * seed).save(path, "JPEG", quality=92)
        paths.append(path)
    return paths


def test_index_end_to_end(tmp_path: Path, checkpoint: Path) -> None:
    photos = tmp_path / "photos"
    write_photos(photos / "big", 3)
    _small_photos(photos)
    model = f"hf:{checkpoint}"
    with Index.open(tmp_path / "idx", create=True, model=model) as index:
        assert index.add(photos).encoded == 8
        assert len(index.search("a dog in the snow", k=3)) == 3
        found = index.searchable()
        key = index.status().models[0].key
    assert key.startswith("hf@sha256:")
    images = [Image.open(p).convert("RGB") for p in found.paths]
    cosines = _cosines(found.vectors.astype(np.float32), reference_images(checkpoint, images))
    assert cosines.min() >= 0.999, cosines
    with Index.open(tmp_path / "idx", model=model) as index:  # reopened: the same model, searchable
        assert index.search("dog", k=1)


def test_classification_equals_the_models_own_logits(tmp_path: Path, checkpoint: Path) -> None:
    """Softmax over labels for CLIP, each label's sigmoid for SigLIP: the model's own
    ``logits_per_image`` on its processor's output, for labels of one prompt each. The
    processor's PIL backend gives clipdex's pixels exactly; its default (torchvision) backend
    resizes a little differently (SigLIP's bilinear: cosine 1 - 6e-6, probabilities 8e-4 apart)."""
    import torch
    from transformers import AutoImageProcessor

    paths = _small_photos(tmp_path / "photos")
    labels = ["dawn", "day", "dusk", "night"]
    prompts = [f"a photo taken at {label}" for label in labels]
    with Index.open(tmp_path / "idx", create=True, model=f"hf:{checkpoint}") as index:
        index.add(tmp_path / "photos")
        (result,) = index.classify([make_label_set("time", labels, ["a photo taken at {}"])])
    model = _reference(checkpoint)[0]
    processor = AutoImageProcessor.from_pretrained(checkpoint, backend="pil")
    images = [Image.open(p).convert("RGB") for p in result.paths]
    with torch.no_grad():
        logits = model(**_tokens(checkpoint, prompts), **processor(images=images, return_tensors="pt")
                       ).logits_per_image
    siglip = checkpoint_facts(checkpoint).model_type == "siglip"
    theirs = (torch.sigmoid(logits) if siglip else logits.softmax(dim=-1)).numpy()
    assert result.scoring == ("sigmoid" if siglip else "softmax")
    assert sorted(map(str, result.paths)) == sorted(map(str, paths))
    assert np.abs(result.probs - theirs).max() <= PROB_TOLERANCE, np.abs(result.probs - theirs).max()


def test_cli_index_search_and_classify(tmp_path: Path, hf_siglip_dir: Path) -> None:
    photos = tmp_path / "photos"
    _small_photos(photos, 3)
    index = str(tmp_path / "idx")
    model = ["--model", f"hf:{hf_siglip_dir}"]
    result = run_cli("index", str(photos), "--index", index, *model)
    assert result.exit_code == 0, result.output
    result = run_cli("search", "a dog", "--index", index, *model)
    assert result.exit_code == 0 and "small-" in result.output, result.output


# -- hub names, offline ---------------------------------------------------------

def test_a_hub_name_in_the_hf_cache_runs_offline(hub_cache: Path, hf_clip_dir: Path) -> None:
    """A repo the Hugging Face cache holds (laid out as the hub client writes it) is used as is."""
    cache_repo(hub_cache, "clipdex/tiny-clip", hf_clip_dir)
    spec = resolve_model("hf:clipdex/tiny-clip")
    assert (spec.key, spec.pretrained) == ("hf:clipdex/tiny-clip", "clipdex/tiny-clip")
    images = _images()[:3]
    vectors = make_encoder(spec, device="cpu", precision="fp32").encode_pil(images)
    assert _cosines(vectors, reference_images(hf_clip_dir, images)).min() >= 0.999


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_a_hub_name_not_cached_fails_fast_saying_how_to_bring_it(hub_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 offline: bool) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    spec = resolve_model("siglip-base")
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as e:
        make_encoder(spec, device="cpu", precision="fp32").encode_texts(["a dog"])
    assert time.monotonic() - start < 10
    message = str(e.value)
    assert "siglip-base" in message and "google/siglip-base-patch16-224" in message
    assert "HF_HUB_OFFLINE" in message if offline else "unreachable" in message
    assert "hf download google/siglip-base-patch16-224" in message and "--model hf:/path/to/folder" in message


def test_a_moved_folder_says_to_pass_the_new_path(tmp_path: Path, hf_clip_dir: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(hf_clip_dir, folder)
    spec = resolve_model(f"hf:{folder}")
    shutil.rmtree(folder)
    with pytest.raises(ModelError, match="pass --model hf:/new/path"):
        HfTorchEncoder(spec, device="cpu").load()


def test_without_transformers_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                             hf_clip_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelError, match=r"pip install 'clipdex\[hf\]'"):
        HfTorchEncoder(resolve_model(f"hf:{hf_clip_dir}"), device="cpu").load()


def test_a_damaged_sentencepiece_tokenizer_still_indexes_photos(tmp_path: Path, hf_siglip_dir: Path) -> None:
    """A SigLIP whose spiece.model cannot be read (and no tokenizer.json): its photos index on the
    CPU path all the same, and texts say what is wrong."""
    import json

    folder = tmp_path / "siglip-spm"
    shutil.copytree(hf_siglip_dir, folder)
    (folder / "tokenizer.json").unlink()
    (folder / "spiece.model").write_bytes(b"not read here")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "SiglipTokenizer"}))
    spec = resolve_model(f"hf:{folder}")
    encoder = make_encoder(spec, device="cpu", precision="fp32")
    images = _images()[:2]
    assert _cosines(encoder.encode_pil(images), reference_images(hf_siglip_dir, images)).min() >= 0.999
    assert ensure_exported(spec)["tokenizer"] is None
    with pytest.raises(ModelError, match=r"cannot load the tokenizer .* Its spiece\.model cannot be read: download "
                                         r"the checkpoint again"):
        encoder.encode_texts(["a dog"])


def test_a_tokenizer_added_later_is_exported_then(tmp_path: Path, hf_clip_dir: Path) -> None:
    """An export made while the folder had no usable tokenizer is made again once it has one, and
    texts then run without torch."""
    folder = tmp_path / "clip"
    shutil.copytree(hf_clip_dir, folder)
    tokenizer = (folder / "tokenizer.json").read_bytes()
    (folder / "tokenizer.json").unlink()
    spec = resolve_model(f"hf:{folder}")
    assert ensure_exported(spec)["tokenizer"] is None
    with pytest.raises(ModelError, match=r"has no vocabulary: .* holds none of tokenizer\.json"):
        make_encoder(spec, device="cpu").encode_texts(["a dog"])
    (folder / "tokenizer.json").write_bytes(tokenizer)
    meta = ensure_exported(spec)
    assert meta["tokenizer"] == "tokenizers"
    texts = ["a dog in the snow", "dusk"]
    assert _cosines(make_encoder(spec, device="cpu").encode_texts(texts),
                    make_encoder(spec, device="cpu", runtime="transformers").encode_texts(texts)).min() >= 0.999


def test_a_checkpoint_saved_in_half_precision_runs_in_float32(tmp_path: Path, hf_clip_dir: Path) -> None:
    """Fine-tunes are often saved in bf16 or fp16: 'fp32' means fp32 all the same, on ONNX Runtime too."""
    import torch
    from transformers import CLIPModel

    images = _images()[:3]
    expected = reference_images(hf_clip_dir, images)
    for dtype in (torch.bfloat16, torch.float16):
        folder = tmp_path / str(dtype)
        shutil.copytree(hf_clip_dir, folder)
        CLIPModel.from_pretrained(hf_clip_dir).to(dtype).save_pretrained(folder)
        spec = resolve_model(f"hf:{folder}")
        for runtime in ("onnx", "transformers"):
            vectors = make_encoder(spec, device="cpu", runtime=runtime).encode_pil(images)
            assert _cosines(vectors, expected).min() >= 0.99, (dtype, runtime)


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path: Path, hf_clip_dir: Path) -> None:
    """Saved from a wrapper (every name prefixed), or a tower left out: Transformers would fill
    the gaps with random weights; clipdex refuses instead of indexing noise."""
    from safetensors.torch import load_file, save_file

    weights = load_file(hf_clip_dir / "model.safetensors")
    for name, state in (("prefixed", {f"model.{k}": v for k, v in weights.items()}),
                        ("partial", {k: v for k, v in weights.items() if ".layers.1." not in k})):
        folder = tmp_path / name
        shutil.copytree(hf_clip_dir, folder)
        save_file(state, folder / "model.safetensors")
        encoder = make_encoder(resolve_model(f"hf:{folder}"), device="cpu", runtime="transformers")
        with pytest.raises(ModelError, match=r"do not fit its CLIPModel: \d+ missing") as caught:
            encoder.load()
        assert ("saved from a wrapper" in str(caught.value)) == (name == "prefixed")


def test_a_damaged_weights_file_says_so(tmp_path: Path, hf_clip_dir: Path) -> None:
    folder = tmp_path / "partly-copied"
    shutil.copytree(hf_clip_dir, folder)
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(10_000)
    with pytest.raises(ModelError, match="a damaged or partly copied weights file"):
        make_encoder(resolve_model(f"hf:{folder}"), device="cpu").load()


def test_checkpoints_sharing_weights_keep_their_own_exports(tmp_path: Path, hf_clip_dir: Path) -> None:
    """Same weights, one without a tokenizer: each has its export, and neither is made again."""
    from clipdex.models.onnx_export import export_dir

    whole, bare = tmp_path / "whole", tmp_path / "bare"
    shutil.copytree(hf_clip_dir, whole)
    shutil.copytree(hf_clip_dir, bare)
    (bare / "tokenizer.json").unlink()
    specs = [resolve_model(f"hf:{f}") for f in (whole, bare)]
    assert specs[0].key == specs[1].key and export_dir(specs[0]) != export_dir(specs[1])
    metas = [ensure_exported(s) for s in specs]
    assert [m["tokenizer"] for m in metas] == ["tokenizers", None]
    made = {s.key: (export_dir(s) / "meta.json").stat().st_mtime_ns for s in specs[:1]}
    assert ensure_exported(specs[0])["tokenizer"] == "tokenizers"
    assert (export_dir(specs[0]) / "meta.json").stat().st_mtime_ns == made[specs[0].key]


def test_a_processor_that_resizes_beyond_its_crop(tmp_path: Path, hf_clip_dir: Path) -> None:
    """shortest_edge larger than the crop (256 then 224, as many fine-tunes save it)."""
    import json

    folder = tmp_path / "resize-then-crop"
    shutil.copytree(hf_clip_dir, folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    side = config["crop_size"]["height"]
    config["size"] = {"shortest_edge": side + 9}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    images = _images()
    expected = reference_images(folder, images)
    for runtime in ("onnx", "transformers"):
        vectors = make_encoder(resolve_model(f"hf:{folder}"), device="cpu", runtime=runtime).encode_pil(images)
        assert _cosines(vectors, expected).min() >= 0.999, runtime
