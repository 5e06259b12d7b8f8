"""What the bench scripts print about the machine they ran on (a sibling module, not a package):
the CPU, so that every number measured names it."""

from __future__ import annotations

import os

from clipdex.models.precision import cpu_features


def cpu_line() -> str:
    """The CPU's model name, core count and the SIMD flags that matter to NumPy, faiss, BLAS and
    clipdex's precisions (clipdex.models.precision reads them, as `clipdex bench` does)."""
    cpu = cpu_features()
    return f"{cpu.model}, {os.cpu_count()} cores; flags: {' '.join(cpu.shown) or 'none of AVX2, AVX-512, AMX'}"
