"""bf16 on the CPU through OpenVINO: vectors against ONNX Runtime's fp32, and the refusals
(no native bf16, OpenVINO not installed) that say what to do instead."""

from __future__ import annotations

import numpy as np
import pytest

from clipdex.errors import ModelError
from clipdex.models.factory import make_encoder
from clipdex.models.precision import CpuFeatures, cpu_features
from clipdex.models.registry import ModelSpec, resolve_model
from clipdex.models.runtimes.onnx import OnnxEncoder
from clipdex.models.runtimes.openvino import openvino_missing
from tests.images import photo

TEXTS = ["dog", "dog in the snow", "a photo taken at dusk"]
NO_BF16 = CpuFeatures("Test CPU 9000", frozenset({"avx2", "avx512f"}))


def _native_bf16() -> str | None:
    """Why bf16 cannot run natively here (None when it can): OpenVINO's word is final."""
    if openvino_missing():
        return f"openvino is not installed: {openvino_missing()}"
    from clipdex.models.runtimes.openvino import openvino_bf16

    if not cpu_features().native_bf16 or not openvino_bf16():
        return f"this CPU, {cpu_features().describe()}, has no native bf16 (AVX512_BF16 or AMX)"
    return None


needs_bf16 = pytest.mark.skipif(_native_bf16() is not None, reason=str(_native_bf16()))


@pytest.fixture()
def spec(tiny_model) -> ModelSpec:
    config, weights = tiny_model
    return resolve_model(None, weights, config)


@needs_bf16
def test_bf16_vectors_agree_with_onnx_fp32(spec: ModelSpec) -> None:
    bf16 = make_encoder(spec, device="cpu", precision="bf16")
    fp32 = OnnxEncoder(spec, "fp32")
    assert (bf16.backend, bf16.precision, bf16.device) == ("openvino", "bf16", "cpu")
    images = [photo(seed) for seed in range(6)]
    pixels = np.stack([bf16.preprocess(im) for im in images])
    assert pixels.dtype == np.uint8 and pixels.shape == (6, bf16.image_size, bf16.image_size, 3)
    ours, exact = bf16.encode_images(pixels), fp32.encode_images(pixels)
    assert ours.dtype == np.float32 and ours.shape == (6, fp32.dim)
    assert np.abs(np.linalg.norm(ours, axis=1) - 1).max() < 1e-5
    assert np.sum(ours * exact, axis=1).min() >= 0.999
    assert np.array_equal(bf16.encode_pil(images[:2]), bf16.encode_images(pixels[:2]))
    # Texts stay fp32: a query is the same vector whatever precision indexed the photos.
    assert np.array_equal(bf16.encode_texts(TEXTS), fp32.encode_texts(TEXTS))
    assert (bf16.dim, bf16.logit_scale, bf16.preprocess_config) == (fp32.dim, fp32.logit_scale,
                                                                    fp32.preprocess_config)


@needs_bf16
def test_openvino_runs_in_bf16_not_a_silent_f32(spec: ModelSpec) -> None:
    encoder = make_encoder(spec, device="cpu", precision="bf16").load()
    hint = encoder._visual().get_property("INFERENCE_PRECISION_HINT")  # type: ignore[attr-defined]
    assert hint.get_type_name() == "bf16"


def test_bf16_is_refused_on_a_cpu_without_native_bf16(spec: ModelSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clipdex.models.runtimes.openvino.cpu_features", lambda: NO_BF16)
    with pytest.raises(ModelError) as caught:
        make_encoder(spec, device="cpu", precision="bf16")
    message = str(caught.value)
    assert "Test CPU 9000" in message and "no native bf16" in message
    assert all(f"--precision {p}" in message for p in ("fp32", "int8", "auto"))


@needs_bf16
def test_bf16_is_refused_when_openvino_finds_no_bf16(spec: ModelSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/cpuinfo says yes, OpenVINO says no: OpenVINO decides what it would really run."""
    monkeypatch.setattr("clipdex.models.runtimes.openvino.openvino_bf16", lambda core=None: False)
    encoder = make_encoder(spec, device="cpu", precision="bf16")
    with pytest.raises(ModelError, match=r"OpenVINO finds that this processor, .*, has no native bf16") as caught:
        encoder.load()
    assert all(f"--precision {p}" in str(caught.value) for p in ("fp32", "int8", "auto"))


def test_bf16_without_openvino_says_how_to_install_it(spec: ModelSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clipdex.models.runtimes.openvino.cpu_features",
                        lambda: CpuFeatures("Test CPU 9000", frozenset({"avx512_bf16"})))
    monkeypatch.setattr("clipdex.models.runtimes.openvino.openvino_missing", lambda: "No module named 'openvino'")
    with pytest.raises(ModelError, match=r"pip install 'clipdex\[openvino\]'"):
        make_encoder(spec, device="cpu", precision="bf16")


def test_bench_rows_for_bf16_and_auto_name_the_runtime_and_the_cpu(spec: ModelSpec,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdex import benchmark

    monkeypatch.setattr(benchmark, "MIN_SECONDS", 0.0)
    result = benchmark.run_bench(spec, ["cpu"], [2], ["fp32", "bf16", "auto"], photos=4)
    assert result.features == cpu_features().describe() and result.photos == 4
    rows = {r.precision: r for r in result.rows}
    assert rows["fp32"].backend == "onnx" and rows["fp32"].images_per_second > 0
    assert rows["auto"].chosen in ("fp32", "bf16") and rows["auto"].reason.startswith(rows["auto"].chosen)
    if _native_bf16() is None:
        assert rows["bf16"].backend == "openvino" and rows["bf16"].images_per_second > 0
    else:
        assert rows["bf16"].error and rows["bf16"].images_per_second == 0


@needs_bf16
def test_a_compile_failure_is_a_model_error_that_says_what_to_do(spec: ModelSpec,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO raises RuntimeError for anything (memory, a damaged file): clipdex says which
    model, which file, and what to use instead."""
    import openvino

    def fail(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("Exception from src/inference: out of memory\nmore detail")

    encoder = make_encoder(spec, device="cpu", precision="bf16")
    encoder._onnx._ensure_meta()  # type: ignore[attr-defined]  # the export exists first
    monkeypatch.setattr(openvino.Core, "compile_model", fail)
    with pytest.raises(ModelError, match=r"OpenVINO could not compile .*RuntimeError: Exception from "
                                         r"src/inference: out of memory\. Use --precision fp32 or int8"):
        encoder.load()
