"""bf16 on the CPU: which runtime computes it fastest, and how close its vectors stay to fp32.

    python bench/bf16_runtimes.py --weights /tmp/clipdex-bench/vit-b-32-random.pt [--rounds 3] [--seconds 3]

Runs the ViT-B-32 image tower on the same prepared photos (8-bit pixels, as the
indexer hands them over) at batch 16 (the indexer's CPU batch) and batch 1, in
interleaved rounds, through:

- ONNX Runtime fp32: clipdex's exact path (the baseline of every ratio);
- OpenVINO f32 and OpenVINO bf16 (``INFERENCE_PRECISION_HINT``): clipdex's bf16 path;
- torch with the model cast to bfloat16 (``model.to(torch.bfloat16)``), eager and,
  if it compiles within ``--compile-limit`` seconds, through ``torch.compile``;
- torch autocast bf16 (clipdex's bf16 path before OpenVINO).

Prints img/s (median of rounds), the ratio to ONNX Runtime fp32 in the same
round, the lowest cosine of each runtime's vectors to ONNX Runtime fp32's, and
the CPU and the load average before and after (other work inflates every
time; img per CPU-second is less swayed by it). Needs a CPU with native bf16 (AVX512_BF16 or AMX) to mean anything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_line  # a sibling module, not a package

from clipdex.decode import load_image
from clipdex.models.precision import cpu_features
from clipdex.models.registry import resolve_model
from clipdex.models.runtimes.onnx import OnnxEncoder
from clipdex.models.runtimes.openvino import OpenVinoEncoder, openvino_bf16

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "unsplash-1k" / "images"
BATCHES = (16, 1)

Encode = Callable[[np.ndarray], np.ndarray]


def prepared_pixels(encoder: OnnxEncoder, count: int) -> np.ndarray:
    """``count`` shared photos as the indexer hands them to a model; random pixels where they are missing."""
    paths = sorted(SHARED.glob("*.jpg"))[:count]
    if paths:
        return np.stack([encoder.preprocess(load_image(p.read_bytes(), str(p), draft_size=2 * encoder.image_size))
                         for p in paths])
    size = encoder.image_size
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def torch_runtimes(weights: str, scale_shift: tuple[list[float], list[float]],
                   compile_limit: float, pixels: np.ndarray) -> dict[str, Encode]:
    """The torch ways to bf16: the model cast to bfloat16 (eager, compiled) and fp32 under autocast."""
    import open_clip
    import torch

    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=weights, device="cpu")
    model.eval()
    autocast_model = model
    bf16_model = open_clip.create_model_and_transforms("ViT-B-32", pretrained=weights, device="cpu")[0]
    bf16_model = bf16_model.eval().to(torch.bfloat16)
    scale, shift = (torch.tensor(v).view(1, 3, 1, 1) for v in scale_shift)

    def normalised(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch).permute(0, 3, 1, 2).float() * scale - shift

    def finish(features: torch.Tensor) -> np.ndarray:
        out = features.float().numpy()
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def cast(forward: Callable[[torch.Tensor], torch.Tensor]) -> Encode:
        def encode(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return finish(forward(normalised(batch).to(torch.bfloat16)))
        return encode

    def autocast(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return finish(autocast_model.encode_image(normalised(batch)))

    runtimes: dict[str, Encode] = {"torch bf16 (model.to)": cast(bf16_model.encode_image)}
    try:
        compiled = torch.compile(bf16_model.encode_image)
        started = time.perf_counter()
        for b in BATCHES:  # compiles once per batch shape
            cast(compiled)(pixels[:b])
        took = time.perf_counter() - started
        if took <= compile_limit:
            runtimes["torch bf16 compiled"] = cast(compiled)
        print(f"torch.compile of the bf16 model: {took:.0f} s"
              + ("" if took <= compile_limit else f", over {compile_limit:.0f} s: left out"))
    except Exception as e:  # noqa: BLE001  # the inductor needs a C++ compiler; report and go on
        print(f"torch.compile failed, left out: {str(e).splitlines()[0][:200]}")
    runtimes["torch autocast bf16"] = autocast
    return runtimes


def rate(encode: Encode, pixels: np.ndarray, batch: int, seconds: float) -> tuple[float, float]:
    """Encoding ``pixels`` in batches of ``batch`` for about ``seconds`` (after one warm-up
    batch): img/s, and img per second of this process's CPU time (less swayed by other work
    on the machine, which takes cores away but not CPU time)."""
    encode(pixels[:batch])
    done, i, started, cpu = 0, 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds or done == 0:
        chunk = pixels[i:i + batch]
        if len(chunk) < batch:
            i, chunk = 0, pixels[:batch]
        done += len(encode(chunk))
        i += batch
    return done / (time.perf_counter() - started), done / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="/tmp/clipdex-bench/vit-b-32-random.pt",
                        help="ViT-B-32 checkpoint (bench/make_random_checkpoint.py makes random weights)")
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; img/s and ratios are medians")
    parser.add_argument("--seconds", type=float, default=3.0, help="per runtime, batch size and round")
    parser.add_argument("--compile-limit", type=float, default=60.0, help="seconds torch.compile may take")
    parser.add_argument("--no-torch", action="store_true", help="ONNX Runtime and OpenVINO only")
    args = parser.parse_args()
    weights = os.path.abspath(args.weights)
    print(cpu_line())
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    native = cpu_features().native_bf16
    print(f"native bf16: /proc/cpuinfo {'yes' if native else 'no'}, OpenVINO {'yes' if openvino_bf16() else 'no'}")
    spec = resolve_model(None, weights)
    onnx = OnnxEncoder(spec, "fp32").load()  # exports the model once
    pixels = prepared_pixels(onnx, args.photos)
    runtimes: dict[str, Encode] = {
        "ORT fp32 (clipdex fp32)": onnx.encode_images,
        "OpenVINO f32": OpenVinoEncoder(spec, "fp32").load().encode_images,
        "OpenVINO bf16 (clipdex bf16)": OpenVinoEncoder(spec, "bf16").load().encode_images,
    }
    if not args.no_torch:
        runtimes.update(torch_runtimes(weights, onnx.preprocess_config.scale_shift(), args.compile_limit, pixels))
    reference = onnx.encode_images(pixels)
    fidelity = {name: float(np.sum(encode(pixels) * reference, axis=1).min()) for name, encode in runtimes.items()}

    base = "ORT fp32 (clipdex fp32)"
    print(f"ViT-B-32 image tower, {len(pixels)} photos, {args.rounds} interleaved rounds of {args.seconds:.0f} s")
    print(f"{'runtime':<30} {'batch':>5} {'img/s':>7} {'x ORT fp32':>10} {'img/cpu-s':>9} {'x ORT fp32':>10} "
          f"{'cos min':>8}")
    for batch in BATCHES:
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in runtimes}
        for _ in range(args.rounds):
            for name, encode in runtimes.items():
                rates[name].append(rate(encode, pixels, batch, args.seconds))
        for name in runtimes:
            line = f"{name:<30} {batch:>5}"
            for column, width in ((0, 7), (1, 9)):
                ratio = statistics.median(r[column] / b[column] for r, b in zip(rates[name], rates[base]))
                line += f" {statistics.median(r[column] for r in rates[name]):>{width}.1f} {ratio:>10.2f}"
            print(f"{line} {fidelity[name]:>8.5f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
