"""What every runtime gives: one encoder interface, and how a runtime describes itself.

A runtime (open_clip on torch, Transformers on torch, ONNX Runtime, OpenVINO)
lives in its own module under :mod:`clipdex.models.runtimes` and exposes a
:class:`Runtime`: which model families, devices and precisions it computes, and
how to build its :class:`Encoder`. :func:`clipdex.models.factory.make_encoder`
picks the first runtime of its list that fits a job. Nothing here imports torch
or a runtime library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from clipdex.models.preprocess import PreprocessConfig
    from clipdex.models.registry import ModelSpec

TEXT_BATCH = 256  # prompts per forward pass of a text tower


class Encoder(Protocol):
    """What the indexer, search and classification need from a model.

    ``backend`` is the runtime's name (:attr:`Runtime.name`); ``device`` where it
    runs ('cpu', 'cuda', 'cuda:1', 'mps'); ``precision`` one of
    :data:`clipdex.models.precision.CONCRETE`; ``device_tensors`` whether
    :meth:`encode_images` also takes a uint8 torch tensor already on its device (JPEGs
    decoded there, :mod:`clipdex.models.gpu_decode`), so the indexer hands it over as it is.
    """

    spec: "ModelSpec"
    precision: str
    device: str
    backend: str
    device_tensors: bool

    def load(self) -> Any:
        """Build the model now (it is otherwise built on first use); returns the encoder."""
        ...

    @property
    def dim(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    @property
    def preprocess_config(self) -> "PreprocessConfig":
        """How the model's photos are resized, cropped and normalised (its own processor's rules)."""
        ...

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale): the temperature of the model's scores."""
        ...

    @property
    def logit_bias(self) -> float | None:
        """The bias of a model trained with a sigmoid loss (SigLIP): its scores are
        ``sigmoid(logit_scale * cosine + logit_bias)`` per label; None for a softmax model (CLIP)."""
        ...

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """One image as the model takes it: (H, W, 3) uint8, resized and cropped
        (normalising happens batched, in the model's graph or on its device), or
        (3, H, W) float32 already normalised where only open_clip's own transform
        can prepare it."""
        ...

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """L2-normalised float32 vectors for a stack of :meth:`preprocess` outputs (a torch
        encoder also takes them as a uint8 tensor already on its device: JPEGs decoded there)."""
        ...

    def encode_pil(self, images: Sequence["Image.Image"]) -> np.ndarray:
        """Vectors for PIL images: :meth:`preprocess` each, then :meth:`encode_images`."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors for texts, (len(texts), dim)."""
        ...


@dataclass(frozen=True)
class Runtime:
    """One way of running models, as the factory sees it.

    ``families`` are the model families it loads ('open_clip', 'hf'); ``precisions``
    what it computes on each device kind ('cpu', 'cuda', 'mps'): ``{"cpu": ("fp32",
    "int8")}``. ``build(spec, precision, device)`` returns an :class:`Encoder` (checks
    that need the hardware or an optional package raise
    :class:`~clipdex.errors.ModelError` with what to use instead). ``label`` is how
    messages name it.
    """

    name: str
    label: str
    families: tuple[str, ...]
    precisions: Mapping[str, tuple[str, ...]]
    build: Callable[["ModelSpec", str, str], Encoder]

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.precisions)

    def fits(self, family: str, device_kind: str, precision: str) -> bool:
        return family in self.families and precision in self.precisions.get(device_kind, ())


class LazyEncoder:
    """An encoder made on first use: an unchanged folder is re-indexed without importing torch."""

    def __init__(self, factory: Callable[[], Encoder]) -> None:
        self._factory = factory
        self._encoder: Encoder | None = None

    def __getattr__(self, name: str) -> Any:
        if self._encoder is None:
            self._encoder = self._factory()
        return getattr(self._encoder, name)


def encode_pil(encoder: Encoder, images: Sequence["Image.Image"]) -> np.ndarray:
    """:meth:`Encoder.encode_pil` for runtimes whose :meth:`~Encoder.preprocess` gives one array per image."""
    if not images:
        return np.zeros((0, encoder.dim), np.float32)
    return encoder.encode_images(np.stack([encoder.preprocess(im) for im in images]))
