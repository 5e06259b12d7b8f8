"""``--precision auto``: the fastest precision that keeps the vectors faithful, checked once.

What can be fast depends on the host: a CPU with AVX512_BF16 or AMX runs bf16
through OpenVINO at about twice fp32; VNNI makes int8 fast (but int8 drifts
further from fp32, so it is only considered when the user lowers the bar); a
GPU runs fp16 and bf16. :func:`candidates` lists what this host offers, fastest
first; :func:`choose` encodes a few of the user's own photos with fp32 and with
each candidate (timed at the indexer's batch size), and takes the fastest one that
agrees with fp32 to ``min_cosine`` and measured faster than it. The index records the choice per model and kind of host
(:func:`host_key`), so the check runs once.

Vectors of one family share a model's vector set: fp32, bf16 and fp16 agree to
cosine >= 0.999 and are searched together (an index continued on another
machine may hold several); int8 vectors are kept apart. Auto never mixes
families: an index that holds full-precision vectors of the model stays full,
one that holds only int8 vectors stays int8.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clipdex.errors import ImageDecodeError, ModelError, first_line
from clipdex.models.precision import (
    BF16_FLAGS,
    DEFAULT_MIN_COSINE,
    INT8_FLAGS,
    INT8_MIN_COSINE,
    CpuFeatures,
    cpu_features,
    vector_family,
)

if TYPE_CHECKING:
    from clipdex.models.encoder import Encoder
    from clipdex.models.registry import ModelSpec

log = logging.getLogger(__name__)
MIN_RECORDED_PHOTOS = 4  # a choice checked on fewer photos (a tiny folder) is made again next run
SAMPLE_PHOTOS = 8  # photos the fidelity check encodes: enough to see a drift, seconds on a CPU
TIMED_RUNS = 2  # each encoder runs the timed batch once to warm up, then this many times (best kept)
GPU_TIMING_BATCH = 64  # off the CPU: enough photos to time throughput rather than launch latency


@dataclass(frozen=True)
class PrecisionChoice:
    """What auto chose for a model on one kind of host, and why.

    ``cosine`` is the lowest cosine between the chosen precision's vectors and
    fp32's over the ``photos`` checked (None when nothing was measured: fp32
    itself, or a family kept as it is); ``speedup`` its speed over fp32's.
    ``chosen_at`` (Unix time) is set once the index records it.
    """

    precision: str
    runtime: str
    reason: str
    cosine: float | None
    speedup: float | None
    photos: int
    min_cosine: float
    host: str
    chosen_at: float | None = None
    # False when a candidate could not be built or run (a broken runtime): such a choice is
    # used for this run only, and the next run checks again.
    complete: bool = True

    @property
    def worth_recording(self) -> bool:
        """Made on enough photos, with every candidate measured: kept for later runs."""
        return self.complete and self.photos >= MIN_RECORDED_PHOTOS

    def describe(self) -> str:
        """'bf16 (OpenVINO)'."""
        return f"{self.precision} ({self.runtime})"


def host_key(device: str | None = None) -> str:
    """What a choice depends on, as one string: the device kind and the runtimes that matter.

    'cpu avx2 avx512f avx512_bf16 avx512_vnni +openvino', 'cuda NVIDIA H100 80GB HBM3',
    'mps'. On the CPU, whether OpenVINO is installed decides whether bf16 is possible.
    """
    from clipdex.models.devices import pick_device

    chosen = pick_device(device)
    if chosen == "cpu":
        return cpu_host_key()
    if chosen.startswith("cuda"):
        import torch

        return f"cuda {torch.cuda.get_device_name(chosen)}"
    return chosen


def cpu_host_key() -> str:
    """:func:`host_key` of this machine's CPU (never imports torch or a runtime)."""
    key = f"cpu {cpu_features().signature()}"
    return key + (" +openvino" if importlib.util.find_spec("openvino") is not None else "")


def cheap_host_key(device: str | None = None) -> str | None:
    """:func:`host_key` where it costs no torch import (the CPU, or a host that can have no
    GPU); None where only torch could say which GPU this is."""
    from clipdex.models.devices import accelerator_possible
    from clipdex.settings import preferred_device

    wanted = device or preferred_device()
    if wanted == "cpu" or (not wanted and not accelerator_possible()):
        return cpu_host_key()
    return None


