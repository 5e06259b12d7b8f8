"""Hugging Face Transformers checkpoints (CLIPModel, SiglipModel): what they are and where they live.

``--model hf:owner/name`` names a checkpoint on the hub (found in, or downloaded
into, the Hugging Face cache); ``--model hf:/path/to/folder`` a folder written by
``save_pretrained``. :func:`resolve` turns either into a
:class:`~clipdex.models.registry.ModelSpec`, :func:`locate` finds its folder
(failing fast offline, as open_clip models do), and :func:`checkpoint_facts`
reads from the folder's own files what clipdex must reproduce: the image
processor's resize, crop and normalisation, and the text padding rule. Nothing
here imports torch or transformers; the model runs in
:mod:`clipdex.models.runtimes.hf_torch` (and, exported, on ONNX Runtime).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdex.errors import ModelError, ModelUnavailable, first_line
from clipdex.models.network import require_hub
from clipdex.models.preprocess import OPENAI_MEAN, OPENAI_STD, RESAMPLING, PreprocessConfig
from clipdex.models.spec import HF_PREFIX, ModelSpec, fingerprint_weights

# model_type in config.json -> the Transformers class clipdex loads it with.
MODEL_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
SUPPORTED = "CLIPModel (model_type 'clip') and SiglipModel (model_type 'siglip')"
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Files a checkpoint folder needs besides its weights (whichever of them the repo has).
CHECKPOINT_FILES = ["config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "spiece.model"]
# Weights, best first: safetensors over pickles; sharded ones through their index.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# PIL's resampling filters as preprocessor_config.json numbers them.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# What each processor class does where preprocessor_config.json says nothing (its class defaults).
PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {"do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
             "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
             "do_normalize": True, "image_mean": OPENAI_MEAN, "image_std": OPENAI_STD},
    "siglip": {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 3, "do_center_crop": False,
               "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5)},
}
PROCESSOR_PREFIXES = {"CLIP": "clip", "Siglip": "siglip"}  # image_processor_type -> its defaults
# How each family's processor pads texts: SigLIP was trained on texts padded to the full
# length (its text tower pools the last position); CLIP pools its end-of-text token.
TEXT_PADDING = {"clip": "longest", "siglip": "max_length"}
DEFAULT_CONTEXT = {"clip": 77, "siglip": 64}


@dataclass(frozen=True)
class HfFacts:
    """What a checkpoint folder says about running it: ``model_type`` ('clip' or 'siglip'),
    its image processor as a :class:`PreprocessConfig`, how texts are padded ('longest'
    with an attention mask, or 'max_length') and truncated (``context_length``)."""

    model_type: str
    preprocess: PreprocessConfig
    padding: str
    context_length: int

    @property
    def model_class(self) -> str:
        return MODEL_CLASSES[self.model_type]


# -- references -> specs -----------------------------------------------------------

def is_local(reference: str) -> bool:
    """Whether ``reference`` names a folder (a path, or an existing directory) rather than a hub repo."""
    return (reference.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(reference)
            or os.path.exists(reference))


def resolve(reference: str, name: str | None = None) -> ModelSpec:
    """The spec of ``hf:REFERENCE``: a local ``save_pretrained`` folder (keyed by the
    fingerprint of its files) or a hub repository ``owner/name``."""
    reference = reference.strip()
    if not reference:
        raise ModelError("an empty Transformers reference: use --model hf:owner/name (a hub checkpoint) "
                         "or --model hf:/path/to/folder (a save_pretrained folder).")
    if is_local(reference):
        folder = Path(reference).expanduser().resolve()
        if folder.is_file():
            raise ModelError(f"{HF_PREFIX}{reference} is a file; a Transformers checkpoint is the folder that holds "
                             f"it with its config.json: pass --model {HF_PREFIX}{folder.parent}.")
        if not folder.is_dir():
            raise ModelError(f"{HF_PREFIX}{reference}: no folder {folder}. Pass the folder written by "
                             "save_pretrained (with config.json and the weights), or hf:owner/name for the hub.")
        model_type(folder)  # refuses what is not CLIP or SigLIP, before anything is indexed
        return ModelSpec(name=name or f"{HF_PREFIX}{folder}", arch="hf", weights=str(folder),
                         weights_sha256=fingerprint_folder(folder), family="hf")
    if not REPO_ID.fullmatch(reference):
        raise ModelError(f"{HF_PREFIX}{reference} is neither a hub repository (owner/name, e.g. "
                         "hf:openai/clip-vit-base-patch32) nor an existing folder. Check the spelling, or "
                         "give a folder as hf:/path/to/folder or hf:./folder.")
    return ModelSpec(name=name or f"{HF_PREFIX}{reference}", arch="hf", pretrained=reference, family="hf")


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files (the first kind of :data:`WEIGHT_FILES` it has, with a sharded
    one's shards); [] if it has none or a shard is missing."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return []
        files = [path, *(folder / shard for shard in shards)]
        return files if all(f.is_file() for f in files) else []
    return []


def fingerprint_folder(folder: Path) -> str:
    """sha256 over the files that decide the vectors: config.json, preprocessor_config.json
    (how photos are prepared) and the weights (each hashed once, :func:`fingerprint_weights`)."""
    weights = weight_files(folder)
    if not weights:
        raise ModelError(f"{folder} has no weights: expected {' or '.join(WEIGHT_FILES)} (with its shards). "
                         "Save the model with model.save_pretrained(folder); flax, TensorFlow and ONNX "
                         "weights are not read.")
    digest = hashlib.sha256()
    for path in [folder / "config.json", folder / "preprocessor_config.json", *weights]:
        if path.is_file():
            digest.update(f"{path.name}:{fingerprint_weights(str(path))}\n".encode())
    return digest.hexdigest()


def export_stamp(spec: ModelSpec) -> str | None:
    """What an export of the checkpoint depends on beyond its model key: its tokenizer files (a
    tokenizer.json added later, a tokenizer changed; two folders with the same weights and other
    tokenizers) and, for a hub name (key 'hf:REPO', no fingerprint), the cached revision (the
    snapshot folder's name). None where the checkpoint is not on disk."""
    try:
        folder = locate(spec, download=False)
    except ModelError:
        return None
    hub = not spec.weights
    files = [folder / name for name in sorted(set(CHECKPOINT_FILES) - {"config.json", "preprocessor_config.json"})]
    stats = tuple((f.name, s.st_size, s.st_mtime_ns) for f in files if (s := _stat(f)) is not None)
    return _stamp(folder, hub, stats)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


@functools.lru_cache(maxsize=32)
def _stamp(folder: Path, hub: bool, stats: tuple[tuple[str, int, int], ...]) -> str:
    """:func:`export_stamp` of files as ``stats`` describe them (hashed again only when they change)."""
    digest = hashlib.sha256(f"revision:{folder.name if hub else ''}\n".encode())
    for name, _, _ in stats:
        digest.update(f"{name}:{hashlib.sha256((folder / name).read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()[:12]


# -- where the folder is -------------------------------------------------------

def locate(spec: ModelSpec, download: bool = True) -> Path:
    """The folder holding the checkpoint's config, processor, tokenizer and weights: the local
    folder, the Hugging Face cache, or a download into it (only the files needed, safetensors
    preferred); offline, a :class:`ModelUnavailable` within seconds that says how to bring it."""
    if spec.weights:
        folder = Path(spec.weights)
        if not (folder / "config.json").is_file():
            raise ModelError(f"the Transformers checkpoint of {spec.name} is gone: no {folder / 'config.json'}. "
                             "If it moved, pass --model hf:/new/path (the folder written by save_pretrained).")
        return folder
    repo = spec.pretrained or ""
    cached = _cached_snapshot(repo)
    if cached is not None:
        return cached

    from huggingface_hub import constants

    looked = f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {repo})"
    fix = (f"On a machine with internet, run `hf download {repo}` (or any clipdex command with this model) "
           "and copy its Hugging Face cache here (set HF_HOME to it), or save the model there with "
           "save_pretrained and pass --model hf:/path/to/folder.")
    require_hub(spec.name, looked, fix, download=download)
    from huggingface_hub import list_repo_files, snapshot_download

    try:
        patterns = download_patterns(list_repo_files(repo))
        # The hub's own download, with its progress bar, into the Hugging Face cache.
        folder = Path(snapshot_download(repo, allow_patterns=patterns))
    except ModelError:
        raise
    except Exception as e:  # the hub's errors are many (not found, gated, network): all mean the same here
        raise ModelUnavailable(spec.name, looked, f"download failed: {first_line(e)}", fix) from e
    if not weight_files(folder):
        raise ModelUnavailable(spec.name, looked, "the download holds no weights", fix)
    return folder


def _cached_snapshot(repo: str) -> Path | None:
    """The repo's snapshot in the Hugging Face cache, if it holds a config and the weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo, allow_patterns=CHECKPOINT_FILES + list(WEIGHT_FILES),
                                        local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):  # not cached, or a damaged cache: look further
        return None
    return folder if (folder / "config.json").is_file() and weight_files(folder) else None


def download_patterns(files: list[str]) -> list[str]:
    """What to download of a repo listing ``files``: the checkpoint's small files and one kind of
    PyTorch weights (safetensors when there are any; never flax, TensorFlow or ONNX weights)."""
    for name in WEIGHT_FILES:
        if name in files:
            weights = [name]
            if name.endswith(".index.json"):
                stem = name[:-len(".index.json")]
                base, ext = stem.rsplit(".", 1)
                weights.append(f"{base}-*.{ext}")
            return CHECKPOINT_FILES + weights
    raise ModelError(f"the repository has no PyTorch weights ({', '.join(WEIGHT_FILES)}); clipdex does not "
                     "read flax, TensorFlow or ONNX weights. Pick a repository with model.safetensors.")


# -- what the folder says -------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.parent} is not a Transformers checkpoint: it has no {path.name}. Pass the "
                         "folder written by model.save_pretrained and processor.save_pretrained.") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {first_line(e)}. Save the checkpoint again.") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object. Save the checkpoint again.")
    return data


def model_type(folder: Path) -> str:
    """'clip' or 'siglip', from config.json; a :class:`ModelError` for anything else."""
    config = _read_json(folder / "config.json")
    kind = config.get("model_type")
    if kind not in MODEL_CLASSES:
        from clipdex.models.bundle import looks_like_export

        if looks_like_export(folder):
            raise ModelError(f"{folder} is a ready ONNX export (visual/, textual/), not a Transformers checkpoint: "
                             f"use --model onnx:{folder}.")
        classes = ", ".join(config.get("architectures") or []) or "unknown"
        raise ModelError(f"{folder} holds a {kind or 'model without a model_type'} checkpoint ({classes}); "
                         f"clipdex runs {SUPPORTED}. Save a CLIPModel or SiglipModel (both towers).")
    return str(kind)


def checkpoint_facts(folder: Path) -> HfFacts:
    """The checkpoint's own preprocessing and text rules, read from its folder."""
    kind = model_type(folder)
    config = _read_json(folder / "config.json")
    text = config.get("text_config") or {}
    context = int(text.get("max_position_embeddings") or DEFAULT_CONTEXT[kind])
    processor = _read_json(folder / "preprocessor_config.json")
    return HfFacts(kind, processor_config(processor, kind, folder), TEXT_PADDING[kind], context)


def _size_dict(value: Any, square: bool) -> dict[str, int] | None:
    """A size as the processors read it: an int is the shortest edge (CLIP's and SigLIP's
    processors do not default to square sizes) or, for a crop, a square; [h, w] a height and width."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, (int, float)):
        side = int(value)
        return {"height": side, "width": side} if square else {"shortest_edge": side}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    raise ModelError(f"a size of {value!r} in preprocessor_config.json is not one clipdex reads.")


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ModelError(f"{what} {value!r} in preprocessor_config.json does not have 3 channels.")
    return (values[0], values[1], values[2])


def processor_config(processor: dict[str, Any], kind: str, folder: Path | str = "") -> PreprocessConfig:
    """The :class:`PreprocessConfig` that gives the same pixels as the checkpoint's image
    processor (a preprocessor_config.json's contents), or a :class:`ModelError` saying why
    clipdex cannot reproduce it."""
    where = f"{folder}/preprocessor_config.json" if folder else "preprocessor_config.json"
    cls = str(processor.get("image_processor_type") or processor.get("feature_extractor_type") or "")
    family = next((f for prefix, f in PROCESSOR_PREFIXES.items() if cls.startswith(prefix)), None if cls else kind)
    if family is None:
        raise ModelError(f"{where} names the image processor {cls}; clipdex reproduces CLIPImageProcessor "
                         "and SiglipImageProcessor. Save the checkpoint with one of them.")
    p = {**PROCESSOR_DEFAULTS[family], **{k: v for k, v in processor.items() if v is not None}}

    def refuse(why: str) -> ModelError:
        return ModelError(f"{where}: {why}, which clipdex's decode workers cannot reproduce (they give "
                          "square images: resize the shorter side and centre-crop a square of that side, or "
                          "resize to a square). Save the processor with such a size "
                          "(e.g. size={'shortest_edge': S}, crop_size={'height': S, 'width': S}).")

    if not p["do_resize"]:
        raise refuse("do_resize is false (photos would keep their own sizes)")
    size = _size_dict(p["size"], square=False) or {}
    crop = _size_dict(p["crop_size"], square=True) if p["do_center_crop"] else None
    if crop is not None and crop.get("height") != crop.get("width"):
        raise refuse(f"the crop {crop} is not square")
    if set(size) == {"shortest_edge"}:
        side = int(size["shortest_edge"])
        if crop is None:
            raise refuse(f"size {size} with no centre crop gives images of their own aspect ratio")
        if crop["height"] > side:
            raise refuse(f"the shorter side is resized to {side}, less than the crop of {crop['height']} "
                         "(the processor would pad)")
        image_size, mode = int(crop["height"]), "shortest"
        resize_size = side if side != image_size else None
    elif set(size) == {"height", "width"}:
        if size["height"] != size["width"]:
            raise refuse(f"size {size} is not square")
        image_size, mode, resize_size = int(size["height"]), "squash", None
        if crop is not None and crop["height"] != image_size:
            raise refuse(f"a {image_size}-pixel square is cropped to {crop['height']}")
    else:
        raise refuse(f"size {size} ({', '.join(size) or 'no keys'}) is not a shortest edge or a height and width")
    resample = p["resample"]
    interpolation = PIL_RESAMPLE.get(int(resample), str(resample)) if isinstance(resample, (int, float)) else None
    if interpolation not in RESAMPLING:
        raise ModelError(f"{where}: resample {resample!r} ({interpolation}) is not one clipdex reproduces; "
                         f"use 0 (nearest), 1 (lanczos), 2 (bilinear) or 3 (bicubic).")
    mean, std = _triple(p["image_mean"], "image_mean"), _triple(p["image_std"], "image_std")
    if not p["do_normalize"]:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    # The model's input is (x * rescale - mean) / std; clipdex computes (x / 255 - mean') / std'.
    ratio = 255.0 * (float(p["rescale_factor"]) if p["do_rescale"] else 1.0)
    if abs(ratio - 1.0) > 1e-9:
        mean = (mean[0] / ratio, mean[1] / ratio, mean[2] / ratio)
        std = (std[0] / ratio, std[1] / ratio, std[2] / ratio)
    return PreprocessConfig(image_size, mean, std, interpolation, mode, crop_rounding="floor",
                            resize_size=resize_size)
