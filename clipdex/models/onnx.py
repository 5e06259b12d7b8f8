"""The ONNX Runtime encoder: open_clip's towers exported once, then run without torch.

On the first use of a model, its image and text towers are exported from the
open_clip model (torch.onnx) into ``$CLIPDEX_HOME/cache/onnx/<model>/``, with
``meta.json`` (dimension, preprocessing, logit scale). ``int8`` is ONNX
Runtime's dynamic quantisation of the image tower. Every later process loads
the exported files with onnxruntime alone: no torch, no open_clip, so a cold
``clipdex search`` answers in about a second.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipdex.errors import ModelError
from clipdex.models.precision import require
from clipdex.models.preprocess import PreprocessConfig, check_pixels, fit
from clipdex.models.registry import ModelSpec
from clipdex.settings import cache_dir

log = logging.getLogger(__name__)
OPSET = 17
EXPORT_VERSION = 3  # bump to re-export every cached model
TEXT_BATCH = 64
ONNX_PRECISIONS = ("fp32", "int8")
# The file each precision's image tower lives in. int8 recipe 2: every MatMul,
# per-channel 7-bit weights (recipe 1's 8-bit weights saturated AVX2's
# multiply-add without VNNI: cosine to fp32 fell to 0.989; now 0.9997).
VISUAL_FILES = {"fp32": "visual-fp32.onnx", "int8": "visual-int8-r2.onnx"}
STALE_TEMP_S = 3600  # a temporary export older than this is abandoned, whoever made it
# Temporary exports and quantisations carry the pid of the process writing them, so
# that a later export can tell the leftovers of a killed run (pid gone) from work
# in progress: "<model>-vN.tmp-<pid>-<random>/" and "visual-int8-r2.<pid>.tmp".
TEMP_EXPORT = re.compile(r".+\.tmp-(\d+)-[A-Za-z0-9_]+")
TEMP_QUANTISED = re.compile(r".+\.(\d+)\.tmp")
LEGACY_TEMP_EXPORT = re.compile(r".+-v\d+\.[a-z0-9_]{8}")  # mkdtemp's names before the pid was in them


def export_dir(spec: ModelSpec) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.key)
    return cache_dir() / "onnx" / f"{slug}-v{EXPORT_VERSION}"


def read_meta(spec: ModelSpec) -> dict[str, Any] | None:
    try:
        return json.loads((export_dir(spec) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def ensure_exported(spec: ModelSpec, precision: str = "fp32") -> dict[str, Any]:
    """The export of ``spec`` (its meta.json), exporting and quantising what is missing."""
    folder = export_dir(spec)
    meta = read_meta(spec)
    if meta is None or not (folder / VISUAL_FILES["fp32"]).exists():
        remove_stale_exports(folder.parent)
        log.info("preparing %s for ONNX Runtime: exporting it once (about 20 s for ViT-B-32) "
                 "into %s", spec.name, folder)
        _export(spec, folder)
        meta = read_meta(spec)
        if meta is None:
            raise ModelError(f"exporting {spec.name} left no readable {folder / 'meta.json'}; "
                             f"delete {folder} and run again.")
    target = folder / VISUAL_FILES[precision]
    if precision == "int8" and not target.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        log.info("quantising %s to int8 (once per model)", spec.name)

        remove_stale_exports(folder)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs advice meant for its developers
        try:
            # reduce_range: 7-bit weights, so that u8 x s8 products summed in pairs
            # cannot overflow int16 on CPUs without VNNI (AVX2's vpmaddubsw).
            quantize_dynamic(str(folder / VISUAL_FILES["fp32"]), str(tmp), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            root.setLevel(level)
        (folder / "visual-int8.onnx").unlink(missing_ok=True)  # recipe 1's, if any
    return meta


def remove_stale_exports(folder: Path, now: float | None = None) -> list[Path]:
    """Delete the temporary exports in ``folder`` that a killed process left behind.

    One is stale when the process named in it is gone, or when it is older than
    :data:`STALE_TEMP_S` (a pid may be reused). Returns what was removed.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_EXPORT.fullmatch(entry.name) or TEMP_QUANTISED.fullmatch(entry.name)
        if match is None and not LEGACY_TEMP_EXPORT.fullmatch(entry.name):
            continue
        try:
            old = now - entry.stat().st_mtime > STALE_TEMP_S
        except OSError:
            continue
        if not old and (match is None or _process_alive(int(match.group(1)))):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d unfinished ONNX export(s) left by a stopped process in %s",
                 len(removed), folder)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _attention(attn: Any, x: Any, mask: Any) -> Any:
    """nn.MultiheadAttention's self-attention (batch first), written with shapes that stay
    symbolic in the ONNX trace (torch's own bakes the sequence length in)."""
    import torch.nn.functional as F

    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.out_proj(out.transpose(1, 2).flatten(-2))