def candidates(device: str, min_cosine: float = DEFAULT_MIN_COSINE, family: str | None = None) -> list[str]:
    """The precisions worth checking on ``device`` (a resolved one: 'cpu', 'cuda', 'mps'),
    fastest first, ending with fp32 (the reference).

    ``family`` is the vector family the index already holds for the model ('int8',
    'full', or None for none yet): a full index stays full, an int8 one stays int8.
    int8 is considered only when ``min_cosine`` is below :data:`DEFAULT_MIN_COSINE`
    (int8 keeps cosine ~0.9997 to fp32); bf16 on the CPU only where it is native and
    OpenVINO is installed.
    """
    if family == "int8":
        return ["int8"]
    if device != "cpu":
        return ["fp16", "bf16", "fp32"]
    found = []
    if family is None and min_cosine < DEFAULT_MIN_COSINE:
        found.append("int8")
    if cpu_features().maybe_bf16 and _openvino_missing() is None:
        found.append("bf16")
    return [*found, "fp32"]


def choose(spec: "ModelSpec", device: str | None, sample: list[np.ndarray],
           min_cosine: float = DEFAULT_MIN_COSINE, family: str | None = None, *,
           encoders: dict[str, "Encoder"] | None = None, host: str | None = None) -> PrecisionChoice:
    """The fastest of :func:`candidates` whose vectors of ``sample`` (:meth:`Encoder.preprocess`
    outputs of the user's photos) agree with fp32's to ``min_cosine`` and that encodes faster
    than fp32 (ties: a full-precision one); else fp32. Every candidate is measured, and the
    reason names the runner-up.

    Cosines are taken on the sample; times on the sample repeated up to the batch the indexer
    encodes in (:func:`timing_batch`): a few photos on a GPU time its launch latency, not its
    throughput. Where fp32 is the only candidate nothing is decoded or timed (:func:`needs_sample`).

    ``encoders`` (precision -> encoder) holds encoders already built, and receives the ones
    built here: the caller encodes with the chosen one without building it again. A
    candidate that cannot be built or run (any exception: OpenVINO's compile raises RuntimeError)
    is skipped, and the reason says why; fp32, the reference, is never skipped.
    """
    from clipdex.models.devices import pick_device

    device = pick_device(device)
    host = host or host_key(device)
    encoders = {} if encoders is None else encoders
    options = candidates(device, min_cosine, family)
    if options == ["int8"]:
        return PrecisionChoice("int8", _runtime(spec, "cpu", "int8"), _KEEP_INT8, None, None, 0, min_cosine, host)
    offer_int8 = device == "cpu" and family is None and "int8" not in options
    if options == ["fp32"] and not (offer_int8 and sample and int8_exported(spec)):
        parts = [p for p in (_no_bf16(device),) if p]
        if offer_int8:
            parts.append(_INT8_TYPICAL)
        reason = "fp32: " + ("; ".join(parts) or "nothing faster is available here")
        return PrecisionChoice("fp32", _runtime(spec, device, "fp32"), reason, None, None, 0, min_cosine, host)
    if not sample:
        return PrecisionChoice("fp32", _runtime(spec, device, "fp32"), "fp32: no photo could be decoded to check "
                               "a faster precision on", None, None, 0, min_cosine, host)
    batch = np.stack(sample)
    size = timing_batch(device)
    reference = _encoder(spec, device, "fp32", encoders)
    expected, fp32_seconds = measure(reference, batch, size)
    photos = len(sample)
    passed: list[_Measured] = []
    rejected: list[str] = []
    complete = True  # every candidate measured (a broken runtime makes the choice this run's only)
    for precision in options[:-1]:
        try:
            encoder = _encoder(spec, device, precision, encoders)
            vectors, seconds = measure(encoder, batch, size)
        except Exception as e:  # noqa: BLE001 - auto never fails where fp32 works (RuntimeError from OpenVINO, MPS)
            rejected.append(_unusable(precision, e))
            complete = False
            continue
        found = _Measured(precision, _runtime(spec, device, precision),
                          _min_cosine(vectors, expected), fp32_seconds / seconds if seconds > 0 else float("inf"))
        if found.cosine >= min_cosine and found.speedup > 1.0:
            passed.append(found)
        else:
            rejected.append(f"{precision} through {found.runtime} " + (
                f"reached cosine {_floor(found.cosine)} to fp32, below the bar of {min_cosine:g}"
                if found.cosine < min_cosine else f"was not faster ({found.speedup:.2f}x fp32) on {photos} "
                "of your photos"))
    if passed:
        # The fastest; on a tie a full-precision one (it shares the model's vector set).
        ranked = sorted(passed, key=lambda m: (-m.speedup, vector_family(m.precision) != "full"))
        best = ranked[0]
        why = _why_fast(device, best.precision)
        reason = (f"{best.precision} through {best.runtime}: {why + '; ' if why else ''}cosine to fp32 >= "
                  f"{_floor(best.cosine)} on {photos} of your photos; {best.speedup:.1f}x fp32")
        if len(ranked) > 1:
            second = ranked[1]
            reason += f" (runner-up: {second.precision} through {second.runtime}, {second.speedup:.1f}x)"
        return PrecisionChoice(best.precision, best.runtime, reason, best.cosine, best.speedup, photos,
                               min_cosine, host, complete=complete)
    parts = [p for p in (_no_bf16(device),) if p] + rejected
    if offer_int8:
        parts.append(_int8_offer(spec, batch, size, expected, fp32_seconds, encoders))
    reason = "fp32: " + ("; ".join(parts) or "nothing faster is available here")
    return PrecisionChoice("fp32", _runtime(spec, device, "fp32"), reason, None, None, photos, min_cosine, host,
                           complete=complete)


