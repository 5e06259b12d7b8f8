"""Hugging Face Transformers checkpoints (CLIPModel, SiglipModel) on torch, and their ONNX export.

The model is loaded with ``from_pretrained`` from its folder
(:func:`clipdex.models.hf.locate`) on first use, and run through its own
``get_image_features`` / ``get_text_features``; photos are prepared as the
checkpoint's image processor prepares them (:func:`clipdex.models.hf.checkpoint_facts`,
reproduced by :func:`~clipdex.models.preprocess.fit` in the decode workers) and
texts by its own tokenizer. Importing this module imports neither torch nor
transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipdex.errors import ModelError, first_line
from clipdex.models.devices import pick_device
from clipdex.models.encoder import Encoder, Runtime
from clipdex.models.hf import HfFacts, checkpoint_facts, locate
from clipdex.models.hf_tokenizer import TEXT_INPUTS, TOKENIZER_FILE
from clipdex.models.runtimes._torch import (
    TORCH_PRECISIONS,
    TorchModelEncoder,
    check_precision,
    image_tower,
    to_onnx,
)
from clipdex.models.spec import ModelSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'clipdex[hf]'"


def _build(spec: ModelSpec, precision: str, device: str) -> Encoder:
    return HfTorchEncoder(spec, device=device, precision=precision)


RUNTIME = Runtime("transformers", "torch (Transformers)", families=("hf",), precisions=TORCH_PRECISIONS,
                  build=_build)


def torch_encoder(spec: ModelSpec, device: str = "cpu") -> "HfTorchEncoder":
    """An fp32 encoder of ``spec`` on ``device`` (texts for the ONNX runtime, where the
    checkpoint's tokenizer has no tokenizer.json that runs without transformers)."""
    return HfTorchEncoder(spec, device=device)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelError(f"Transformers checkpoints need the transformers package: {INSTALL_HINT}") from None
    return transformers


def _features(output: Any) -> "torch.Tensor":
    """Transformers 5 returns a model output whose ``pooler_output`` holds the projected
    features; Transformers 4 the tensor itself."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_model(folder: Path, facts: HfFacts, spec: ModelSpec, **kwargs: Any) -> Any:
    """The checkpoint's CLIPModel or SiglipModel, in eval mode, on the CPU, in float32 whatever
    dtype it was saved in (Transformers 5 would keep a fine-tune's bf16 or fp16: an "fp32" export
    with half weights, or one ONNX Runtime cannot run); fp16 and bf16 are made from it."""
    import torch

    transformers = _transformers()
    cls = getattr(transformers, facts.model_class)
    logging_ = transformers.utils.logging
    bars, verbosity = logging_.is_progress_bar_enabled(), logging_.get_verbosity()
    logging_.disable_progress_bar()  # a bar per load of a local file is noise
    logging_.set_verbosity_error()  # its load report and config advice: what matters is checked below
    dtype = {"dtype": torch.float32} if int(transformers.__version__.split(".")[0]) >= 5 else \
        {"torch_dtype": torch.float32}
    try:
        model, info = cls.from_pretrained(folder, output_loading_info=True, **dtype, **kwargs)
    except Exception as e:  # safetensors, torch and Transformers raise their own for a damaged file
        raise ModelError(f"cannot load the {facts.model_class} of {spec.name} from {folder}: {first_line(e)}. "
                         "Check that the folder was written by save_pretrained of that model, completely "
                         "(a damaged or partly copied weights file: copy or download it again).") from e
    finally:
        logging_.set_verbosity(verbosity)
        if bars:
            logging_.enable_progress_bar()
    _check_loaded(info, facts, spec, folder)
    return model.float().eval()


def _check_loaded(info: dict[str, Any], facts: HfFacts, spec: ModelSpec, folder: Path) -> None:
    """Refuse a checkpoint whose weights do not all fit the model: Transformers would fill the
    missing ones with random values (a Lightning or wrapper fine-tune saved with a prefix, a
    tower left out), and every vector would be meaningless without a word said."""
    missing, mismatched = sorted(info.get("missing_keys") or ()), list(info.get("mismatched_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    if missing or mismatched:
        shown = ", ".join(missing[:3] or [str(m[0] if isinstance(m, tuple) else m) for m in mismatched[:3]])
        hint = (f" Its file names them differently ({', '.join(unexpected[:2])}, …): was it saved from a wrapper "
                "of the model? Save the model itself with model.save_pretrained(folder)." if unexpected else "")
        raise ModelError(f"the weights in {folder} do not fit its {facts.model_class}: {len(missing)} missing "
                         f"and {len(mismatched)} of another shape ({shown}, …), which would be random.{hint}")
    if unexpected:
        log.warning("%s: %d weights in %s are not the %s's and are ignored (%s, …)", spec.name, len(unexpected),
                    folder, facts.model_class, ", ".join(unexpected[:3]))


def load_tokenizer(folder: Path, spec: ModelSpec) -> Any:
    """The checkpoint's own tokenizer (``AutoTokenizer``)."""
    import importlib.util

    transformers = _transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # sentencepiece and protobuf raise their own (RuntimeError, DecodeError)
        hint = ""
        if (folder / "spiece.model").is_file():
            hint = (" Its spiece.model cannot be read: download the checkpoint again."
                    if importlib.util.find_spec("sentencepiece") else
                    f" Its tokenizer is a sentencepiece one (SigLIP's spiece.model): {INSTALL_HINT}.")
        raise ModelError(f"cannot load the tokenizer of {spec.name} from {folder}: {first_line(e)}.{hint} "
                         "Or save the checkpoint's fast tokenizer (tokenizer.json) into the folder.") from e
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)) + 1:
        # Transformers 5 builds a CLIPTokenizer of its special tokens alone from a folder without
        # tokenizer files: every word would be <unk>.
        raise ModelError(f"the tokenizer of {spec.name} has no vocabulary: {folder} holds none of tokenizer.json, "
                         "vocab.json with merges.txt, or spiece.model. Save the checkpoint's tokenizer into it "
                         "(tokenizer.save_pretrained(folder)).")
    return tokenizer