def _export(spec: ModelSpec, folder: Path) -> None:
    """Export both towers of the open_clip model (needs torch, once per model)."""
    import torch
    from open_clip.tokenizer import SimpleTokenizer

    from clipdex.models.encoder import TorchEncoder

    torch_encoder = TorchEncoder(spec, device="cpu").load()
    model = torch_encoder.model

    pre = torch_encoder.preprocess_config
    scale, shift = (torch.tensor(v).view(1, 3, 1, 1) for v in pre.scale_shift())

    class Visual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            # 8-bit (N, H, W, 3) in: normalising here runs batched on ONNX Runtime's
            # threads instead of costing the decode workers ~1 ms an image.
            x = pixels.permute(0, 3, 1, 2).float() * scale - shift
            return self.clip.encode_image(x, normalize=True)

    from open_clip.model import CLIP
    from open_clip.transformer import text_global_pool

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
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-{os.getpid()}-", dir=folder.parent))
    try:
        size = torch_encoder.image_size
        # Grad mode on: with it off, nn.MultiheadAttention takes a fused fast path
        # that the ONNX exporter cannot translate.
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but works
            torch.onnx.export(Visual().eval(), (torch.zeros(2, size, size, 3, dtype=torch.uint8),),
                              str(work / "visual-fp32.onnx"),
                              input_names=["pixels"], output_names=["vectors"], opset_version=OPSET,
                              dynamic_axes={"pixels": {0: "batch"}, "vectors": {0: "batch"}},
                              dynamo=False)
            if clip_bpe:
                tokens = tokenizer(["a photo", "a photo of a dog in the snow"])
                torch.onnx.export(Text().eval(), (tokens,), str(work / "text-fp32.onnx"),
                                  input_names=["tokens"], output_names=["vectors"], opset_version=OPSET,
                                  dynamic_axes={"tokens": {0: "batch", 1: "length"}, "vectors": {0: "batch"}},
                                  dynamo=False)
        meta = {
            "key": spec.key, "dim": torch_encoder.dim, "logit_scale": torch_encoder.logit_scale,
            "image_size": size, "mean": list(pre.mean), "std": list(pre.std),
            "interpolation": pre.interpolation, "resize_mode": pre.resize_mode,
            "tokenizer": "clip-bpe" if clip_bpe else None, "trim_tokens": bool(trims),
            "context_length": int(getattr(tokenizer, "context_length", 77) or 77),
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work, folder)
        stem = folder.name[:-len(f"-v{EXPORT_VERSION}")]
        for old in folder.parent.iterdir():  # older export formats of this model
            match = re.fullmatch(re.escape(stem) + r"-v(\d+)", old.name)
            if match and int(match.group(1)) < EXPORT_VERSION:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


class OnnxEncoder:
    """Same interface as :class:`~clipdex.models.encoder.TorchEncoder`, on ONNX Runtime (CPU)."""

    backend = "onnx"

    def __init__(self, spec: ModelSpec, precision: str = "fp32", threads: int | None = None) -> None:
        require(precision, ONNX_PRECISIONS, "ONNX Runtime")
        self.spec = spec
        self.precision = precision
        self.device = "cpu"
        self.threads = threads
        self._lock = threading.Lock()
        self._meta: dict[str, Any] | None = None
        self._cfg: PreprocessConfig | None = None
        self._visual: Any = None
        self._text: Any = None
        self._tokenizer: Any = None
        self._torch_text: Any = None

    # -- building -------------------------------------------------------------
    def load(self) -> "OnnxEncoder":
        self._ensure_meta()
        self._visual_session()
        return self

    def _ensure_meta(self) -> dict[str, Any]:
        if self._meta is None:
            with self._lock:
                if self._meta is None:
                    self._meta = ensure_exported(self.spec, self.precision)
        assert self._meta is not None
        return self._meta

    def _session(self, name: str) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(export_dir(self.spec) / name), options,
                                    providers=["CPUExecutionProvider"])

    def _visual_session(self) -> Any:
        self._ensure_meta()
        if self._visual is None:
            with self._lock:
                if self._visual is None:
                    self._visual = self._session(VISUAL_FILES[self.precision])
        return self._visual

    # -- facts ----------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._ensure_meta()["dim"])

    @property
    def image_size(self) -> int:
        return int(self._ensure_meta()["image_size"])

    @property
    def logit_scale(self) -> float:
        return float(self._ensure_meta()["logit_scale"])

    @property
    def preprocess_config(self) -> PreprocessConfig:
        if self._cfg is None:  # read once: preprocess() asks for it for every photo
            m = self._ensure_meta()
            self._cfg = PreprocessConfig(m["image_size"], tuple(m["mean"]), tuple(m["std"]),  # type: ignore[arg-type]
                                         m["interpolation"], m["resize_mode"])
        return self._cfg

    # -- encoding -------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(H, W, 3) uint8, resized and cropped; the exported model normalises."""
        cfg = self.preprocess_config
        if not cfg.supported:
            raise ModelError(f"resize mode {cfg.resize_mode!r} of {self.spec.name} is not supported "
                             "by the ONNX path; use --precision with --device cpu through torch.")
        return fit(image, cfg)

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        check_pixels(batch)
        session = self._visual_session()
        (vectors,) = session.run(None, {"pixels": np.ascontiguousarray(batch)})
        return np.asarray(vectors, dtype=np.float32)

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_images(np.stack([self.preprocess(im) for im in images]))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        meta = self._ensure_meta()
        if meta.get("tokenizer") != "clip-bpe":  # a tokenizer only open_clip has: texts via torch
            if self._torch_text is None:
                from clipdex.models.encoder import TorchEncoder

                self._torch_text = TorchEncoder(self.spec, device="cpu")
            return self._torch_text.encode_texts(texts)
        if self._text is None:
            from clipdex.models.tokenizer import ClipTokenizer

            with self._lock:
                if self._text is None:
                    self._tokenizer = ClipTokenizer(meta["context_length"])
                    self._text = self._session("text-fp32.onnx")
        out = []
        for i in range(0, len(texts), TEXT_BATCH):
            tokens = self._tokenizer(list(texts[i:i + TEXT_BATCH]))
            if meta.get("trim_tokens"):
                tokens = tokens[:, :int((tokens != 0).sum(axis=1).max())]
            out.append(self._text.run(None, {"tokens": tokens})[0])
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32)
