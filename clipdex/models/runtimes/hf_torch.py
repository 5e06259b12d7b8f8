"""Hugging Face Transformers checkpoints (CLIPModel, SiglipModel) on torch.  [skeleton: being written]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipdex.errors import ModelError
from clipdex.models.encoder import Encoder, Runtime
from clipdex.models.registry import ModelSpec
from clipdex.models.runtimes._torch import TORCH_DEVICES, TORCH_PRECISIONS


def _build(spec: ModelSpec, precision: str, device: str) -> Encoder:
    raise ModelError("Transformers checkpoints are not supported yet")


RUNTIME = Runtime("transformers", "torch (Transformers)", families=("hf",), devices=TORCH_DEVICES,
                  precisions=TORCH_PRECISIONS, build=_build)


def torch_encoder(spec: ModelSpec, device: str = "cpu") -> Encoder:
    return _build(spec, "fp32", device)


def export(spec: ModelSpec, work: Path) -> dict[str, Any]:
    raise ModelError("Transformers checkpoints are not supported yet")
