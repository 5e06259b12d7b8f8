"""The one place that reads environment variables.

    CLIPDEX_HOME    where clipdex keeps its state (default: $XDG_DATA_HOME/clipdex,
                    i.e. ~/.local/share/clipdex); the default index lives in it
    CLIPDEX_INDEX   the index used when --index is not given (default: $CLIPDEX_HOME/index)
    CLIPDEX_DEVICE  cuda, mps or cpu, when --device is not given (default: best available)
    CLIPDEX_GPU_DECODE  0 (or false, no, off): JPEGs are decoded by Pillow even for a CUDA
                    encoder; force: through the device stage on any device (tests, benchmarks)
    CLIPDEX_PRECISION  auto, fp32, bf16, int8 or fp16: how new vectors are computed when
                    --precision is not given (default: auto; the tests pin fp32 so that
                    no test depends on which precision this machine's check would take)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal


def home_dir() -> Path:
    """Directory for clipdex's own state (default index, caches)."""
    explicit = os.environ.get("CLIPDEX_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser() / "clipdex"


def default_index_dir() -> Path:
    """The index used when none is named."""
    explicit = os.environ.get("CLIPDEX_INDEX")
    if explicit:
        return Path(explicit).expanduser()
    return home_dir() / "index"


def cache_dir() -> Path:
    """Derived, disposable data (weight-file fingerprints, exported models)."""
    return home_dir() / "cache"


def preferred_device() -> str | None:
    """Device named by CLIPDEX_DEVICE, or None to pick automatically."""
    return os.environ.get("CLIPDEX_DEVICE") or None


def gpu_decode_setting() -> bool | Literal["force"]:
    """Whether JPEGs are decoded on the GPU (CLIPDEX_GPU_DECODE; default yes, where one is used)."""
    value = os.environ.get("CLIPDEX_GPU_DECODE", "").strip().lower()
    if value == "force":
        return "force"
    return value not in ("0", "false", "no", "off")


def default_precision() -> str | None:
    """Precision named by CLIPDEX_PRECISION, or None for the default (auto)."""
    value = os.environ.get("CLIPDEX_PRECISION", "").strip().lower()
    return value or None


# What a Ray worker this machine starts must see as the driver does: where clipdex keeps its
# caches (exports) and where Hugging Face keeps its hub cache, and whether to stay offline.
WORKER_VARIABLES = ("CLIPDEX_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def worker_environment() -> dict[str, str]:
    """The variables of :data:`WORKER_VARIABLES` set here, for workers started on this machine
    (Ray's local mode): a cluster's nodes keep their own."""
    return {name: os.environ[name] for name in WORKER_VARIABLES if name in os.environ}
