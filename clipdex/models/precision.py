"""Precision names and what this processor computes natively: defined once, here.

A precision is how image vectors are computed:

- ``fp32``: exact (ONNX Runtime on the CPU, torch elsewhere).
- ``bf16``: bfloat16 where the processor has it natively (AVX512_BF16 or AMX on
  x86, through OpenVINO; CUDA and MPS through torch). Refused, with what to use
  instead, where it would only be emulated.
- ``int8``: dynamically quantised image tower on the CPU (ONNX Runtime); its
  vectors are kept apart from full-precision ones.
- ``fp16``: half precision on a GPU (torch).
- ``auto``: the fastest of these that passes a fidelity check on the user's own
  photos (:mod:`clipdex.models.auto`).

Nothing here imports torch or a runtime: the CPU's features come from the
operating system.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
from dataclasses import dataclass

AUTO = "auto"
CONCRETE = ("fp32", "bf16", "int8", "fp16")  # what vectors are actually computed in
PRECISIONS = (AUTO, *CONCRETE)  # what a user may ask for
FULL = ("fp32", "bf16", "fp16")  # agree with fp32 to cosine >= 0.999: they share one vector set
CPU_PRECISIONS = ("fp32", "bf16", "int8")
GPU_PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_MIN_COSINE = 0.999  # auto's bar; int8 is considered only when the user lowers it
INT8_MIN_COSINE = 0.99  # what int8 is tested to keep (cosine to fp32)

# The flags that decide a CPU's fast paths, as Linux's /proc/cpuinfo names them.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
# macOS names (sysctl machdep.cpu.*features) and arm64 (FEAT_BF16, FEAT_I8MM via hw.optional.arm).
_MAC_FLAGS = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BF16": "avx512_bf16", "AVX512VNNI": "avx512_vnni"}


def require(precision: str, allowed: tuple[str, ...] | dict[str, str], runtime: str) -> None:
    """:class:`~clipdex.errors.ModelError` unless ``runtime`` computes ``precision``."""
    if precision not in allowed:
        from clipdex.errors import ModelError

        raise ModelError(f"precision {precision!r} is not available with {runtime}; use one of "
                         f"{', '.join(allowed)} (on the CPU fp32 and int8 run through ONNX Runtime, bf16 "
                         "through OpenVINO; fp16 needs a GPU).")


def no_native_bf16(who: str) -> str:
    """The refusal of bf16 where it would be emulated, with what to use instead: ``who`` says
    whose verdict it is ('this processor, AMD EPYC (avx2)', 'OpenVINO finds that this processor…')."""
    return (f"{who} has no native bf16 (AVX512_BF16 or AMX): bf16 would be emulated and slower than "
            "fp32. Use --precision fp32 (exact) or --precision int8 (faster, cosine to fp32 >= 0.99), or "
            "--precision auto to pick the fastest here.")


def vector_family(precision: str) -> str:
    """'int8' or 'full': vectors of one family can share a model's vector set."""
    return "int8" if precision == "int8" else "full"


@dataclass(frozen=True)
class CpuFeatures:
    """The processor's name and the SIMD flags clipdex's choices depend on."""

    model: str
    flags: frozenset[str]

    @property
    def known(self) -> bool:
        """Whether the operating system told the flags (elsewhere, e.g. Windows, a runtime must say)."""
        return bool(self.flags)

    @property
    def maybe_bf16(self) -> bool:
        """bf16 may be native: the flags say so, or nobody told them (OpenVINO then decides)."""
        return self.native_bf16 or not self.known

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix multiplies in hardware (AVX512_BF16 or AMX); elsewhere bf16 is emulated
        and slower than fp32."""
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def int8_dot(self) -> bool:
        """8-bit dot products in hardware (VNNI or AMX): where int8 is fastest."""
        return any(f in self.flags for f in INT8_FLAGS)

    @property
    def shown(self) -> list[str]:
        return [f for f in SHOWN_FLAGS if f in self.flags]

    def describe(self) -> str:
        """'AMD EPYC (avx2 avx512f avx512_bf16 avx512_vnni)'."""
        return f"{self.model} ({' '.join(self.shown) or 'no AVX2, AVX-512 or AMX'})"

    def signature(self) -> str:
        """What a precision choice depends on, as one string (recorded with the choice)."""
        return " ".join(self.shown) or "baseline"


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This processor's features (Linux: /proc/cpuinfo; macOS: sysctl; else none known)."""
    model: str = platform.processor() or platform.machine() or "unknown CPU"
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    if not flags and platform.system() == "Darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string", "machdep.cpu.features",
                                  "machdep.cpu.leaf7_features"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout.split("\n")
            if out and out[0].strip():
                model = out[0].strip()
            for word in " ".join(out[1:]).split():
                if word in _MAC_FLAGS:
                    flags.add(_MAC_FLAGS[word])
    return CpuFeatures(model, frozenset(flags))
