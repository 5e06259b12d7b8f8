"""One factory for every runtime: :func:`make_encoder` picks the first runtime of
:data:`RUNTIMES` that computes a model's family on the job's device in its precision.

Adding a runtime (ORT on CUDA, CoreML, …) is one module under
:mod:`clipdex.models.runtimes` exposing ``RUNTIME`` and one line here, placed
where it should win: earlier entries are preferred. Runtime modules are
imported only when the factory is asked for an encoder.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from clipdex.errors import ModelError
from clipdex.models.devices import kind, pick_device
from clipdex.models.encoder import Encoder, Runtime
from clipdex.models.precision import CONCRETE
from clipdex.models.registry import ModelSpec

RUNTIMES = (
    "clipdex.models.runtimes.onnx",  # the CPU's fp32 and int8, no torch at query time
    "clipdex.models.runtimes.openvino",  # the CPU's bf16, where the processor computes it natively
    "clipdex.models.runtimes.openclip_torch",  # open_clip models on GPUs (and fp32 on the CPU when asked)
    "clipdex.models.runtimes.hf_torch",  # Transformers checkpoints on GPUs (likewise)
)


@lru_cache(maxsize=1)
def runtimes() -> tuple[Runtime, ...]:
    """Every runtime, in order of preference."""
    return tuple(importlib.import_module(name).RUNTIME for name in RUNTIMES)


def runtime_named(name: str) -> Runtime:
    for runtime in runtimes():
        if runtime.name == name:
            return runtime
    raise ModelError(f"unknown runtime {name!r}; use one of {', '.join(r.name for r in runtimes())}.")


def pick_runtime(spec: ModelSpec, device: str, precision: str, runtime: str | None = None) -> Runtime:
    """The runtime for ``spec`` on ``device`` (a resolved one) in ``precision`` (a concrete one);
    ``runtime`` names one to use instead of the first that fits."""
    if precision not in CONCRETE:
        raise ModelError(f"unknown precision {precision!r}; use one of {', '.join(CONCRETE)}.")
    if runtime is not None:
        chosen = runtime_named(runtime)
        if not chosen.fits(spec.family, kind(device), precision):
            offers = "; ".join(f"{', '.join(p)} on {d}" for d, p in chosen.precisions.items())
            raise ModelError(f"{chosen.label} does not run {spec.name} on {device} in {precision}: it runs "
                             f"{'/'.join(chosen.families)} models, {offers}.")
        return chosen
    for candidate in runtimes():
        if candidate.fits(spec.family, kind(device), precision):
            return candidate
    raise ModelError(_nothing_fits(spec, device, precision))


def _nothing_fits(spec: ModelSpec, device: str, precision: str) -> str:
    by_precision: dict[str, list[str]] = {}
    for r in runtimes():
        for p in r.precisions.get(kind(device), ()):
            if r.fits(spec.family, kind(device), p):
                by_precision.setdefault(p, []).append(r.label)
    offered = [f"{p} ({' or '.join(labels)})" for p, labels in by_precision.items()]
    where = "the CPU" if kind(device) == "cpu" else device
    hint = " fp16 needs a GPU." if precision == "fp16" else ""
    hint += " int8 runs on the CPU: use --device cpu." if precision == "int8" and kind(device) != "cpu" else ""
    return (f"{precision} is not available for {spec.name} on {where}; use "
            f"{', '.join(offered) or 'another device'}, or --precision auto.{hint}")


def make_encoder(spec: ModelSpec, *, device: str | None = None, precision: str | None = None,
                 for_queries: bool = False, runtime: str | None = None) -> Encoder:
    """The encoder for a job: ONNX Runtime on the CPU (fp32, int8), OpenVINO for bf16 on a
    CPU that computes it natively, torch on GPUs. ``precision`` is a concrete one
    (``auto`` is resolved first, by :mod:`clipdex.models.auto`); ``runtime`` names a
    runtime of :data:`RUNTIMES` to use instead of the preferred one.

    ``for_queries`` picks the CPU's fp32 path without asking torch about GPUs
    (encoding one query is fast anywhere, and importing torch is not).
    """
    precision = precision or "fp32"
    chosen = "cpu" if for_queries and device in (None, "cpu") and runtime is None else pick_device(device)
    return pick_runtime(spec, chosen, precision, runtime).build(spec, precision, chosen)
