"""Turn images and texts into L2-normalised vectors with an open_clip model.

Two encoders share one interface (:class:`Encoder`): :class:`TorchEncoder`
builds the model through open_clip's own factory
(``open_clip.create_model_and_transforms``), for GPUs and half precision;
:class:`~clipdex.models.onnx.OnnxEncoder` runs the same model exported to ONNX
on the CPU (the default there: faster, and no torch import for queries).
:func:`make_encoder` picks one. Models load on first use; importing this
module does not import torch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from clipdex.errors import ModelError
from clipdex.models.precision import CONCRETE, cpu_features, no_native_bf16
from clipdex.models.preprocess import PreprocessConfig, fit
from clipdex.models.registry import ModelSpec
from clipdex.models.weights import locate_weights, pretrained_config
from clipdex.settings import cache_dir, preferred_device

if TYPE_CHECKING:
    import torch
    from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_BATCH = 256  # prompts per forward pass of the text tower


class Encoder(Protocol):
    """What the indexer, search and classification need from a model."""

    spec: ModelSpec
    precision: str
    device: str
    backend: str

    def load(self) -> Any: ...

    @property
    def dim(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    @property
    def logit_scale(self) -> float: ...

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """One image as the model takes it: (H, W, 3) uint8, resized and cropped
        (normalising happens batched, in the model's graph or on its device), or
        (3, H, W) float32 already normalised where only open_clip's own transform
        can prepare it."""
        ...

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """L2-normalised float32 vectors for a stack of :meth:`preprocess` outputs (a torch
        encoder also takes them as a uint8 tensor already on its device: JPEGs decoded there)."""
        ...

    def encode_pil(self, images: Sequence["Image.Image"]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class LazyEncoder:
    """An encoder made on first use: an unchanged folder is re-indexed without importing torch."""

    def __init__(self, factory: Callable[[], Encoder]) -> None:
        self._factory = factory
        self._encoder: Encoder | None = None

    def __getattr__(self, name: str) -> Any:
        if self._encoder is None:
            self._encoder = self._factory()
        return getattr(self._encoder, name)


def make_encoder(spec: ModelSpec, *, device: str | None = None, precision: str | None = None,
                 for_queries: bool = False) -> Encoder:
    """The encoder for a job: ONNX Runtime on the CPU (fp32, int8), OpenVINO for bf16 on a
    CPU that computes it natively, torch elsewhere. ``precision`` is a concrete one
    (``auto`` is resolved first, by :mod:`clipdex.models.auto`).

    ``for_queries`` picks the CPU ONNX path without asking torch about GPUs
    (encoding one query is fast anywhere, and importing torch is not).
    """
    precision = precision or "fp32"
    if precision not in CONCRETE:
        raise ModelError(f"unknown precision {precision!r}; use one of {', '.join(CONCRETE)}.")
    if for_queries and device in (None, "cpu"):
        from clipdex.models.onnx import OnnxEncoder

        return OnnxEncoder(spec, "fp32")
    chosen = pick_device(device)
    if chosen == "cpu" and precision in ("fp32", "int8"):
        from clipdex.models.onnx import OnnxEncoder

        return OnnxEncoder(spec, precision)
    if chosen == "cpu" and precision == "bf16":
        return _cpu_bf16_encoder(spec)
    if precision == "int8":
        raise ModelError("int8 runs on the CPU through ONNX Runtime; use --device cpu, or fp16 on a GPU.")
    if precision == "fp16" and chosen == "cpu":
        raise ModelError("fp16 is for GPUs; on the CPU use fp32, int8 or bf16.")
    if precision == "bf16" and chosen.startswith("cuda"):
        _check_cuda_bf16(chosen)
    return TorchEncoder(spec, device=chosen, precision=precision)


def _check_cuda_bf16(device: str) -> None:
    """bf16 on a GPU without it in hardware (before Ampere: V100, T4) is emulated and slow:
    refused, with what to use instead."""
    import torch

    if not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ModelError(f"{torch.cuda.get_device_name(device)} has no native bf16 (it came with Ampere): "
                         "bf16 would be emulated and slow. Use --precision fp16 (as fast, native here), "
                         "fp32, or auto.")


def _cpu_bf16_encoder(spec: ModelSpec) -> Encoder:
    """bf16 on the CPU: OpenVINO where the processor computes bf16 natively; refused where
    it would be emulated (slower than fp32), with what to use instead."""
    cpu = cpu_features()
    if not cpu.maybe_bf16:  # flags unknown (not Linux or macOS): OpenVINO's own report decides
        raise ModelError(no_native_bf16(f"this processor, {cpu.describe()},"))
    from clipdex.models.openvino import OpenVinoEncoder, missing_message, openvino_missing

    missing = openvino_missing()
    if missing:
        raise ModelError(missing_message("bf16", missing))
    return OpenVinoEncoder(spec, "bf16")


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given, else CLIPDEX_DEVICE, else CUDA, then Apple MPS, then CPU.

    Asking torch costs its import (~2 s); on a machine with no GPU driver at all
    the answer is the CPU without asking.
    """
    wanted = requested or preferred_device()
    if wanted == "cpu" or (not wanted and not accelerator_possible()):
        return "cpu"
    import torch

    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"device {wanted!r} was asked for but CUDA is not available here. "
                             "Use --device cpu, or install a CUDA build of torch.")
        if wanted == "mps" and not torch.backends.mps.is_available():
            raise ModelError("device 'mps' was asked for but Apple MPS is not available here. "
                             "Use --device cpu.")
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def accelerator_possible() -> bool:
    """False only where no GPU can be: Linux with no NVIDIA, ROCm or WSL GPU
    device present (macOS may have MPS; elsewhere torch must be asked)."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia",
                                           "/dev/kfd", "/dev/dxg"))


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Make a custom architecture known to open_clip under ``name``."""
    import open_clip

    folder = cache_dir() / "model_configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    text = json.dumps(config, indent=2, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    open_clip.add_model_config(path)


