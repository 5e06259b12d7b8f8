"""`clipdex export` / `clipdex import` with Transformers checkpoints and sigmoid (SigLIP) models.

An import encodes nothing, so it learns what the model is from its files alone:
the dimension from a checkpoint's config.json (the width of ``get_image_features``),
and the model's own scoring (``logit_scale``, and SigLIP's ``logit_bias``) from its
weights, safetensors read without torch. Checked here against Transformers and
open_clip themselves: the imported index stores the checkpoint's scale and bias and
classifies as the index the vectors came from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipdex import Index
from clipdex.classify import SIGMOID, SOFTMAX, Classification
from clipdex.interchange import HF_DEFAULT_DIMS, MANIFEST_NAME, embedding_dim, scoring_params
from clipdex.labels import make_label_set
from clipdex.models.registry import resolve_model
from clipdex.models.spec import ModelSpec
from tests.conftest import run_cli
from tests.conftest import sigmoid_open_clip as make_sigmoid_open_clip
from tests.hf_checkpoints import cache_repo

LABELS = ["dawn", "day", "dusk", "night"]
TEMPLATE = "a photo taken at {}"
# Exported vectors are float16 (clip-retrieval's layout): cosines move by ~1e-4, the
# probabilities of these tiny models (scales 10 to 20) by 2e-4 at most (measured: SigLIP 2.0e-4, CLIP 5.7e-5).
MAX_PROB_CHANGE = 1e-3
OPEN_CLIP_NAME = "clipdex-tiny-sigmoid-st"  # a tiny open_clip CLIP with SigLIP's logit_bias
OPEN_CLIP_BIAS = -10.0


def _label_set() -> Any:
    return make_label_set("taken_time", LABELS, [TEMPLATE])


def _by_path(result: Classification) -> np.ndarray:
    """The probabilities in path order (two indexes may list their photos in other orders)."""
    return result.probs[np.argsort(result.paths, kind="stable")].astype(np.float64)


def _export_and_import(index: Path, out: Path, target: Path, *model: str) -> None:
    result = run_cli("export", str(out), "--index", str(index))
    assert result.exit_code == 0, result.output
    result = run_cli("import", str(out), "--index", str(target), *model)
    assert result.exit_code == 0, result.output


def _imported_record(target: Path, **open_kwargs: str) -> Any:
    """The model record an import wrote (before anything classifies with it)."""
    with Index.open(target, **open_kwargs) as index:
        return index.model_record()


def _classify(folder: Path, **open_kwargs: str) -> Classification:
    with Index.open(folder, **open_kwargs) as index:
        (result,) = index.classify([_label_set()])
        return result


def _hf_reference(folder: Path) -> dict[str, Any]:
    """What Transformers says of a checkpoint: its image vectors' width, exp(logit_scale), logit_bias."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    size = model.config.vision_config.image_size
    with torch.no_grad():
        output = model.get_image_features(pixel_values=torch.zeros(1, 3, size, size))
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    bias = getattr(model, "logit_bias", None)
    return {"dim": int(features.shape[-1]), "scale": float(model.logit_scale.exp().item()),
            "bias": None if bias is None else float(bias.item())}


# -- Transformers checkpoints from a local folder ----------------------------------

@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_a_checkpoints_export_imports_with_its_dimension_and_its_own_scoring(
        family: str, request: pytest.FixtureRequest, tmp_path: Path, photos: Path) -> None:
    folder: Path = request.getfixturevalue(f"hf_{family}_dir")
    model = f"hf:{folder}"
    reference = _hf_reference(folder)
    with Index.open(tmp_path / "idx", model=model, create=True) as index:
        index.add(photos)
    original = _classify(tmp_path / "idx", model=model)

    _export_and_import(tmp_path / "idx", tmp_path / "export", tmp_path / "imported", "--model", model)
    record = _imported_record(tmp_path / "imported", model=model)
    assert record.dim == reference["dim"] and record.rows == 12
    assert record.logit_scale == pytest.approx(reference["scale"], rel=1e-6)
    if family == "siglip":
        assert record.logit_bias == pytest.approx(reference["bias"], abs=1e-6) == -1.0
    else:
        assert record.logit_bias is None and reference["bias"] is None

    imported = _classify(tmp_path / "imported", model=model)
    assert imported.scoring == original.scoring == (SIGMOID if family == "siglip" else SOFTMAX)
    assert sorted(imported.paths) == sorted(original.paths)
    np.testing.assert_allclose(_by_path(imported), _by_path(original), atol=MAX_PROB_CHANGE)


