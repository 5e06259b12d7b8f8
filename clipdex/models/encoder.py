"""Turn images and texts into L2-normalised vectors with an open_clip model.

The model is built through open_clip's own factory
(``open_clip.create_model_and_transforms``) and loaded on first use, once per
encoder; importing this module does not import torch.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from clipdex.errors import ModelError
from clipdex.models.registry import ModelSpec
from clipdex.models.weights import locate_weights, pretrained_config
from clipdex.settings import cache_dir, preferred_device

if TYPE_CHECKING:
    import torch
    from PIL import Image

TEXT_BATCH = 256  # prompts per forward pass of the text tower


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given, else CLIPDEX_DEVICE, else CUDA, then Apple MPS, then CPU."""
    import torch

    wanted = requested or preferred_device()
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"device {wanted!r} was asked for but CUDA is not available here. "
                             "Use --device cpu, or install a CUDA build of torch.")
        if wanted == "mps" and not torch.backends.mps.is_available():
            raise ModelError("device 'mps' was asked for but Apple MPS is not available here. "
                             "Use --device cpu.")
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Make a custom architecture known to open_clip under ``name``."""
    import open_clip

    folder = cache_dir() / "model_configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    text = json.dumps(config, indent=2, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    open_clip.add_model_config(path)


class Encoder:
    """A lazily built open_clip model with its preprocessing and tokenizer."""

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        self.spec = spec
        self._requested_device = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._preprocess: Callable[["Image.Image"], "torch.Tensor"] | None = None
        self._tokenizer: Any = None
        self.device = ""

    # -- building -------------------------------------------------------------
    def load(self) -> "Encoder":
        """Build the model now (it is otherwise built on first use)."""
        with self._lock:
            if self._model is None:
                self._build()
        return self

    def _build(self) -> None:
        import open_clip
        import torch

        spec = self.spec
        if spec.config is not None:
            register_model_config(spec.arch, spec.config)
        elif spec.arch not in open_clip.list_models():
            raise ModelError(
                f"{spec.arch!r} is not an open_clip architecture. Pick one of "
                "open_clip.list_models(), or describe it with --model-config FILE.json."
            )
        cfg = pretrained_config(spec)
        checkpoint = locate_weights(spec)
        self.device = pick_device(self._requested_device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch,
                pretrained=checkpoint,
                device=self.device,
                force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                image_mean=cfg.get("mean"),
                image_std=cfg.get("std"),
                image_interpolation=cfg.get("interpolation"),
                image_resize_mode=cfg.get("resize_mode"),
            )
        except RuntimeError as e:
            raise ModelError(
                f"cannot load weights {checkpoint} into architecture {spec.arch!r}: "
                f"{str(e).splitlines()[0]}. Check that the file was saved from this "
                "architecture (or pass the matching --model / --model-config)."
            ) from e
        model.eval()
        self._model = model
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(spec.arch)
        torch.set_grad_enabled(False)

    @property
    def model(self) -> Any:
        if self._model is None:
            self.load()
        return self._model

    # -- facts about the model ------------------------------------------------
    @property
    def dim(self) -> int:
        model = self.model
        proj = getattr(model.visual, "output_dim", None)
        if proj:
            return int(proj)
        return int(self.encode_texts(["a photo"]).shape[1])

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale): the temperature CLIP's softmax over classes uses."""
        return float(self.model.logit_scale.exp().item())

    # -- encoding -------------------------------------------------------------
    def preprocess(self, image: "Image.Image") -> "torch.Tensor":
        """open_clip's evaluation transform for this model (resize, crop, normalise)."""
        if self._preprocess is None:
            self.load()
        assert self._preprocess is not None
        return self._preprocess(image)

    def encode_images(self, batch: "torch.Tensor") -> np.ndarray:
        """Vectors for a preprocessed batch (N, 3, H, W), L2-normalised, float32."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(batch.to(self.device), normalize=True)
        return features.float().cpu().numpy()

    def encode_pil(self, images: Sequence["Image.Image"]) -> np.ndarray:
        import torch

        return self.encode_images(torch.stack([self.preprocess(im) for im in images]))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for texts, L2-normalised, float32."""
        import torch

        model = self.model
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), TEXT_BATCH):
                tokens = self._tokenizer(list(texts[start:start + TEXT_BATCH])).to(self.device)
                out.append(model.encode_text(tokens, normalize=True).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)
