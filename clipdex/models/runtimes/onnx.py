"""The ONNX Runtime encoder: a model's towers exported once, then run without torch.

The export (:mod:`clipdex.models.onnx_export`) is made on a model's first use
on the CPU; fp32 is exact, int8 is the image tower quantised dynamically.
Texts run through the exported text tower with a tokenizer that needs no torch
(CLIP's BPE, or the checkpoint's own tokenizer.json through the ``tokenizers``
library); a model whose tokenizer only its own library has encodes texts
through its torch runtime.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipdex.errors import ModelError, first_line
from clipdex.models.encoder import TEXT_BATCH, Encoder, Runtime, encode_pil
from clipdex.models.onnx_export import TEXT_FILE, VISUAL_FILES, export_dir
from clipdex.models.onnx_export import ensure_exported as ensure_export
from clipdex.models.precision import require
from clipdex.models.preprocess import PreprocessConfig, check_pixels, fit
from clipdex.models.registry import ModelSpec
from clipdex.models.runtimes import FAMILY_RUNTIMES

ONNX_PRECISIONS = ("fp32", "int8")
TextFeeds = Callable[[Sequence[str]], dict[str, np.ndarray]]


def _build(spec: ModelSpec, precision: str, device: str) -> Encoder:
    return OnnxEncoder(spec, precision)


RUNTIME = Runtime("onnx", "ONNX Runtime", families=("open_clip", "hf"), precisions={"cpu": ONNX_PRECISIONS},
                  build=_build)


def family_module(spec: ModelSpec) -> Any:
    """The torch runtime module of the spec's family (:data:`~clipdex.models.runtimes.FAMILY_RUNTIMES`,
    imported on first use): it exports the model (its ``export``), and encodes texts where the
    export has no tokenizer that runs without torch (its ``torch_encoder``)."""
    try:
        return importlib.import_module(FAMILY_RUNTIMES[spec.family])
    except KeyError:
        raise ModelError(f"model family {spec.family!r} of {spec.name} has no ONNX exporter; "
                         f"known: {', '.join(FAMILY_RUNTIMES)}") from None


def ensure_exported(spec: ModelSpec, precision: str = "fp32") -> dict[str, Any]:
    """The export of ``spec`` (its meta.json), made by its family's torch runtime where missing."""
    return ensure_export(spec, precision, family_module(spec).export)


def damaged_export(spec: ModelSpec, path: Path, error: Exception) -> ModelError:
    """The error for an export file that cannot be read (a disk that filled, a copy cut short)."""
    return ModelError(f"the ONNX export of {spec.name} is damaged: {path} cannot be read ({first_line(error)}). "
                      f"Delete {path.parent} and it is exported again on the next run.")


def text_feeds(folder: Path, meta: dict[str, Any]) -> TextFeeds | None:
    """Texts -> the exported text tower's inputs, without torch; None where the export
    has no such tokenizer (texts then go through the family's torch runtime)."""
    kind = meta.get("tokenizer")
    if kind == "clip-bpe":
        from clipdex.models.tokenizer import ClipTokenizer

        bpe = ClipTokenizer(meta["context_length"])
        trim = bool(meta.get("trim_tokens"))

        def feeds(texts: Sequence[str]) -> dict[str, np.ndarray]:
            tokens = bpe(list(texts))
            if trim:  # positions after the longest text's end change nothing (causal mask)
                tokens = tokens[:, :int((tokens != 0).sum(axis=1).max())]
            return {"tokens": tokens}

        return feeds
    if kind == "tokenizers":
        from clipdex.models.hf_tokenizer import HfTokenizer

        return HfTokenizer.from_export(folder, meta)
    return None


class OnnxEncoder:
    """:class:`~clipdex.models.encoder.Encoder` on ONNX Runtime (CPU)."""

    backend = "onnx"
    device_tensors = False

    def __init__(self, spec: ModelSpec, precision: str = "fp32", threads: int | None = None) -> None:
        require(precision, ONNX_PRECISIONS, "ONNX Runtime")
        self.spec = spec
        self.precision = precision
        self.device = "cpu"
        self.threads = threads
        self._lock = threading.Lock()
        self._meta: dict[str, Any] | None = None
        self._cfg: PreprocessConfig | None = None
        self._visual: Any = None
        self._text: Any = None
        self._feeds: TextFeeds | None = None
        self._torch_text: Any = None

    # -- building -------------------------------------------------------------
    def load(self) -> "OnnxEncoder":
        self._ensure_meta()
        self._visual_session()
        return self

    def _ensure_meta(self) -> dict[str, Any]:
        if self._meta is None:
            with self._lock:
                if self._meta is None:
                    self._meta = ensure_exported(self.spec, self.precision)
        assert self._meta is not None
        return self._meta

    def _session(self, name: str) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        path = export_dir(self.spec) / name
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's own errors (InvalidProtobuf, NoSuchFile, …)
            raise damaged_export(self.spec, path, e) from e

    def _visual_session(self) -> Any:
        self._ensure_meta()
        if self._visual is None:
            with self._lock:
                if self._visual is None:
                    self._visual = self._session(VISUAL_FILES[self.precision])
        return self._visual

    # -- facts ----------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._ensure_meta()["dim"])

    @property
    def image_size(self) -> int:
        return int(self._ensure_meta()["image_size"])

    @property
    def logit_scale(self) -> float:
        return float(self._ensure_meta()["logit_scale"])

    @property
    def logit_bias(self) -> float | None:
        bias = self._ensure_meta().get("logit_bias")
        return None if bias is None else float(bias)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        if self._cfg is None:  # read once: preprocess() asks for it for every photo
            self._cfg = PreprocessConfig.from_meta(self._ensure_meta())
        return self._cfg

    # -- encoding -------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(H, W, 3) uint8, resized and cropped; the exported model normalises."""
        cfg = self.preprocess_config
        if not cfg.supported:
            raise ModelError(f"resize mode {cfg.resize_mode!r} of {self.spec.name} is not supported "
                             "by the ONNX path; use --precision with --device cpu through torch.")
        return fit(image, cfg)

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        check_pixels(batch)
        session = self._visual_session()
        (vectors,) = session.run(None, {"pixels": np.ascontiguousarray(batch)})
        return np.asarray(vectors, dtype=np.float32)

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        return encode_pil(self, images)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        meta = self._ensure_meta()
        if self._text is None and self._torch_text is None:
            with self._lock:
                if self._text is None and self._torch_text is None:
                    try:
                        feeds = text_feeds(export_dir(self.spec), meta)
                    except Exception as e:  # the tokenizers library raises plain Exception for a bad file
                        raise damaged_export(self.spec, export_dir(self.spec) / "tokenizer.json", e) from e
                    if feeds is None:  # a tokenizer only the model's own library has
                        self._torch_text = family_module(self.spec).torch_encoder(self.spec, "cpu")
                    else:
                        self._feeds = feeds
                        self._text = self._session(TEXT_FILE)
        if self._torch_text is not None:
            return np.asarray(self._torch_text.encode_texts(texts), np.float32)
        assert self._feeds is not None
        out = [self._text.run(None, self._feeds(texts[i:i + TEXT_BATCH]))[0]
               for i in range(0, len(texts), TEXT_BATCH)]
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32)
