"""What the torch runtimes (open_clip, Transformers) share: an encoder base class, pixels onto
the device and normalised there, the precision context, and the ONNX export of a tower."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.models.devices import check_cuda_bf16, kind
from clipdex.models.encoder import TEXT_BATCH
from clipdex.models.precision import GPU_PRECISIONS
from clipdex.models.preprocess import PreprocessConfig, fit

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from clipdex.models.spec import ModelSpec

# What torch computes where. On the CPU the factory prefers ONNX Runtime (fp32) and
# OpenVINO (bf16): torch there is fp32 only, for an explicit runtime choice and the
# reference tests (its bf16 would be emulated on most CPUs, and fp16 is slow).
TORCH_PRECISIONS = {"cuda": GPU_PRECISIONS, "mps": GPU_PRECISIONS, "cpu": ("fp32",)}


def check_precision(device: str, precision: str) -> None:
    """Refuse what a device cannot compute well, with what to use instead."""
    from clipdex.errors import ModelError

    if kind(device) == "cpu" and precision != "fp32":
        raise ModelError(f"{precision} through torch is for GPUs; on the CPU use fp32 or int8 (ONNX Runtime) "
                         "or bf16 (OpenVINO).")
    if precision == "bf16" and kind(device) == "cuda":
        check_cuda_bf16(device)


class DevicePixels:
    """8-bit batches onto a device and normalised there: a quarter of float32's traffic
    (pinned on CUDA). A torch tensor (N, S, S, 3) uint8 already on the device (JPEGs
    decoded there, :mod:`clipdex.models.gpu_decode`) is used where it is; float batches
    (already normalised) only move."""

    def __init__(self, device: str, cfg: "PreprocessConfig", precision: str) -> None:
        self.device = device
        self.cfg = cfg
        self.precision = precision
        self._scale_shift: Any = None

    def __call__(self, batch: "np.ndarray | torch.Tensor") -> "torch.Tensor":
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
                                          for v in self.cfg.scale_shift())
            scale, shift = self._scale_shift
            pixels = pixels.permute(0, 3, 1, 2).float() * scale - shift
        return pixels.half() if self.precision == "fp16" else pixels


def autocast(device: str, precision: str) -> Any:
    """bf16 autocast for a bf16 encoder; nothing for the others (fp16 runs a half model)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=kind(device), dtype=torch.bfloat16)


def image_tower(model: Any, encode: Callable[["torch.Tensor"], "torch.Tensor"], cfg: "PreprocessConfig") -> Any:
    """A module for export: 8-bit (N, H, W, 3) pixels in (normalising in the graph runs batched on
    ONNX Runtime's threads instead of costing the decode workers ~1 ms an image), L2-normalised
    vectors out. ``encode`` is ``model``'s image tower on normalised (N, 3, H, W) float pixels."""
    import torch

    scale, shift = (torch.tensor(v).view(1, 3, 1, 1) for v in cfg.scale_shift())

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # its weights are the graph's

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float() * scale - shift
            return torch.nn.functional.normalize(encode(x), dim=-1)

    return ImageTower().eval()


def to_onnx(module: Any, args: tuple[Any, ...], path: Path, inputs: Sequence[str],
            dynamic: Mapping[str, Mapping[int, str]]) -> None:
    """Export ``module`` called with ``args`` to ``path``: ``inputs`` named, a ``vectors`` output,
    ``dynamic`` axes (the batch of ``vectors`` always)."""
    import torch

    from clipdex.models.onnx_export import OPSET

    # Grad mode on: with it off, nn.MultiheadAttention (open_clip's blocks, SigLIP's pooling head)
    # takes a fused fast path that the ONNX exporter cannot translate.
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but works
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=["vectors"],
                          opset_version=OPSET, dynamic_axes={**dynamic, "vectors": {0: "batch"}}, dynamo=False)


class TorchModelEncoder:
    """What both torch runtimes' encoders share (:class:`~clipdex.models.encoder.Encoder`): the model
    built once, under a lock, on first use; 8-bit batches (or device tensors) normalised on the
    device; texts in batches; vectors L2-normalised in float32; the scoring facts from the model's
    ``logit_scale`` and ``logit_bias``.

    A subclass builds its model in ``_build`` (ending with :meth:`_ready`) and says how its towers
    are called: ``_image_features(pixels)`` on normalised (N, 3, S, S) pixels and
    ``_text_features(texts)``, both returning unnormalised features.
    """

    backend = ""
    device_tensors = True

    def __init__(self, spec: "ModelSpec", device: str | None = None, precision: str = "fp32") -> None:
        self.spec = spec
        self.precision = precision
        self._requested_device = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._cfg: PreprocessConfig | None = None
        self._pixels: DevicePixels | None = None
        self.device = ""

    # -- building -------------------------------------------------------------
    @property
    def source(self) -> str:
        """Where the model came from, in words: this runtime and its weights (a file, a folder or the tag
        its library downloads)."""
        return f"{self.backend} ({self.spec.weights or self.spec.pretrained or self.spec.arch})"

    def load(self) -> Any:
        """Build the model now (it is otherwise built on first use)."""
        with self._lock:
            if self._model is None:
                self._build()
        return self

    def _build(self) -> None:
        raise NotImplementedError

    def _ready(self, model: Any, cfg: PreprocessConfig, device: str) -> None:
        """The built model in eval mode, half for fp16, with its preprocessing and device."""
        model = model.eval()
        self._cfg = cfg
        self._pixels = DevicePixels(device, cfg, self.precision)
        self.device = device
        self._model = model.half() if self.precision == "fp16" else model  # last: its being set means the rest is

    @property
    def model(self) -> Any:
        if self._model is None:
            self.load()
        return self._model

    # -- facts ----------------------------------------------------------------
    @property
    def preprocess_config(self) -> PreprocessConfig:
        if self._model is None:  # load() takes a lock; the decode workers ask for every photo
            self.load()
        assert self._cfg is not None
        return self._cfg

    @property
    def image_size(self) -> int:
        return self.preprocess_config.image_size

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale): the temperature of the model's scores."""
        return float(self.model.logit_scale.float().exp().item())

    @property
    def logit_bias(self) -> float | None:
        """The bias of a model trained with a sigmoid loss (SigLIP, open_clip's SigLIP models); None for CLIP."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.float().item())

    # -- encoding -------------------------------------------------------------
    def _image_features(self, pixels: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def _text_features(self, texts: list[str]) -> "torch.Tensor":
        raise NotImplementedError

    def encode_images(self, batch: "np.ndarray | torch.Tensor") -> np.ndarray:
        """Vectors for a stack of ``preprocess`` outputs (or a uint8 tensor on the device), L2-normalised, float32."""
        import torch

        self.model  # noqa: B018 - built before the pixels are prepared for its device
        assert self._pixels is not None
        pixels = self._pixels(batch)
        with torch.inference_mode(), autocast(self.device, self.precision):
            features = self._image_features(pixels)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def encode_pil(self, images: Sequence["Image.Image"]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_images(np.stack([self.preprocess(im) for im in images]))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for texts, L2-normalised, float32."""
        import torch

        self.model  # noqa: B018 - built before its tokenizer is used
        out = []
        with torch.inference_mode(), autocast(self.device, self.precision):
            for start in range(0, len(texts), TEXT_BATCH):
                features = self._text_features(list(texts[start:start + TEXT_BATCH]))
                out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """The model's resize and crop, as 8-bit pixels (normalised on the device)."""
        return fit(image, self.preprocess_config)