def test_the_dimension_is_the_width_of_get_image_features(tmp_path: Path, hf_clip_dir: Path) -> None:
    """CLIP projects images to projection_dim; SigLIP's image vector is its vision tower's width
    (here unlike its text tower's), and a width config.json leaves out is the class default."""
    import torch
    from transformers import CLIPConfig, SiglipConfig, SiglipModel

    from tests.hf_checkpoints import TINY_TEXT, TINY_VISION

    assert embedding_dim(resolve_model(f"hf:{hf_clip_dir}")) == _hf_reference(hf_clip_dir)["dim"] == 16

    config = SiglipConfig(text_config=dict(TINY_TEXT, vocab_size=64, projection_size=48),
                          vision_config=dict(TINY_VISION, hidden_size=48, image_size=32, patch_size=16))
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(tmp_path / "wide")
    assert embedding_dim(resolve_model(f"hf:{tmp_path / 'wide'}")) == _hf_reference(tmp_path / "wide")["dim"] == 48

    defaults = {"clip": CLIPConfig().projection_dim, "siglip": SiglipConfig().vision_config.hidden_size}  # type: ignore[union-attr]
    assert defaults == HF_DEFAULT_DIMS
    bare = tmp_path / "bare"
    shutil.copytree(hf_clip_dir, bare)
    config_json = json.loads((bare / "config.json").read_text())
    del config_json["projection_dim"]
    (bare / "config.json").write_text(json.dumps(config_json))
    assert embedding_dim(resolve_model(f"hf:{bare}")) == HF_DEFAULT_DIMS["clip"]


# -- a hub name: through the Hugging Face cache, or not on this machine -------------

@contextlib.contextmanager
def _warnings(logger: str) -> Iterator[list[str]]:
    """The warnings ``logger`` logs meanwhile (caught on the logger itself: the CLI keeps
    clipdex's logs from propagating to pytest's handler)."""
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(logger).addHandler(handler)
    try:
        yield seen
    finally:
        logging.getLogger(logger).removeHandler(handler)


def test_a_hub_checkpoint_imports_with_its_scoring_from_the_cache_or_says_what_it_lacks(
        tmp_path: Path, photos: Path, hub_cache: Path, hf_siglip_dir: Path) -> None:
    repo = "clipdex/tiny-siglip"
    model = f"hf:{repo}"
    reference = _hf_reference(hf_siglip_dir)
    cached = cache_repo(hub_cache, repo, hf_siglip_dir)
    with Index.open(tmp_path / "idx", model=model, create=True) as index:
        index.add(photos)
    _export_and_import(tmp_path / "idx", tmp_path / "export", tmp_path / "imported", "--model", model)
    record = _imported_record(tmp_path / "imported", model=model)
    assert (record.key, record.dim) == (model, reference["dim"])
    assert record.logit_scale == pytest.approx(reference["scale"], rel=1e-6)
    assert record.logit_bias == pytest.approx(reference["bias"], abs=1e-6)

    # The checkpoint is not on this machine: clipdex's export says the dimension, and the
    # import warns that its scoring is CLIP's until the model is here.
    shutil.rmtree(cached)
    with _warnings("clipdex.interchange") as warnings:
        result = run_cli("import", str(tmp_path / "export"), "--index", str(tmp_path / "elsewhere"), "--model", model)
    assert result.exit_code == 0, result.output
    record = _imported_record(tmp_path / "elsewhere", model=model)
    assert (record.dim, record.rows, record.logit_scale, record.logit_bias) == (reference["dim"], 12, 100.0, None)
    (warning,) = warnings
    assert model in warning and "not on this machine" in warning
    assert "softmax at scale 100" in warning and "SigLIP" in warning

    # Without clipdex's manifest (clip-retrieval's own output) nothing says the dimension.
    (tmp_path / "export" / MANIFEST_NAME).unlink()
    result = run_cli("import", str(tmp_path / "export"), "--index", str(tmp_path / "third"), "--model", model,
                     catch_exceptions=True)
    assert result.exit_code != 0
    assert "config.json" in result.output and f"hf download {repo}" in result.output
    assert not (tmp_path / "third" / "catalog.sqlite").exists()

    cache_repo(hub_cache, repo, hf_siglip_dir)  # the model arrives: its first classification scores as its own
    assert _classify(tmp_path / "elsewhere", model=model).scoring == SIGMOID
    record = _imported_record(tmp_path / "elsewhere", model=model)
    assert record.logit_bias == pytest.approx(reference["bias"], abs=1e-6)
    assert record.logit_scale == pytest.approx(reference["scale"], rel=1e-6)


# -- open_clip models with SigLIP's bias, as safetensors ---------------------------