class HfTorchEncoder(TorchModelEncoder):
    """A lazily built Transformers CLIP or SigLIP model with its own preprocessing and tokenizer."""

    backend = "transformers"

    def __init__(self, spec: ModelSpec, device: str | None = None, precision: str = "fp32") -> None:
        super().__init__(spec, device, precision)
        self._tokenizer: Any = None
        self._folder: Path | None = None
        self.facts: HfFacts | None = None

    def _build(self) -> None:
        _transformers()
        folder = locate(self.spec)
        facts = checkpoint_facts(folder)
        device = pick_device(self._requested_device)
        check_precision(device, self.precision)
        model = load_model(folder, facts, self.spec).to(device)
        self._folder = folder
        self.facts = facts
        self._ready(model, facts.preprocess, device)

    def _facts(self) -> HfFacts:
        if self.facts is None:
            self.load()
        assert self.facts is not None
        return self.facts

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer, loaded on the first texts (indexing photos needs none)."""
        if self._tokenizer is None:
            self.load()
            assert self._folder is not None
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = load_tokenizer(self._folder, self.spec)
        return self._tokenizer

    @property
    def dim(self) -> int:
        config = self.model.config
        size = getattr(config, "projection_dim", None) if self._facts().model_type == "clip" else None
        return int(size or config.vision_config.hidden_size)

    def tokens(self, texts: Sequence[str]) -> dict[str, "torch.Tensor"]:
        """The text tower's inputs for ``texts``, as the checkpoint's processor makes them:
        truncated to its length, padded to it (SigLIP) or to the longest text (CLIP)."""
        facts = self._facts()
        encoded = self.tokenizer(list(texts), padding=facts.padding, truncation=True,
                                 max_length=facts.context_length, return_tensors="pt")
        return {name: encoded[name] for name in TEXT_INPUTS if name in encoded}

    def _image_features(self, pixels: "torch.Tensor") -> "torch.Tensor":
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, texts: list[str]) -> "torch.Tensor":
        feeds = {k: v.to(self.device) for k, v in self.tokens(texts).items()}
        return _features(self.model.get_text_features(**feeds))


# -- ONNX export ----------------------------------------------------------------

def _save_tokenizer(tokenizer: Any, work: Path) -> bool:
    """Write the tokenizer Transformers runs for this checkpoint as ``work/tokenizer.json``: its fast
    tokenizer's backend (converted where the checkpoint shipped none), or for SigLIP's sentencepiece
    ``SiglipTokenizer`` (spiece.model, no fast form in Transformers) its conversion by
    :mod:`clipdex.models.spm`, which gives the same ids. False where it has no such form."""
    from tokenizers import Tokenizer

    if tokenizer.pad_token_id is None:
        return False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        plain = Tokenizer.from_str(backend.to_str())
    else:
        from clipdex.models import spm

        if not spm.is_siglip_spm(tokenizer):
            return False
        try:
            plain = spm.from_transformers(tokenizer)
        except ModelError as e:  # texts then go through this runtime
            log.warning("%s: texts will need torch: %s", type(tokenizer).__name__, e)
            return False
    plain.no_padding()
    plain.no_truncation()
    plain.save(str(work / TOKENIZER_FILE))
    return True


def export(spec: ModelSpec, work: Path) -> dict[str, Any]:
    """Export both towers of the checkpoint into ``work`` (see
    :func:`clipdex.models.onnx_export._export` for what is written and returned): the image
    tower takes 8-bit (N, S, S, 3) pixels and normalises them in the graph; the text tower takes
    ``input_ids`` (and ``attention_mask`` where the tokenizer gives one) of any batch and length."""
    import torch

    from clipdex.models.onnx_export import TEXT_FILE, VISUAL_FILES

    folder = locate(spec)
    facts = checkpoint_facts(folder)
    # Eager attention: the traced graph then keeps the text length symbolic.
    model = load_model(folder, facts, spec, attn_implementation="eager")
    pre = facts.preprocess

    try:
        tokenizer = load_tokenizer(folder, spec)
    except ModelError as e:  # photos can still be indexed; texts will say what is missing
        log.warning("%s: exporting the image tower only: %s", spec.name, e)
        tokenizer = None
    inputs = [name for name in TEXT_INPUTS if name in getattr(tokenizer, "model_input_names", ())]

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *feeds: torch.Tensor) -> torch.Tensor:
            features = _features(self.model.get_text_features(**dict(zip(inputs, feeds))))
            return torch.nn.functional.normalize(features, dim=-1)

    size = pre.image_size
    # Texts run without torch only through a tokenizer.json; else through this runtime.
    torch_free = tokenizer is not None and _save_tokenizer(tokenizer, work)
    to_onnx(image_tower(model, lambda x: _features(model.get_image_features(pixel_values=x)), pre),
            (torch.zeros(2, size, size, 3, dtype=torch.uint8),), work / VISUAL_FILES["fp32"], ["pixels"],
            {"pixels": {0: "batch"}})
    if torch_free:
        sample = tokenizer(["a photo", "a photo of a dog in the snow"], padding=facts.padding,
                           truncation=True, max_length=facts.context_length, return_tensors="pt")
        to_onnx(Text().eval(), tuple(sample[name] for name in inputs), work / TEXT_FILE, inputs,
                {name: {0: "batch", 1: "length"} for name in inputs})
    with torch.inference_mode():
        dim = int(_features(model.get_image_features(pixel_values=torch.zeros(1, 3, size, size))).shape[-1])
    bias = getattr(model, "logit_bias", None)
    meta = {
        "dim": dim, "logit_scale": float(model.logit_scale.exp().item()),
        "logit_bias": None if bias is None else float(bias.item()), **pre.to_meta(),
        "model_type": facts.model_type, "tokenizer": None,
        "context_length": facts.context_length, "text_padding": facts.padding,
    }
    if torch_free:
        meta.update(tokenizer="tokenizers", text_inputs=inputs, pad_id=tokenizer.pad_token_id,
                    pad_token=str(tokenizer.pad_token), padding_side=tokenizer.padding_side,
                    truncation_side=tokenizer.truncation_side)
    return meta
