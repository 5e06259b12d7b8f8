"""What the bench scripts print about the machine they ran on (a sibling module, not a package):
the CPU, so that every number measured names it."""

from __future__ import annotations

import contextlib
import os
import platform

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_line() -> str:
    """The CPU's model name, core count and the SIMD flags that matter to NumPy, faiss and BLAS."""
    model, flags = platform.processor() or "?", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    have = [flag for flag in CPU_FLAGS if flag in flags]
    return f"{model}, {os.cpu_count()} cores; flags: {' '.join(have) or 'none of ' + ' '.join(CPU_FLAGS)}"