def needs_sample(spec: "ModelSpec", device: str | None, min_cosine: float = DEFAULT_MIN_COSINE,
                 family: str | None = None) -> bool:
    """Whether :func:`choose` would look at photos: not where nothing can win (fp32 is the only
    candidate, and no int8 export is on disk to time the int8 offer with), nor for an int8 set."""
    from clipdex.models.devices import pick_device

    device = pick_device(device)
    options = candidates(device, min_cosine, family)
    if options == ["int8"]:
        return False
    if options == ["fp32"]:
        return device == "cpu" and family is None and int8_exported(spec)
    return True


def int8_exported(spec: "ModelSpec") -> bool:
    """Whether the int8 image tower is already on disk (timing it then costs no quantisation)."""
    from clipdex.models.onnx_export import VISUAL_FILES, export_dir

    return (export_dir(spec) / VISUAL_FILES["int8"]).exists()


def timing_batch(device: str) -> int:
    """The batch auto times encoders at: the indexer's on the CPU, :data:`GPU_TIMING_BATCH` off it."""
    from clipdex.indexer import CPU_BATCH

    return CPU_BATCH if device == "cpu" else GPU_TIMING_BATCH


def measure(encoder: "Encoder", batch: np.ndarray, size: int | None = None) -> tuple[np.ndarray, float]:
    """``encoder``'s vectors of ``batch`` and its best time over :data:`TIMED_RUNS` runs of
    ``batch`` repeated up to ``size`` rows (after one run to warm up, which gives the
    vectors: first runs allocate and compile)."""
    timed = batch if size is None or len(batch) >= size else np.resize(batch, (size, *batch.shape[1:]))
    vectors = encoder.encode_images(timed)[: len(batch)]
    best = float("inf")
    for _ in range(TIMED_RUNS):
        started = time.perf_counter()
        encoder.encode_images(timed)
        best = min(best, time.perf_counter() - started)
    return vectors, best


@dataclass(frozen=True)
class _Measured:
    precision: str
    runtime: str
    cosine: float
    speedup: float


def sample_photos(paths: Iterable[str], preprocess: Callable[..., np.ndarray], *,
                  skip_hashes: Callable[[str], bool] = lambda h: False,
                  max_megapixels: float | None = None, draft_size: int | None = None,
                  count: int = SAMPLE_PHOTOS) -> list[np.ndarray]:
    """Up to ``count`` of ``paths`` decoded and preprocessed, in order: the photos the check
    runs on. Files that do not decode, or whose content hash ``skip_hashes`` says is
    already embedded (nothing would be encoded for them), are passed over."""
    import hashlib

    from clipdex.decode import DEFAULT_MAX_MEGAPIXELS, load_image

    limit = DEFAULT_MAX_MEGAPIXELS if max_megapixels is None else max_megapixels
    found: list[np.ndarray] = []
    for path in paths:
        if len(found) >= count:
            break
        try:
            with open(path, "rb") as f:
                data = f.read()
            if skip_hashes(hashlib.sha256(data).hexdigest()):
                continue
            found.append(preprocess(load_image(data, path, max_megapixels=limit, draft_size=draft_size)))
        except (OSError, ImageDecodeError):
            continue
    return found


# -- the words of a reason -----------------------------------------------------
_KEEP_INT8 = ("int8 through ONNX Runtime: this index holds int8 vectors of the model, and auto never mixes "
              "them with full-precision ones (`--precision fp32 --add-model` starts a full-precision set "
              "beside them)")


_INT8_TYPICAL = f"int8 is typically 1.7-2.4x fp32 at cosine ~0.9997: allow it with --min-cosine {INT8_MIN_COSINE:g}"
_UNREPORTED = "the OS did not report this CPU's features; OpenVINO decided"


