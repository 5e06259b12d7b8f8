"""The OpenVINO encoder: the image tower in bf16 on CPUs that compute bf16 natively.

It runs the same exported image tower as :class:`~clipdex.models.runtimes.onnx.OnnxEncoder`
(clipdex's ``visual-fp32.onnx``: 8-bit NHWC pixels in, normalised inside the graph; or a
ready export's, fed as its graph declares),
compiled by OpenVINO with ``INFERENCE_PRECISION_HINT=bf16``: matrix multiplies
in bfloat16 on AVX512_BF16 or AMX, about twice the speed of fp32, cosine to
fp32 vectors >= 0.9999 on ViT-B-32. Texts (one query at a time, where speed does
not matter) stay in fp32 through ONNX Runtime, so queries are the same vectors
whichever precision indexed the photos.

OpenVINO reads the ONNX file and compiles it in each process (about 1 s for
ViT-B-32). Its model cache (CACHE_DIR) would save 0.8 s of that but keeps a
second copy of the weights (336 MB for ViT-B-32), so it is not used.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.errors import ModelError, first_line
from clipdex.models.encoder import Encoder, Runtime, encode_pil
from clipdex.models.precision import cpu_features, no_native_bf16, require
from clipdex.models.preprocess import PreprocessConfig, check_pixels
from clipdex.models.registry import ModelSpec
from clipdex.models.runtimes.onnx import OnnxEncoder

if TYPE_CHECKING:
    from PIL import Image

# clipdex's precision -> OpenVINO's inference precision (fp32 is kept for comparisons).
OPENVINO_PRECISIONS = {"bf16": "bf16", "fp32": "f32"}
# Measured on ViT-B-32 at the indexer's batch of 16: one stream on every core (LATENCY)
# is as fast as THROUGHPUT's streams with the batch split between them, and simpler;
# CPU pinning (OpenVINO's default) on or off makes no difference to `clipdex index`.
COMPILE_CONFIG: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
INSTALL_HINT = "pip install 'clipdex[openvino]'"


def _build(spec: ModelSpec, precision: str, device: str) -> Encoder:
    """bf16 on the CPU where the processor computes it natively; refused where it would be
    emulated (slower than fp32), or where OpenVINO is not installed, with what to use instead."""
    cpu = cpu_features()
    if not cpu.maybe_bf16:  # flags unknown (not Linux or macOS): OpenVINO's own report decides
        raise ModelError(no_native_bf16(f"this processor, {cpu.describe()},"))
    missing = openvino_missing()
    if missing:
        raise ModelError(missing_message(precision, missing))
    return OpenVinoEncoder(spec, precision)


RUNTIME = Runtime("openvino", "OpenVINO", families=("open_clip", "hf", "onnx"), precisions={"cpu": ("bf16",)},
                  build=_build)


def openvino_missing() -> str | None:
    """None when openvino imports, else why not (a broken install raises more than ImportError)."""
    try:
        import openvino  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return first_line(e)
    return None


def missing_message(precision: str, missing: str) -> str:
    """What to do when OpenVINO cannot be imported (``missing``: why)."""
    return (f"{precision} on the CPU runs through OpenVINO, which is not installed ({missing}). "
            f"Install it with `{INSTALL_HINT}` (a 60 MB download), or use --precision fp32 or int8.")


def openvino_bf16(core: Any = None) -> bool:
    """Whether OpenVINO itself says this CPU computes bf16 natively (its own
    OPTIMIZATION_CAPABILITIES, which decide what it really runs)."""
    import openvino

    core = core or openvino.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoEncoder:
    """:class:`~clipdex.models.encoder.Encoder` with images through OpenVINO, texts through ONNX Runtime."""

    backend = "openvino"
    device_tensors = False

    def __init__(self, spec: ModelSpec, precision: str = "bf16", threads: int | None = None) -> None:
        require(precision, OPENVINO_PRECISIONS, "OpenVINO")
        self.spec = spec
        self.precision = precision
        self.device = "cpu"
        self.threads = threads
        self._lock = threading.Lock()
        self._compiled: Any = None
        # The export, its facts and texts: all shared with the fp32 ONNX encoder.
        self._onnx = OnnxEncoder(spec, "fp32", threads=threads)

    # -- building -------------------------------------------------------------
    def load(self) -> "OpenVinoEncoder":
        """Export (once per model) and compile the image tower now."""
        self._visual()
        return self

    def _visual(self) -> Any:
        if self._compiled is None:
            with self._lock:
                if self._compiled is None:
                    self._compiled = self._compile()
        return self._compiled

    def _compile(self) -> Any:
        missing = openvino_missing()
        if missing:
            raise ModelError(missing_message(self.precision, missing))
        import openvino

        path = self._onnx.visual_path()  # finds (or exports) the model on its first use
        core = openvino.Core()
        if self.precision == "bf16" and not openvino_bf16(core):
            raise ModelError(no_native_bf16(f"OpenVINO finds that this processor, {cpu_features().describe()},"))
        config = {**COMPILE_CONFIG, "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[self.precision]}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            compiled = core.compile_model(str(path), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError for anything: memory, a bad file
            raise ModelError(f"OpenVINO could not compile {self.spec.name} ({path}) in {self.precision}: "
                             f"{first_line(e)}. "
                             "Use --precision fp32 or int8; if the file is damaged, delete "
                             f"{path.parent} and it is exported (or downloaded) again.") from e
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        ran = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        if ran != OPENVINO_PRECISIONS[self.precision]:  # OpenVINO falls back to f32 silently
            raise ModelError(f"OpenVINO compiled {self.spec.name} in {ran}, not {self.precision}, on "
                             f"{cpu_features().describe()}. Use --precision fp32 or int8.")
        return compiled

    # -- facts ----------------------------------------------------------------
    @property
    def source(self) -> str:
        return self._onnx.source

    @property
    def scoring_unknown(self) -> bool:
        return self._onnx.scoring_unknown

    @property
    def dim(self) -> int:
        return self._onnx.dim

    @property
    def image_size(self) -> int:
        return self._onnx.image_size

    @property
    def logit_scale(self) -> float:
        return self._onnx.logit_scale

    @property
    def logit_bias(self) -> float | None:
        return self._onnx.logit_bias

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._onnx.preprocess_config

    # -- encoding -------------------------------------------------------------
    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """(H, W, 3) uint8, resized and cropped; the exported model normalises."""
        return self._onnx.preprocess(image)

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """L2-normalised float32 vectors for a stack of :meth:`preprocess` outputs.

        Normalised again here, in float32: where OpenVINO runs the graph's own
        normalisation in bf16, norms come out off by up to about 1e-3."""
        check_pixels(batch)
        compiled = self._visual()
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        pixels = self._onnx.export.pixel_feed(batch)
        # A request per call: encode_images may be called from several threads.
        request = compiled.create_infer_request()
        shape = compiled.inputs[0].get_partial_shape()
        if shape.rank.is_static and shape[0].is_static and shape[0].get_length() == 1:  # a batch of one only
            rows = [np.array(request.infer([pixels[i:i + 1]])[0], np.float32) for i in range(len(pixels))]
            vectors = np.concatenate(rows)
        else:
            vectors = np.array(request.infer([pixels])[0], dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def encode_pil(self, images: Sequence["Image.Image"]) -> np.ndarray:
        return encode_pil(self, images)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts in fp32 through ONNX Runtime: the same query vectors as the fp32 path."""
        return self._onnx.encode_texts(texts)