@pytest.fixture(scope="module")
def sigmoid_open_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny open_clip CLIP with a logit_bias (random weights): its config, and its weights
    as safetensors and as a torch pickle."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("sigmoid-open-clip")
    config_path, model = make_sigmoid_open_clip(folder, OPEN_CLIP_NAME, OPEN_CLIP_BIAS, seed=1)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(20.0)))  # not 100: a scale read is told from the default
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "open_clip_model.safetensors")
    torch.save(state, folder / f"{OPEN_CLIP_NAME}.pt")
    return {"config": str(config_path), "safetensors": folder / "open_clip_model.safetensors",
            "pt": folder / f"{OPEN_CLIP_NAME}.pt", "scale": float(model.logit_scale.exp().item()),
            "bias": float(model.logit_bias.item())}


def test_an_open_clip_sigmoid_model_in_safetensors_imports_with_its_bias(
        tmp_path: Path, photos: Path, sigmoid_open_clip: dict[str, Any]) -> None:
    model = {"model_config": sigmoid_open_clip["config"], "weights": str(sigmoid_open_clip["safetensors"])}
    with Index.open(tmp_path / "idx", create=True, **model) as index:
        index.add(photos)
    original = _classify(tmp_path / "idx", **model)
    assert original.scoring == SIGMOID

    _export_and_import(tmp_path / "idx", tmp_path / "export", tmp_path / "imported",
                       "--model-config", model["model_config"], "--weights", model["weights"])
    record = _imported_record(tmp_path / "imported", **model)
    assert record.dim == 32
    assert record.logit_scale == pytest.approx(sigmoid_open_clip["scale"], rel=1e-6)
    assert record.logit_bias == pytest.approx(sigmoid_open_clip["bias"], abs=1e-6) == OPEN_CLIP_BIAS
    imported = _classify(tmp_path / "imported", **model)
    assert imported.scoring == SIGMOID
    np.testing.assert_allclose(_by_path(imported), _by_path(original), atol=MAX_PROB_CHANGE)


def test_the_scoring_is_read_from_every_kind_of_weights_file(tmp_path: Path, sigmoid_open_clip: dict[str, Any],
                                                               hf_siglip_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    expected = (pytest.approx(sigmoid_open_clip["scale"], rel=1e-6), pytest.approx(OPEN_CLIP_BIAS, abs=1e-6))
    for path in (sigmoid_open_clip["safetensors"], sigmoid_open_clip["pt"]):
        assert scoring_params(ModelSpec(name="m", arch=OPEN_CLIP_NAME, weights=str(path))) == expected

    # bfloat16 (numpy has none) and a DataParallel prefix
    bf16 = tmp_path / "bf16.safetensors"
    save_file({"module.logit_scale": torch.tensor(np.log(20.0), dtype=torch.bfloat16),
               "module.logit_bias": torch.tensor([-10.0], dtype=torch.bfloat16)}, bf16)
    scale, bias = scoring_params(ModelSpec(name="m", arch=OPEN_CLIP_NAME, weights=str(bf16)))
    assert scale == pytest.approx(20.0, rel=1e-2) and bias == -10.0

    # A sharded Transformers checkpoint: its index names the shard that holds each
    sharded = tmp_path / "sharded"
    shutil.copytree(hf_siglip_dir, sharded)
    from safetensors import safe_open

    with safe_open(str(sharded / "model.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __contains__)
    (sharded / "model.safetensors").unlink()
    head = {k: v for k, v in tensors.items() if not k.startswith("logit_")}
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    save_file(head, sharded / first)
    save_file({k: v for k, v in tensors.items() if k not in head}, sharded / second)
    weight_map = {k: first if k in head else second for k in tensors}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    reference = _hf_reference(hf_siglip_dir)
    assert scoring_params(resolve_model(f"hf:{sharded}")) == (pytest.approx(reference["scale"], rel=1e-6),
                                                              pytest.approx(reference["bias"], abs=1e-6))


def test_an_open_clip_hub_model_is_scored_from_the_file_in_the_hf_cache(
        tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch, sigmoid_open_clip: dict[str, Any]) -> None:
    """An ARCH/TAG whose weights open_clip downloads from the hub: the HF cache's safetensors."""
    import open_clip.pretrained

    repo = "clipdex/tiny-open-clip-sigmoid"
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, OPEN_CLIP_NAME, {"test": {"hf_hub": f"{repo}/"}})
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(sigmoid_open_clip["safetensors"], weights)
    cache_repo(hub_cache, repo, weights)
    spec = resolve_model(f"{OPEN_CLIP_NAME}/test")
    assert (spec.weights, spec.pretrained) == (None, "test")
    assert scoring_params(spec) == (pytest.approx(sigmoid_open_clip["scale"], rel=1e-6),
                                    pytest.approx(OPEN_CLIP_BIAS, abs=1e-6))
