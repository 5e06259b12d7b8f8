"""The ONNX Runtime encoder: a model's towers exported once, then run without torch.

The export comes from :func:`clipdex.models.sources.find_export`: clipdex's cache (made on a
model's first use by its family's torch runtime, :mod:`clipdex.models.onnx_export`), a ready
export on the hub (Immich's repositories) or a folder written by ``clipdex models export``.
fp32 is exact; int8 is the image tower quantised dynamically, once. Texts run through the
exported text tower with a tokenizer that needs no torch (the export's tokenizer.json through
the ``tokenizers`` library, or CLIP's BPE over open_clip's vocabulary); a model whose tokenizer
only its own library has encodes texts through its torch runtime.

Towers are fed by what their graphs declare: input names, integer widths, and a batch axis
fixed at one (Immich's current exports) is met one item at a time.
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
from clipdex.models.bundle import Export
from clipdex.models.encoder import TEXT_BATCH, Encoder, Runtime, encode_pil
from clipdex.models.onnx_export import no_exporter
from clipdex.models.precision import require
from clipdex.models.preprocess import RESAMPLING, PreprocessConfig, check_pixels, fit
from clipdex.models.registry import ModelSpec
from clipdex.models.runtimes import FAMILY_RUNTIMES

ONNX_PRECISIONS = ("fp32", "int8")
TextFeeds = Callable[[Sequence[str]], dict[str, np.ndarray]]
ONNX_INTS = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}


def _build(spec: ModelSpec, precision: str, device: str) -> Encoder:
    return OnnxEncoder(spec, precision)


RUNTIME = Runtime("onnx", "ONNX Runtime", families=("open_clip", "hf", "onnx"), precisions={"cpu": ONNX_PRECISIONS},
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


def exporter_of(spec: ModelSpec) -> Any:
    """The family's torch exporter, or None where it cannot run here (torch or the family's
    library not installed: a light install, which runs ready exports only)."""
    from clipdex.models import optional

    if not optional.family_runs(spec.family):
        return None
    return family_module(spec).export


def find(spec: ModelSpec, precision: str = "fp32") -> Export:
    """The export to run ``spec`` from (:func:`clipdex.models.sources.find_export`)."""
    from clipdex.models.sources import find_export

    return find_export(spec, precision, exporter_of(spec))


def ensure_exported(spec: ModelSpec, precision: str = "fp32") -> dict[str, Any]:
    """The facts of the export of ``spec`` (its meta.json's), made where missing."""
    return find(spec, precision).meta


def damaged_export(spec: ModelSpec, path: Path, error: Exception) -> ModelError:
    """The error for an export file that cannot be read (a disk that filled, a copy cut short)."""
    return ModelError(f"the ONNX export of {spec.name} is damaged: {path} cannot be read ({first_line(error)}). "
                      f"Delete {path.parent} and it is exported again on the next run.")


def _clip_bpe_runs_here() -> bool:
    """Whether CLIP's BPE over open_clip's vocabulary can run (open_clip, ftfy and regex installed)."""
    from clipdex.models.optional import installed

    return all(installed(name) for name in ("open_clip", "ftfy", "regex"))


def text_feeds(export: Export) -> TextFeeds | None:
    """Texts -> the exported text tower's inputs, without torch; None where the export
    has no such tokenizer (texts then go through the family's torch runtime)."""
    meta = export.meta
    kind = meta.get("tokenizer")
    if kind == "clip-bpe" and (_clip_bpe_runs_here() or export.tokenizer is None):
        from clipdex.models.tokenizer import ClipTokenizer

        bpe = ClipTokenizer(meta["context_length"])
        trim = bool(meta.get("trim_tokens"))

        def feeds(texts: Sequence[str]) -> dict[str, np.ndarray]:
            tokens = bpe(list(texts))
            if trim:  # positions after the longest text's end change nothing (causal mask)
                tokens = tokens[:, :int((tokens != 0).sum(axis=1).max())]
            return {"tokens": tokens}

        return feeds
    if kind == "clip-bpe":  # no open_clip here: the same BPE, as the tokenizer.json written beside the export
        from clipdex.models.clip_bpe import PAD_ID, PAD_TOKEN
        from clipdex.models.hf_tokenizer import HfTokenizer

        assert export.tokenizer is not None
        padding = "longest" if meta.get("trim_tokens") else "max_length"
        return HfTokenizer(export.tokenizer, meta["context_length"], padding, PAD_ID, PAD_TOKEN, ("input_ids",))
    if kind == "tokenizers":
        from clipdex.models.hf_tokenizer import HfTokenizer

        return HfTokenizer.from_export(export.tokenizer.parent if export.tokenizer else export.root, meta)
    return None


class _Tower:
    """One ONNX Runtime session and how its graph wants to be fed."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = session.get_inputs()
        first = self.inputs[0].shape
        self.one_at_a_time = bool(first) and first[0] == 1  # a batch axis fixed at one

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = self._named(feeds)
        if not self.one_at_a_time:
            return np.asarray(self.session.run(None, feeds)[0], np.float32)
        rows = next(iter(feeds.values())).shape[0]
        out = [self.session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0] for i in range(rows)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def _named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` under the graph's input names and integer widths: a tower with one input takes
        the first feed ('pixels', 'input_ids', 'tokens') whatever the exporter named it."""
        names = [i.name for i in self.inputs]
        if set(names) <= set(feeds):
            chosen = {name: feeds[name] for name in names}
        elif len(names) == 1:
            chosen = {names[0]: next(iter(feeds.values()))}
        else:
            raise ModelError(f"an exported tower takes {', '.join(names)}; clipdex has {', '.join(feeds)} for it")
        for spec in self.inputs:
            width = ONNX_INTS.get(spec.type)
            if width is not None and chosen[spec.name].dtype != width:
                chosen[spec.name] = chosen[spec.name].astype(width)
        return chosen


def _normalised(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised rows in float32 (exports normalise already; one that does not is made to)."""
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


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
        self._export: Export | None = None
        self._cfg: PreprocessConfig | None = None
        self._visual: _Tower | None = None
        self._text: _Tower | None = None
        self._feeds: TextFeeds | None = None
        self._torch_text: Any = None

    # -- building -------------------------------------------------------------
    def load(self) -> "OnnxEncoder":
        self._visual_tower()
        return self

    @property
    def export(self) -> Export:
        """The export this encoder runs (found, fetched or made on first use)."""
        if self._export is None:
            with self._lock:
                if self._export is None:
                    self._export = find(self.spec, self.precision)
        return self._export

    def _ensure_meta(self) -> dict[str, Any]:
        return self.export.meta

    @property
    def source(self) -> str:
        """Where the model came from, in words (the index records the sources it has checked)."""
        return self.export.source

    def visual_path(self) -> Path:
        """The image tower of this encoder's precision (int8 quantised once where missing)."""
        export = self.export
        path = export.visual.get(self.precision)
        if path is None and self.precision == "int8":
            from clipdex.models.sources import int8_tower

            path = int8_tower(export)
        if path is None:
            raise ModelError(f"the export of {self.spec.name} ({export.source}) has no {self.precision} image tower.")
        return path

    def _session(self, path: Path) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's own errors (InvalidProtobuf, NoSuchFile, …)
            raise self._damaged(path, e) from e

    def _damaged(self, path: Path, error: Exception) -> ModelError:
        if self.export.origin == "cache":
            return damaged_export(self.spec, path, error)
        from clipdex.models.bundle import damaged

        return damaged(self.export, path, error)

    def _visual_tower(self) -> _Tower:
        if self._visual is None:
            path = self.visual_path()
            with self._lock:
                if self._visual is None:
                    self._visual = _Tower(self._session(path))
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
    def scoring_unknown(self) -> bool:
        """Whether the export keeps no scale and bias for a sigmoid model (Immich's SigLIP exports):
        its per-label probabilities cannot be computed (searching works)."""
        return bool(self._ensure_meta().get("scoring_unknown"))

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
            raise ModelError(f"{self.spec.name} preprocesses its photos with resize mode {cfg.resize_mode!r}, "
                             f"{cfg.interpolation!r} resampling and {cfg.crop_rounding!r} crop rounding, which "
                             "clipdex's decode workers do not reproduce (they do the shortest side or squash, "
                             f"with {', '.join(sorted(RESAMPLING))}). Run it through torch, which applies the model's "
                             "own transform: on a GPU (clipdex[torch], --device cuda), or pick another model.")
        return fit(image, cfg)

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        check_pixels(batch)
        tower = self._visual_tower()
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return _normalised(tower.run({"pixels": self.export.pixel_feed(batch)}))

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        return encode_pil(self, images)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        export = self.export
        if self._text is None and self._torch_text is None:
            with self._lock:
                if self._text is None and self._torch_text is None:
                    try:
                        feeds = text_feeds(export)
                    except Exception as e:  # the tokenizers library raises plain Exception for a bad file
                        raise self._damaged(export.tokenizer or export.root, e) from e
                    if feeds is None or export.text is None:  # a tokenizer only the model's own library has
                        self._torch_text = self._torch_texts()
                    else:
                        self._feeds = feeds
                        self._text = _Tower(self._session(export.text))
        if self._torch_text is not None:
            return np.asarray(self._torch_text.encode_texts(texts), np.float32)
        assert self._feeds is not None and self._text is not None
        out = [_normalised(self._text.run(self._feeds(texts[i:i + TEXT_BATCH])))
               for i in range(0, len(texts), TEXT_BATCH)]
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out)

    def _torch_texts(self) -> Any:
        if exporter_of(self.spec) is None:
            raise ModelError(no_exporter(self.spec, f"encoding texts with {self.spec.name} (its export has no "
                                                    "text tower that runs without torch)"))
        return family_module(self.spec).torch_encoder(self.spec, "cpu")