def _encoder(spec: "ModelSpec", device: str, precision: str, built: dict[str, "Encoder"]) -> "Encoder":
    if precision not in built:
        from clipdex.models.factory import make_encoder

        encoder = make_encoder(spec, device=device, precision=precision)
        encoder.load()
        built[precision] = encoder
    return built[precision]


def _min_cosine(vectors: np.ndarray, expected: np.ndarray) -> float:
    """The lowest cosine between matching rows (both L2-normalised)."""
    return float(np.min(np.sum(vectors.astype(np.float64) * expected.astype(np.float64), axis=1)))


def _floor(cosine: float) -> str:
    """A cosine rounded down to 5 decimals (a bar it really clears: 0.99996, never 1.0)."""
    return f"{np.floor(min(cosine, 1.0) * 1e5) / 1e5:.5f}"


def _runtime(spec: "ModelSpec", device: str, precision: str) -> str:
    """How messages name the runtime that computes ``precision`` for ``spec`` on ``device``."""
    from clipdex.models.factory import pick_runtime

    return pick_runtime(spec, device, precision).label


def _why_fast(device: str, precision: str) -> str:
    """Why a precision can be fast here ('this CPU computes bf16 natively (avx512_bf16)')."""
    if device != "cpu":
        return ""
    cpu = cpu_features()
    if precision == "bf16":
        return f"this CPU computes bf16 natively ({_flags(cpu, BF16_FLAGS)})" if cpu.known else _UNREPORTED
    if precision == "int8" and cpu.int8_dot:
        return f"this CPU has 8-bit dot products ({_flags(cpu, INT8_FLAGS)})"
    return ""


def _no_bf16(device: str) -> str:
    """Why bf16 was not a candidate on this CPU ('' where it was, or off the CPU)."""
    if device != "cpu":
        return ""
    cpu = cpu_features()
    if not cpu.known:
        if _openvino_missing() is not None:
            return ("the OS did not report this CPU's features, and OpenVINO, which would decide whether bf16 "
                    "is native, is not installed (`pip install 'clipdex[openvino]'`)")
        return ""  # bf16 was a candidate: OpenVINO decided, and its line says how
    if not cpu.native_bf16:
        return f"this CPU has no native bf16 ({_simd(cpu)})"
    missing = _openvino_missing()
    if missing is not None:
        return ("this CPU computes bf16 natively, but OpenVINO is not installed "
                "(`pip install 'clipdex[openvino]'` makes bf16 available, about 2x fp32)")
    return ""


def _int8_offer(spec: "ModelSpec", batch: np.ndarray, size: int, expected: np.ndarray, fp32_seconds: float,
                encoders: dict[str, "Encoder"]) -> str:
    """int8 as the option a lower bar allows: measured on the same photos where its export is
    on disk already, else what it typically does (quantising costs more than the check)."""
    if not int8_exported(spec):
        return _INT8_TYPICAL
    allow = f"allow it with --min-cosine {INT8_MIN_COSINE:g}"
    try:
        vectors, seconds = measure(_encoder(spec, "cpu", "int8", encoders), batch, size)
    except Exception as e:  # noqa: BLE001 - an offer never fails the run (_unusable logs it)
        return f"{_unusable('int8', e)}; {_INT8_TYPICAL}"
    cosine = _min_cosine(vectors, expected)
    speedup = fp32_seconds / seconds if seconds > 0 else float("inf")
    if speedup <= 1.0:
        return f"int8 was not faster either ({speedup:.2f}x fp32 at cosine >= {_floor(cosine)})"
    return f"int8 is {speedup:.1f}x fp32 at cosine >= {_floor(cosine)}: {allow}"


def _flags(cpu: CpuFeatures, names: tuple[str, ...]) -> str:
    return ", ".join(f for f in names if f in cpu.flags)


def _simd(cpu: CpuFeatures) -> str:
    if "avx512f" in cpu.flags:
        return "AVX-512 without BF16"
    if "avx2" in cpu.flags:
        return "AVX2 only"
    return "no AVX2 or AVX-512"


def _unusable(precision: str, error: Exception) -> str:
    """'bf16 could not be used (RuntimeError: first line)'; the traceback goes to the debug log."""
    log.debug("%s could not be used", precision, exc_info=error)
    what = _first_sentence(error) if isinstance(error, ModelError) else first_line(error)
    return f"{precision} could not be used ({what})"


def _first_sentence(error: Exception) -> str:
    text = str(error).strip()
    head, dot, _ = text.partition(". ")
    return head if dot else text.rstrip(".")


def _openvino_missing() -> str | None:
    """None when OpenVINO can be used here, else why not (its import is only looked up)."""
    return None if importlib.util.find_spec("openvino") is not None else "openvino is not installed"
