"""The contract every runtime keeps, checked the same way for each one the factory lists.

Each runtime of :data:`clipdex.models.factory.RUNTIMES` is built through the factory for
every model family it runs (a tiny open_clip model, a tiny Transformers CLIP and SigLIP
checkpoint), on the CPU, and must: describe itself truly, report the model's facts, take
any PIL image, give unit float32 vectors of the model's dimension for images and texts
(empty inputs too), give the same vectors for the same input (also from two threads at
once), and agree with the family's torch fp32 vectors (cosine >= 0.999; int8 >= 0.99).
A new runtime gets all of this by being listed in the factory.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clipdex.errors import ModelError
from clipdex.models import factory
from clipdex.models.encoder import Encoder, Runtime
from clipdex.models.precision import INT8_MIN_COSINE, cpu_features
from clipdex.models.registry import ModelSpec, resolve_model
from tests.images import photo

TEXTS = ["a dog in the snow", "DUSK over the sea!", "", "a photo of " + "many " * 100 + "words", "café"]
# One model of each family (a fixture name each); hf models come as save_pretrained folders.
MODELS = {"open_clip": "tiny_model", "hf-clip": "hf_clip_dir", "hf-siglip": "hf_siglip_dir"}
FAMILY_OF = {"open_clip": "open_clip", "hf-clip": "hf", "hf-siglip": "hf"}
TORCH_OF = {"open_clip": "torch", "hf": "transformers"}  # each family's reference runtime


def _cases() -> Iterator[Any]:
    for runtime in factory.runtimes():
        for model, family in FAMILY_OF.items():
            if family not in runtime.families:
                continue
            for precision in runtime.precisions.get("cpu", ()):
                if runtime.fits(family, "cpu", precision):
                    yield pytest.param((runtime.name, model, precision), id=f"{runtime.name}-{model}-{precision}")


def _spec(request: pytest.FixtureRequest, model: str) -> ModelSpec:
    made = request.getfixturevalue(MODELS[model])
    if model == "open_clip":
        config, weights = made
        return resolve_model(None, weights, config)
    return resolve_model(f"hf:{made}")


def _runtime(name: str) -> Runtime:
    return factory.runtime_named(name)


@pytest.fixture()
def built(request: pytest.FixtureRequest) -> tuple[Encoder, Encoder, ModelSpec]:
    """(the runtime's encoder, the family's torch fp32 reference, the spec)."""
    runtime, model, precision = request.param
    spec = _spec(request, model)
    if runtime == "openvino" and not _native_bf16():
        # Where the CPU has no native bf16 the factory refuses it (tested in test_openvino.py);
        # the contract is then checked on OpenVINO's fp32, the same runtime and graph.
        from clipdex.models.runtimes.openvino import OpenVinoEncoder

        encoder: Encoder = OpenVinoEncoder(spec, "fp32")
    else:
        encoder = factory.make_encoder(spec, device="cpu", precision=precision, runtime=runtime)
    reference = factory.make_encoder(spec, device="cpu", precision="fp32", runtime=TORCH_OF[spec.family])
    return encoder, reference, spec


def _native_bf16() -> bool:
    from clipdex.models.runtimes.openvino import openvino_bf16, openvino_missing

    return cpu_features().native_bf16 and openvino_missing() is None and openvino_bf16()


def _images() -> list[Image.Image]:
    """Odd sizes, both orientations, and modes other than RGB."""
    return [photo(1, 197, 121), photo(2, 90, 200), photo(3, 128, 128).convert("L"),
            photo(4, 160, 100).convert("RGBA"), photo(5, 99, 177).convert("CMYK")]


def _unit(vectors: np.ndarray, rows: int, dim: int) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (rows, dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def _bar(precision: str) -> float:
    return INT8_MIN_COSINE if precision == "int8" else 0.999


@pytest.mark.parametrize("built", list(_cases()), indirect=True)
def test_every_runtime_keeps_the_encoder_contract(built: tuple[Encoder, Encoder, ModelSpec]) -> None:
    encoder, reference, spec = built
    runtime = _runtime(encoder.backend)
    assert encoder.load() is encoder
    assert encoder.spec == spec and encoder.device == "cpu"
    assert runtime.fits(spec.family, "cpu", encoder.precision) or encoder.backend == "openvino"
    # Device tensors are for runtimes that run on an accelerator (the indexer hands GPU-decoded JPEGs
    # to them as they are); a CPU-only runtime takes numpy.
    assert encoder.device_tensors is (set(runtime.devices) != {"cpu"})

    # The model's facts, as its reference reports them.
    assert encoder.dim == reference.dim > 0
    assert encoder.image_size == encoder.preprocess_config.image_size == reference.image_size
    assert encoder.preprocess_config == reference.preprocess_config
    assert encoder.logit_scale == pytest.approx(reference.logit_scale, rel=1e-5)
    assert encoder.logit_bias == (None if reference.logit_bias is None else pytest.approx(reference.logit_bias))

    # Images: any PIL mode and size; a stack of preprocess() outputs; nothing at all.
    images = _images()
    pixels = np.stack([encoder.preprocess(im) for im in images])
    vectors = encoder.encode_images(pixels)
    _unit(vectors, len(images), encoder.dim)
    assert np.allclose(encoder.encode_pil(images), vectors, atol=1e-5)
    _unit(encoder.encode_pil([]), 0, encoder.dim)
    expected = reference.encode_pil(images)
    assert np.min(np.sum(vectors * expected, axis=1)) >= _bar(encoder.precision)

    # Texts: the same tokens as the reference's tokenizer give the same vectors.
    texts = encoder.encode_texts(TEXTS)
    _unit(texts, len(TEXTS), encoder.dim)
    _unit(encoder.encode_texts([]), 0, encoder.dim)
    assert np.min(np.sum(texts * reference.encode_texts(TEXTS), axis=1)) >= 0.999

    # The same input, the same vectors: again, and from two threads at once.
    assert np.allclose(encoder.encode_images(pixels), vectors, atol=1e-6)
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: encoder.encode_images(pixels), range(2)))
    assert all(np.allclose(v, vectors, atol=1e-6) for v in both)


def test_the_factory_prefers_the_fast_cpu_runtimes_and_torch_on_gpus(tiny_model: tuple[Any, Any]) -> None:
    spec = resolve_model(None, tiny_model[1], tiny_model[0])
    hf = ModelSpec(name="hf:owner/name", arch="hf", pretrained="owner/name", family="hf")
    assert factory.pick_runtime(spec, "cpu", "fp32").name == "onnx"
    assert factory.pick_runtime(spec, "cpu", "int8").name == "onnx"
    assert factory.pick_runtime(spec, "cpu", "bf16").name == "openvino"
    assert factory.pick_runtime(hf, "cpu", "bf16").name == "openvino"
    assert factory.pick_runtime(spec, "cuda:1", "fp16").name == "torch"
    assert factory.pick_runtime(hf, "cuda", "bf16").name == "transformers"
    assert factory.pick_runtime(hf, "mps", "fp32").name == "transformers"


def test_the_factory_says_what_runs_where_nothing_fits(tiny_model: tuple[Any, Any]) -> None:
    spec = resolve_model(None, tiny_model[1], tiny_model[0])
    refusal = (r"fp16 is not available for .* on the CPU; use fp32 \(ONNX Runtime or torch \(open_clip\)\), "
               r"int8 \(ONNX Runtime\), bf16 \(OpenVINO\).* fp16 needs a GPU")
    with pytest.raises(ModelError, match=refusal):
        factory.pick_runtime(spec, "cpu", "fp16")
    with pytest.raises(ModelError, match=r"int8 is not available .* on cuda.*int8 runs on the CPU"):
        factory.pick_runtime(spec, "cuda", "int8")
    with pytest.raises(ModelError, match=r"OpenVINO does not run .* in fp32"):
        factory.pick_runtime(spec, "cpu", "fp32", runtime="openvino")
    with pytest.raises(ModelError, match=r"unknown runtime 'coreml'; use one of onnx, openvino, torch"):
        factory.pick_runtime(spec, "cpu", "fp32", runtime="coreml")
    with pytest.raises(ModelError, match=r"unknown precision 'fp8'"):
        factory.pick_runtime(spec, "cpu", "fp8")


def test_every_runtime_module_is_listed_once_and_names_itself() -> None:
    import pkgutil

    import clipdex.models.runtimes as package

    modules = {f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
               if not m.name.startswith("_")}
    assert sorted(factory.RUNTIMES) == sorted(modules)
    names = [r.name for r in factory.runtimes()]
    assert len(set(names)) == len(names)