class TorchEncoder:
    """A lazily built open_clip model with its preprocessing and tokenizer."""

    backend = "torch"

    def __init__(self, spec: ModelSpec, device: str | None = None, precision: str = "fp32") -> None:
        self.spec = spec
        self.precision = precision
        self._requested_device = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._preprocess: Callable[["Image.Image"], "torch.Tensor"] | None = None
        self._tokenizer: Any = None
        self._scale_shift: Any = None  # device tensors for 8-bit batches, made on first use
        self.device = ""

    # -- building -------------------------------------------------------------
    def load(self) -> "TorchEncoder":
        """Build the model now (it is otherwise built on first use)."""
        with self._lock:
            if self._model is None:
                self._build()
        return self

    def _build(self) -> None:
        import open_clip

        spec = self.spec
        if spec.config is not None:
            register_model_config(spec.arch, spec.config)
        elif spec.arch not in open_clip.list_models():
            raise ModelError(
                f"{spec.arch!r} is not an open_clip architecture. Pick one of "
                "open_clip.list_models(), or describe it with --model-config FILE.json."
            )
        cfg = pretrained_config(spec)
        checkpoint = locate_weights(spec)
        self.device = pick_device(self._requested_device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch,
                pretrained=checkpoint,
                device=self.device,
                force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                image_mean=cfg.get("mean"),
                image_std=cfg.get("std"),
                image_interpolation=cfg.get("interpolation"),
                image_resize_mode=cfg.get("resize_mode"),
            )
        except RuntimeError as e:
            raise ModelError(
                f"cannot load weights {checkpoint} into architecture {spec.arch!r}: "
                f"{str(e).splitlines()[0]}. Check that the file was saved from this "
                "architecture (or pass the matching --model / --model-config)."
            ) from e
        model.eval()
        if self.precision == "fp16":
            model = model.half()
        self._model = model
        self._preprocess = preprocess
        merged = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = model.visual.image_size
        self._cfg = PreprocessConfig(
            int(size[0] if isinstance(size, (tuple, list)) else size),
            tuple(merged.get("mean") or OPENAI_MEAN),  # type: ignore[arg-type]
            tuple(merged.get("std") or OPENAI_STD),  # type: ignore[arg-type]
            merged.get("interpolation") or "bicubic", merged.get("resize_mode") or "shortest")
        self._tokenizer = open_clip.get_tokenizer(spec.arch)

    @property
    def model(self) -> Any:
        if self._model is None:
            self.load()
        return self._model

    # -- facts about the model ------------------------------------------------
    @property
    def dim(self) -> int:
        model = self.model
        proj = getattr(model.visual, "output_dim", None)
        if proj:
            return int(proj)
        return int(self.encode_texts(["a photo"]).shape[1])

    @property
    def image_size(self) -> int:
        return self.preprocess_config.image_size

    @property
    def preprocess_config(self) -> PreprocessConfig:
        if self._model is None:  # load() takes a lock; the decode workers ask for every photo
            self.load()
        return self._cfg

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale): the temperature CLIP's softmax over classes uses."""
        return float(self.model.logit_scale.exp().item())

    # -- encoding -------------------------------------------------------------
    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """open_clip's evaluation transform for this model: 8-bit resize and crop
        (same pixels, without torch in the workers), else its own transform."""
        cfg = self.preprocess_config
        if cfg.supported:
            return fit(image, cfg)
        assert self._preprocess is not None
        return self._preprocess(image).numpy()

    def encode_images(self, batch: "np.ndarray | torch.Tensor") -> np.ndarray:
        """Vectors for a stack of :meth:`preprocess` outputs, L2-normalised, float32.

        8-bit batches travel to the device as bytes (a quarter of float32's
        traffic, pinned on CUDA) and are normalised there. A torch tensor (N, S, S, 3)
        uint8 already on the device (JPEGs decoded there, :mod:`clipdex.models.gpu_decode`)
        is used where it is."""
        import torch

        if isinstance(batch, torch.Tensor):
            pixels = batch.to(self.device)
        else:
            pixels = torch.from_numpy(np.ascontiguousarray(batch))
            if self.device.startswith("cuda"):
                pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            else:
                pixels = pixels.to(self.device)
        if pixels.dtype == torch.uint8:
            if self._scale_shift is None:
                self._scale_shift = tuple(torch.tensor(v, device=self.device).view(1, 3, 1, 1)
                                          for v in self.preprocess_config.scale_shift())
            scale, shift = self._scale_shift
            pixels = pixels.permute(0, 3, 1, 2).float() * scale - shift
        if self.precision == "fp16":
            pixels = pixels.half()
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(pixels, normalize=True)
        return features.float().cpu().numpy()

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_pil(self, images: Sequence["Image.Image"]) -> np.ndarray:
        return self.encode_images(np.stack([self.preprocess(im) for im in images]))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for texts, L2-normalised, float32."""
        import torch

        model = self.model
        out = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), TEXT_BATCH):
                tokens = self._tokenizer(list(texts[start:start + TEXT_BATCH])).to(self.device)
                out.append(model.encode_text(tokens, normalize=True).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)
