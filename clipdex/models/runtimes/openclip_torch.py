"""open_clip models on torch: GPUs in fp32, bf16 and fp16, and the ONNX export of open_clip models.

The model is built through open_clip's own factory
(``open_clip.create_model_and_transforms``) on first use; importing this module
does not import torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.errors import ModelError
from clipdex.models.devices import pick_device
from clipdex.models.encoder import Encoder, Runtime
from clipdex.models.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessConfig, fit
from clipdex.models.registry import ModelSpec
from clipdex.models.runtimes._torch import (
    TORCH_PRECISIONS,
    TorchModelEncoder,
    check_precision,
    image_tower,
    to_onnx,
)
from clipdex.models.weights import locate_weights, pretrained_config
from clipdex.settings import cache_dir

if TYPE_CHECKING:
    import torch
    from PIL import Image



def _build(spec: ModelSpec, precision: str, device: str) -> Encoder:
    return TorchEncoder(spec, device=device, precision=precision)


RUNTIME = Runtime("torch", "torch (open_clip)", families=("open_clip",), precisions=TORCH_PRECISIONS,
                  build=_build)


def torch_encoder(spec: ModelSpec, device: str = "cpu") -> "TorchEncoder":
    """An fp32 encoder of ``spec`` on ``device`` (texts for the ONNX runtime, where the
    model's tokenizer is one only open_clip has)."""
    return TorchEncoder(spec, device=device)


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


class TorchEncoder(TorchModelEncoder):
    """A lazily built open_clip model with its preprocessing and tokenizer."""

    backend = "torch"

    def __init__(self, spec: ModelSpec, device: str | None = None, precision: str = "fp32") -> None:
        super().__init__(spec, device, precision)
        self._preprocess: Callable[["Image.Image"], "torch.Tensor"] | None = None
        self._tokenizer: Any = None

    def _build(self) -> None:
        import open_clip

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
        device = pick_device(self._requested_device)
        check_precision(device, self.precision)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch,
                pretrained=checkpoint,
                device=device,
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
        merged = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = model.visual.image_size
        pre = PreprocessConfig(
            int(size[0] if isinstance(size, (tuple, list)) else size),
            tuple(merged.get("mean") or OPENAI_MEAN),  # type: ignore[arg-type]
            tuple(merged.get("std") or OPENAI_STD),  # type: ignore[arg-type]
            merged.get("interpolation") or "bicubic", merged.get("resize_mode") or "shortest")
        self._tokenizer = open_clip.get_tokenizer(spec.arch)
        self._preprocess = preprocess
        self._ready(model, pre, device)

    @property
    def dim(self) -> int:
        model = self.model
        proj = getattr(model.visual, "output_dim", None)
        if proj:
            return int(proj)
        return int(self.encode_texts(["a photo"]).shape[1])

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """open_clip's evaluation transform for this model: 8-bit resize and crop
        (same pixels, without torch in the workers), else its own transform."""
        cfg = self.preprocess_config
        if cfg.supported:
            return fit(image, cfg)
        assert self._preprocess is not None
        return self._preprocess(image).numpy()

    def _image_features(self, pixels: "torch.Tensor") -> "torch.Tensor":
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> "torch.Tensor":
        return self.model.encode_text(self._tokenizer(texts).to(self.device))


# -- ONNX export ----------------------------------------------------------------

def _attention(attn: Any, x: Any, mask: Any) -> Any:
    """nn.MultiheadAttention's self-attention (batch first), written with shapes that stay
    symbolic in the ONNX trace (torch's own bakes the sequence length in)."""
    import torch.nn.functional as F

    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out_proj(out.transpose(1, 2).flatten(-2))


def export(spec: ModelSpec, work: Path) -> dict[str, Any]:
    """Export both towers of the open_clip model into ``work`` (see
    :func:`clipdex.models.onnx_export._export` for what is written and returned)."""
    import torch
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transformer import text_global_pool

    from clipdex.models.onnx_export import TEXT_FILE, VISUAL_FILES

    torch_encoder = TorchEncoder(spec, device="cpu").load()
    model = torch_encoder.model
    pre = torch_encoder.preprocess_config
    # With a causal mask and argmax (end-of-text) pooling, tokens after the end of
    # the text change nothing: the exported text tower takes only as many
    # positions as the longest text needs (a 3-token query costs 3, not 77).
    trims = (type(model) is CLIP and getattr(model, "text_pool_type", "") == "argmax"
             and all(type(b.attn) is torch.nn.MultiheadAttention and not getattr(b, "ln_1_kv", None)
                     for b in model.transformer.resblocks)
             and getattr(model.transformer, "batch_first", True))

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            m = self.clip
            if not trims:
                return m.encode_text(tokens, normalize=True)
            length = tokens.shape[1]
            x = m.token_embedding(tokens) + m.positional_embedding[:length]
            mask = m.attn_mask[:length, :length]
            for block in m.transformer.resblocks:
                x = x + block.ls_1(_attention(block.attn, block.ln_1(x), mask))
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            x = text_global_pool(m.ln_final(x), tokens, m.text_pool_type,
                                 eos_token_id=getattr(m, "text_eos_id", None))
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
            return torch.nn.functional.normalize(x, dim=-1)

    tokenizer = torch_encoder._tokenizer
    clip_bpe = (type(tokenizer) is SimpleTokenizer and getattr(tokenizer, "reduction_fn", None) is None
                and tokenizer.clean_fn.__name__ == "_clean_lower")
    size = torch_encoder.image_size
    to_onnx(image_tower(model, model.encode_image, pre), (torch.zeros(2, size, size, 3, dtype=torch.uint8),),
            work / VISUAL_FILES["fp32"], ["pixels"], {"pixels": {0: "batch"}})
    if clip_bpe:
        tokens = tokenizer(["a photo", "a photo of a dog in the snow"])
        to_onnx(Text().eval(), (tokens,), work / TEXT_FILE, ["tokens"], {"tokens": {0: "batch", 1: "length"}})
    return {
        "dim": torch_encoder.dim, "logit_scale": torch_encoder.logit_scale,
        "logit_bias": torch_encoder.logit_bias, **pre.to_meta(),
        "tokenizer": "clip-bpe" if clip_bpe else None, "trim_tokens": bool(trims),
        "context_length": int(getattr(tokenizer, "context_length", 77) or 77),
    }
