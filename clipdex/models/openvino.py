"""The OpenVINO encoder (bf16 on CPUs that compute it natively). Skeleton: being written."""

from __future__ import annotations

from typing import Any


def openvino_missing() -> str | None:
    """None when openvino imports, else why not."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


class OpenVinoEncoder:
    backend = "openvino"

    def __init__(self, spec: Any, precision: str = "bf16") -> None:
        raise NotImplementedError("being written")
