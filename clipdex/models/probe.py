"""A model's identity checked by its vectors: one probe image and three probe texts.

An index keys vectors by :attr:`~clipdex.models.spec.ModelSpec.key`, and a model may now come
from several sources (exported here, a ready ONNX export on the hub or in a folder, torch on a
GPU) that each claim a key: an ONNX export through its clipdex.json or Immich's ``ARCH__TAG``
name. A claim is not proof. A mislabelled folder, a re-exported repository or other weights
under the same name would silently mix vectors that cannot be compared. So the index records
the vectors its model gives for a fixed probe (:func:`probe_vectors`), and a source new to it
must give the same vectors (:func:`min_cosine` at least :data:`MIN_PROBE_COSINE`) before its
vectors join the index's.

The probe image is computed from integer formulas, not drawn from a random generator, so it is
the same on every machine and every numpy; one image and three texts cost a few milliseconds
on a ViT-B model. Nothing here imports torch or a runtime library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from clipdex.models.encoder import Encoder

PROBE_SIDE = 256  # pixels: the size of most models' resize or larger (models at 336-384 px scale it up)
PROBE_TEXTS = (
    "a photo of a dog playing in the snow",
    "a red car parked on a city street at night",
    "a bowl of fruit on a wooden kitchen table",
)
IMAGE, TEXT = "image", "text"
TOWERS = (IMAGE, TEXT)  # the probe's rows: the image's first, then the texts'
# Vectors of one model from any runtime, source or precision agree far above this (fp32, bf16 and
# int8 of real models at > 0.998; the tiny test model's fp32 from ONNX Runtime and torch at
# > 0.9999), while two different models, even of one architecture, fall far below it.
MIN_PROBE_COSINE = 0.99


def probe_image() -> "Image.Image":
    """The probe image: 256x256 RGB, colour gradients with a disk, a square and stripes on them
    (content in every region and at several scales, so that a crop or a resize that differs
    shows), computed with integer arithmetic only."""
    from PIL import Image

    y, x = np.mgrid[0:PROBE_SIDE, 0:PROBE_SIDE].astype(np.int64)
    pixels = np.stack([x, y, (x + y) // 2], axis=-1)
    disk = (x - 88) ** 2 + (y - 96) ** 2 < 44 ** 2
    pixels[disk] = (226, 44, 38)
    square = (x >= 150) & (x < 214) & (y >= 140) & (y < 204)
    pixels[square] = (30, 164, 62)
    stripes = (y >= 28) & (y < 60) & ((x // 8) % 2 == 0)
    pixels[stripes] = (250, 250, 250)
    ring = np.abs((x - 190) ** 2 + (y - 64) ** 2 - 26 ** 2) < 160
    pixels[ring] = (20, 30, 200)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def rows_of(towers: Sequence[str]) -> list[int]:
    """The probe's rows that hold ``towers``' vectors (0: the image; 1, 2, 3: the texts)."""
    unknown = set(towers) - set(TOWERS)
    if unknown:
        raise ValueError(f"unknown towers {sorted(unknown)}; use {', '.join(TOWERS)}")
    return ([0] if IMAGE in towers else []) + ([1 + i for i in range(len(PROBE_TEXTS))] if TEXT in towers else [])


def probe_vectors(encoder: "Encoder", towers: Sequence[str] = TOWERS) -> np.ndarray:
    """``encoder``'s vectors for the probe, float32, (len(rows_of(towers)), dim): the image's
    (through :meth:`~clipdex.models.encoder.Encoder.preprocess` and ``encode_images``, the path
    the indexer takes) when ``towers`` holds 'image', then the texts' when it holds 'text'."""
    rows = rows_of(towers)
    parts = []
    if IMAGE in towers:
        pixels = encoder.preprocess(probe_image())
        parts.append(np.asarray(encoder.encode_images(np.stack([pixels])), dtype=np.float32))
    if TEXT in towers:
        parts.append(np.asarray(encoder.encode_texts(list(PROBE_TEXTS)), dtype=np.float32))
    vectors = np.concatenate(parts)
    assert len(vectors) == len(rows)
    return vectors


def min_cosine(recorded: np.ndarray, fresh: np.ndarray) -> float:
    """The least cosine between the rows of two probes (of the same rows), each row
    normalised here: a source passes only when every probe item agrees."""
    if recorded.shape != fresh.shape:
        return -1.0  # another dimension: another model
    a = recorded / np.maximum(np.linalg.norm(recorded, axis=1, keepdims=True), 1e-12)
    b = fresh / np.maximum(np.linalg.norm(fresh, axis=1, keepdims=True), 1e-12)
    return float(np.min(np.sum(a.astype(np.float64) * b, axis=1)))


def source_of(encoder: "Encoder") -> str:
    """Where ``encoder``'s model came from, in words: the encoder's own ``source`` ('hub
    immich-app/ViT-B-32__openai@<rev>', 'folder /path', …), else its runtime and the model's key
    and files (a runtime that does not say yet)."""
    source = getattr(encoder, "source", None)
    if source:
        return str(source)
    spec = encoder.spec
    where = spec.weights or spec.pretrained or spec.name
    return f"{encoder.backend} {spec.key} from {where}"


def towers_named(towers: Sequence[str]) -> str:
    """How messages name the towers a check covered."""
    return "image and texts" if set(towers) == set(TOWERS) else ("image" if IMAGE in towers else "texts")
