"""Devices: which one a job runs on, defined once for every runtime.

A device is ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"mps"``. Asking torch
costs its import (~2 s), so a machine that can have no GPU (Linux with no
NVIDIA, ROCm or WSL device) is answered without it, and so is a light install
(no torch: only ONNX Runtime on the CPU), where a GPU asked for by name is an
error saying which extra brings it.
"""

from __future__ import annotations

import os
import sys

from clipdex.errors import ModelError
from clipdex.models.optional import has_torch, torch_message
from clipdex.settings import preferred_device

CPU = "cpu"
ACCELERATORS = ("cuda", "mps")


def kind(device: str) -> str:
    """'cuda' for 'cuda:1': what a runtime's table of devices names."""
    return device.split(":")[0]


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given, else CLIPDEX_DEVICE, else CUDA, then Apple MPS, then CPU.

    Without torch only the CPU can be had: chosen by default, and a GPU asked for
    (``--device cuda``, CLIPDEX_DEVICE=mps) is a :class:`ModelError` naming the extra."""
    wanted = requested or preferred_device()
    if wanted == CPU or (not wanted and not accelerator_possible()):
        return CPU
    if not has_torch():
        if not wanted:
            return CPU
        if kind(wanted) not in ACCELERATORS:
            raise ModelError(f"unknown device {wanted!r}; use cpu, cuda, cuda:N or mps.")
        raise ModelError(f"{torch_message(f'device {wanted!r}')} (this install runs models on the CPU "
                         "with ONNX Runtime only). Or use --device cpu.")
    import torch

    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"device {wanted!r} was asked for but CUDA is not available here. "
                             "Use --device cpu, or install a CUDA build of torch.")
        if wanted == "mps" and not torch.backends.mps.is_available():
            raise ModelError("device 'mps' was asked for but Apple MPS is not available here. "
                             "Use --device cpu.")
        if kind(wanted) not in (CPU, *ACCELERATORS):
            raise ModelError(f"unknown device {wanted!r}; use cpu, cuda, cuda:N or mps.")
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return CPU


def accelerator_possible() -> bool:
    """False only where no GPU can be: Linux with no NVIDIA, ROCm or WSL GPU
    device present (macOS may have MPS; elsewhere torch must be asked)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia",
                                           "/dev/kfd", "/dev/dxg"))


def check_cuda_bf16(device: str) -> None:
    """bf16 on a GPU without it in hardware (before Ampere: V100, T4) is emulated and slow:
    refused, with what to use instead."""
    import torch

    if not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ModelError(f"{torch.cuda.get_device_name(device)} has no native bf16 (it came with Ampere): "
                         "bf16 would be emulated and slow. Use --precision fp16 (as fast, native here), "
                         "fp32, or auto.")
