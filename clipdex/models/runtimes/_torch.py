"""What the torch runtimes (open_clip, Transformers) share: pixels onto the device,
normalised there, and the precision context."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.models.devices import check_cuda_bf16, kind
from clipdex.models.precision import GPU_PRECISIONS

if TYPE_CHECKING:
    import torch

    from clipdex.models.preprocess import PreprocessConfig

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
