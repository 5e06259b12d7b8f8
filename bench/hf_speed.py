"""Transformers checkpoints: the tutorial's Transformers loop vs `clipdex index --model hf:DIR`, same photos.

    python bench/hf_speed.py --make-random /tmp/hf-clip-b32      # once: a random CLIPModel, ViT-B/32's size
    python bench/hf_speed.py --checkpoint /tmp/hf-clip-b32 [--photos 200] [--rounds 2]

The tutorial's second half: ``CLIPProcessor`` on PIL images and
``CLIPModel.get_image_features`` in batches of 100 (torch fp32). Against it,
`clipdex index` with the same checkpoint in each CPU precision (fp32 through ONNX
Runtime, bf16 through OpenVINO where the processor has it natively, int8), each in
a fresh process, rounds interleaved. Prints the CPU, img/s end to end, the ratio to
the tutorial's loop, and the cosine between clipdex's stored vectors and the
tutorial's (min, mean): the checkpoint's own preprocessing, reproduced.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import cpu_line  # sibling modules, not a package
from index_speed import SHARED, TUTORIAL_BATCH, cosines, isolated, settle

from clipdex import Index
from clipdex.errors import ModelError
from clipdex.models.factory import make_encoder
from clipdex.models.registry import resolve_model


def make_random(folder: Path) -> None:
    """A CLIPModel with CLIPConfig's defaults (openai/clip-vit-base-patch32's shape), random
    weights, CLIP's BPE tokenizer and the default CLIPImageProcessor (224 px, bicubic)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from tests.hf_checkpoints import clip_tokenizer

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)  # type: ignore[attr-defined]
    CLIPImageProcessor().save_pretrained(folder)
    print(f"saved a random CLIPModel (ViT-B/32 size) to {folder}")


def tutorial_loop(paths: list[Path], checkpoint: str) -> tuple[float, dict[str, np.ndarray]]:
    """PIL open -> CLIPProcessor -> batches of 100 -> get_image_features (torch fp32, CPU)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(checkpoint).eval()
    processor = CLIPProcessor.from_pretrained(checkpoint)
    vectors = {}
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), TUTORIAL_BATCH):
            chunk = paths[i:i + TUTORIAL_BATCH]
            inputs = processor(images=[Image.open(p) for p in chunk], return_tensors="pt")
            features = model.get_image_features(**inputs)
            features = getattr(features, "pooler_output", features)
            features = features / features.norm(dim=-1, keepdim=True)
            vectors.update({str(p): f for p, f in zip(chunk, features.numpy())})
    return len(paths) / (time.perf_counter() - started), vectors


def clipdex_index(folder: Path, model: str, precision: str) -> tuple[float, dict[str, np.ndarray]]:
    with tempfile.TemporaryDirectory() as tmp, Index.open(Path(tmp) / "idx", model=model, device="cpu",
                                                          precision=precision, create=True) as index:
        report = index.add(folder)
        found = index.searchable()
        vectors = {os.path.realpath(p): v for p, v in zip(found.paths, found.vectors)}
    return report.encoded / report.encode_seconds, vectors


def _runs_here(model: str, precision: str) -> str | None:
    """None where ``precision`` runs here (exporting the model once), else why not."""
    try:
        make_encoder(resolve_model(model), device="cpu", precision=precision).load()
    except ModelError as e:
        return str(e)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a save_pretrained CLIPModel folder")
    parser.add_argument("--make-random", metavar="DIR", help="save a random ViT-B/32-size CLIPModel to DIR")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    args = parser.parse_args()
    if args.make_random:
        make_random(Path(args.make_random))
        return
    if not args.checkpoint:
        parser.error("pass --checkpoint DIR (make one with --make-random DIR)")
    checkpoint = os.path.abspath(args.checkpoint)
    model = f"hf:{checkpoint}"
    print(cpu_line())
    precisions = []
    for precision in args.precisions.split(","):
        why = isolated(_runs_here, model, precision)
        if why:
            print(f"--precision {precision} left out: {why}")
        else:
            precisions.append(precision)
    sources = sorted(SHARED.glob("*.jpg"))[:args.photos]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for src in sources:
            (folder / src.name).symlink_to(src)
        paths = sorted(folder.iterdir())
        rates: dict[str, list[float]] = {p: [] for p in ["tutorial", *precisions]}
        fidelity = {}
        for _ in range(args.rounds):
            rate, reference = isolated(tutorial_loop, paths, checkpoint)
            rates["tutorial"].append(rate)
            for precision in precisions:
                settle()
                rate, ours = isolated(clipdex_index, folder, model, precision)
                rates[precision].append(rate)
                fidelity[precision] = cosines(ours, reference)
    base = statistics.median(rates["tutorial"])
    print(f"{len(sources)} unsplash photos, checkpoint {Path(checkpoint).name}; {args.rounds} interleaved rounds, "
          "medians")
    print(f"{'path':<44} {'img/s':>7} {'x tutorial':>10} {'cos min':>8} {'cos mean':>8}")
    print(f"{'tutorial (CLIPProcessor + CLIPModel, b=100)':<44} {base:>7.1f} {1.0:>10.2f}")
    for precision in precisions:
        rate = statistics.median(rates[precision])
        low, mean = fidelity[precision]
        print(f"{'clipdex index --precision ' + precision:<44} {rate:>7.1f} {rate / base:>10.2f} "
              f"{low:>8.5f} {mean:>8.5f}")


if __name__ == "__main__":
    main()
