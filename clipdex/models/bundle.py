"""A model's ONNX files, wherever they came from: clipdex's own cache, or an export folder in
the hub layout (Immich's, or one written by ``clipdex models export``).

The hub layout, as Immich publishes some 50 open_clip models (``immich-app/<ARCH>__<TAG>``)::

    config.json                   the open_clip model config (embed_dim, vision_cfg, text_cfg)
    visual/model.onnx             image tower
    visual/preprocess_cfg.json    size, mean, std, interpolation, resize_mode
    textual/model.onnx            text tower
    textual/tokenizer.json        its tokenizer, for the ``tokenizers`` library
    textual/tokenizer_config.json pad token and the like

``clipdex models export NAME DIR`` writes the same layout (so what reads Immich's in clipdex
reads clipdex's; Immich's server cannot run clipdex's towers, whose inputs differ) plus
``clipdex.json``: the model's identity (its key), scoring (logit_scale, logit_bias), its full
preprocessing and tokenizer facts, and the format of its towers' inputs. Its config.json is the
full open_clip config where the writer has it (open_clip installed, or ``--model-config``), else
only the facts a reader of Immich's layout takes from it (embed_dim, image size, context length):
clipdex reads clipdex.json, never config.json, for its own layout. An export read from
either layout is an :class:`Export`: the facts in the vocabulary of clipdex's meta.json, and
the paths of its files. Nothing here imports torch.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipdex.errors import ModelError
from clipdex.models.spec import FINGERPRINT_BYTES, fingerprint_weights

MANIFEST = "clipdex.json"
CONFIG = "config.json"
VISUAL = "visual/model.onnx"
PREPROCESS = "visual/preprocess_cfg.json"
TEXTUAL = "textual/model.onnx"
TOKENIZER = "textual/tokenizer.json"
TOKENIZER_CONFIG = "textual/tokenizer_config.json"
# What a hub download fetches: the plain ONNX files, not Immich's other formats (armnn, rknpu, fp16…).
# A large model's weights lie in many files beside its model.onnx (one per tensor), so the towers'
# folders are fetched whole, less those formats (the hub's patterns let * cross '/').
HUB_PATTERNS = (MANIFEST, CONFIG, "visual/*", "textual/*")
HUB_IGNORE = ("*.rknn", "*.armnn", "*/rknpu/*", "*/fp16/*")
MANIFEST_FORMAT = 1

# How an image tower takes its pixels: clipdex's exports take the 8-bit (N, H, W, 3) pixels
# that fit() gives and normalise inside the graph; Immich's take float32 (N, 3, H, W) already
# normalised.
PIXELS_UINT8_NHWC = "uint8-nhwc"
PIXELS_FLOAT_NCHW = "float-nchw"


@dataclass(frozen=True)
class Export:
    """One model's ONNX files and the facts to run them.

    ``meta`` holds the facts in the vocabulary of the cache's meta.json (key, dim, logit_scale,
    logit_bias, image_size, mean, std, interpolation, resize_mode, crop_rounding, resize_size,
    tokenizer, context_length, text_padding, pad_id, pad_token, text_inputs, trim_tokens) plus
    ``pixel_input`` (:data:`PIXELS_UINT8_NHWC` or :data:`PIXELS_FLOAT_NCHW`). ``visual`` maps a
    precision to its image tower ('fp32' always; 'int8' once quantised, which for a folder the
    user owns or the hub cache lives in clipdex's cache, :attr:`work`); ``text`` is the text
    tower (None: texts go through the family's torch runtime); ``tokenizer`` its tokenizer.json
    (None for the cache's 'clip-bpe' tokenizer, which reads open_clip's vocabulary).
    ``origin`` is 'cache' (clipdex exported it here), 'clipdex' (a folder written by
    ``clipdex models export``) or 'immich'; ``source`` says where it came from, in words
    ('hub immich-app/ViT-B-32__openai@<revision>', 'folder /path', 'exported here').
    """

    root: Path
    meta: dict[str, Any]
    origin: str
    source: str
    visual: dict[str, Path]
    text: Path | None
    tokenizer: Path | None
    work: Path  # where clipdex may write what it derives (int8): never inside a user's folder or the hub cache
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pixel_input(self) -> str:
        return str(self.meta.get("pixel_input", PIXELS_UINT8_NHWC))

    def pixel_feed(self, batch: np.ndarray) -> np.ndarray:
        """The image tower's input for a batch of :func:`~clipdex.models.preprocess.fit` outputs
        ((N, H, W, 3) uint8): as it is, or normalised into float32 (N, 3, H, W)."""
        if self.pixel_input == PIXELS_UINT8_NHWC:
            return np.ascontiguousarray(batch)
        scale, shift = self._normalisation
        pixels = batch.astype(np.float32).transpose(0, 3, 1, 2)
        pixels *= scale
        pixels -= shift
        return np.ascontiguousarray(pixels)

    @functools.cached_property
    def _normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel, the scale and shift that turn 8-bit pixels into the model's input (read once, not
        per batch), shaped to broadcast over (N, 3, H, W)."""
        from clipdex.models.preprocess import PreprocessConfig

        scale, shift = PreprocessConfig.from_meta(self.meta).scale_shift()
        return (np.asarray(scale, np.float32).reshape(1, 3, 1, 1),
                np.asarray(shift, np.float32).reshape(1, 3, 1, 1))


def looks_like_export(folder: Path) -> bool:
    """Whether ``folder`` holds an ONNX export in the hub layout (a model for ``--model onnx:…``), so
    a message about another kind of model can point there."""
    return (folder / VISUAL).is_file() or (folder / TEXTUAL).is_file()


def read_export(root: Path, *, source: str, work: Path) -> Export:
    """The export in folder ``root`` (the hub layout: clipdex's, with its clipdex.json, or
    Immich's, read as it is). Raises :class:`~clipdex.errors.ModelError` naming the folder and
    the file for one that is missing or damaged, with what to do.

    The towers are read where they lie (a large model's weights are files beside its
    model.onnx, which ONNX Runtime finds relative to it): nothing is copied out of ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelError(f"ONNX export folder {root} ({source}) does not exist or is not a folder. "
                         f"{_advice(root, source, None)}")
    manifest = _read_json(root, MANIFEST, source, required=False)
    if manifest is not None:
        return _read_clipdex(root, manifest, source, work)
    return _read_immich(root, source, work)


def _read_clipdex(root: Path, manifest: dict[str, Any], source: str, work: Path) -> Export:
    """An export written by :func:`write_export`: its facts are its clipdex.json's."""
    _refuse_embeddings(root, manifest)
    version = manifest.get("format")
    if not isinstance(version, int) or version < 1:
        raise _damaged(root, MANIFEST, "it has no format number", source, manifest)
    if version > MANIFEST_FORMAT:
        raise ModelError(f"the ONNX export in {root} ({source}) was written by a newer clipdex (its "
                         f"{MANIFEST} has format {version}; this clipdex reads up to {MANIFEST_FORMAT}). "
                         "Upgrade clipdex (pip install -U clipdex).")
    missing = [name for name in MANIFEST_FACTS if name not in manifest]
    if missing:
        raise _damaged(root, MANIFEST, f"it lacks {', '.join(missing)}", source, manifest)
    if manifest["tokenizer"] != "tokenizers":
        raise _damaged(root, MANIFEST, f"its tokenizer {manifest['tokenizer']!r} is not 'tokenizers'",
                       source, manifest)
    visual = _tower(root, VISUAL, source, manifest)
    text = _tower(root, TEXTUAL, source, manifest)
    tokenizer = _file(root, TOKENIZER, source, manifest)
    meta = {name: value for name, value in manifest.items() if name not in ("format", "clipdex")}
    meta.setdefault("pixel_input", PIXELS_UINT8_NHWC)
    return Export(root, meta, "clipdex", source, {"fp32": visual}, text, tokenizer, work)


def _read_immich(root: Path, source: str, work: Path) -> Export:
    """An export in Immich's layout, read as Immich reads it (config.json's context length and
    text cleaning, tokenizer_config.json's pad token, padding to the full length, float32 pixels
    normalised outside the graph), with open_clip's own transform for the pixels
    (preprocess_cfg.json's resize mode and interpolation, open_clip's crop rounding)."""
    config = _read_json(root, CONFIG, source)
    assert config is not None
    text_cfg = config.get("text_cfg") if isinstance(config.get("text_cfg"), dict) else None
    if not isinstance(config.get("embed_dim"), int) or text_cfg is None:
        raise _damaged(root, CONFIG, "it is not an open_clip model config (embed_dim, text_cfg)", source, None)
    pre = _read_json(root, PREPROCESS, source)
    assert pre is not None
    size = pre.get("size")
    size = size[0] if isinstance(size, (list, tuple)) and size else size
    mean, std = pre.get("mean"), pre.get("std")
    if not isinstance(size, int) or not _triple(mean) or not _triple(std) or mean is None or std is None:
        raise _damaged(root, PREPROCESS, "it lacks a size, or a mean and std of three numbers", source, None)
    tokenizer_config = _read_json(root, TOKENIZER_CONFIG, source)
    assert tokenizer_config is not None
    pad_token = tokenizer_config.get("pad_token")
    if isinstance(pad_token, dict):  # an AddedToken, as some Transformers versions save it
        pad_token = pad_token.get("content")
    if not isinstance(pad_token, str):
        raise _damaged(root, TOKENIZER_CONFIG, "it names no pad_token", source, None)
    visual = _tower(root, VISUAL, source, None)
    text = _tower(root, TEXTUAL, source, None)
    tokenizer = _file(root, TOKENIZER, source, None)
    pad_id = _token_id(root, tokenizer, pad_token, source)
    kwargs = text_cfg.get("tokenizer_kwargs")
    clean = kwargs.get("clean") if isinstance(kwargs, dict) else None
    meta: dict[str, Any] = {
        "family": "open_clip", "dim": int(config["embed_dim"]),
        # Immich keeps no scoring: trained OpenAI and LAION CLIP models sit at open_clip's clamp of 100.
        "logit_scale": ASSUMED_LOGIT_SCALE, "logit_bias": None,
        "image_size": int(size), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "interpolation": str(pre.get("interpolation") or "bicubic"),
        "resize_mode": str(pre.get("resize_mode") or "shortest"), "crop_rounding": "round", "resize_size": None,
        "tokenizer": "tokenizers", "context_length": int(text_cfg.get("context_length") or 77),
        "text_padding": "max_length", "pad_id": pad_id, "pad_token": pad_token, "text_inputs": ["input_ids"],
        "trim_tokens": False, "text_clean": "canonicalize" if clean == "canonicalize" else "whitespace",
        "pixel_input": PIXELS_FLOAT_NCHW,
    }
    if _sigmoid(config, _export_name(root, source)):
        meta["scoring_unknown"] = True  # SigLIP: its learned scale and bias are in no file of the export
    return Export(root, meta, "immich", source, {"fp32": visual}, text, tokenizer, work)


def _refuse_embeddings(root: Path, manifest: dict[str, Any]) -> None:
    """A ModelError where ``root``'s clipdex.json is the manifest of `clipdex export` (embeddings, which
    share the file's name), saying what the folder is and what to do with it."""
    if manifest.get("format") != "clipdex-export":
        return
    found = manifest.get("model")
    model: dict[str, Any] = found if isinstance(found, dict) else {}
    raise ModelError(f"{root} holds embeddings written by `clipdex export` ({manifest.get('rows', '?')} photos "
                     f"of {model.get('name') or model.get('key') or 'a model'}), not a model export: load them "
                     f"with `clipdex import {root}`, and name the model that made them with --model "
                     f"{model.get('name') or 'NAME'}. A model export is written by `clipdex models export`.")


def identity_of(root: Path, name: str) -> str:
    """The key of the model whose export is in ``root``: its clipdex.json's ``key``; for Immich's
    layout the open_clip ``ARCH/TAG`` its name ``ARCH__TAG`` (repository or folder) spells, where
    that is an open_clip architecture; else ``onnx@sha256:<fingerprint of its towers>``.

    "An open_clip architecture" is judged without open_clip (a base install has none): a name of
    that form beside a config.json that is an open_clip model config. The tag is spelled as
    open_clip and clipdex's registry spell it (lower case, '_' for '-': Immich's
    ``ViT-B-32__laion2b-s34b-b79k`` is ``ViT-B-32/laion2b_s34b_b79k``), so an index shares its
    vectors with the same model from any source.
    """
    root = Path(root)
    if (root / MANIFEST).exists():
        manifest = _read_json(root, MANIFEST, f"folder {root}", required=False)
        _refuse_embeddings(root, manifest or {})
        key = (manifest or {}).get("key")
        if isinstance(key, str) and key:
            return key
        raise _damaged(root, MANIFEST, "it has no key", f"folder {root}", manifest)
    base = name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].split("@", 1)[0]
    match = IMMICH_NAME.fullmatch(base)
    if match and _is_open_clip_config(root / CONFIG):
        return f"{match.group(1)}/{match.group(2).lower().replace('-', '_')}"
    return f"onnx@sha256:{_fingerprint(root)}"


def write_export(export: Export, dest: Path) -> Path:
    """Write ``export`` (clipdex's cache export of a model) into ``dest`` in the hub layout, with
    clipdex.json, tokenizer.json (for a 'clip-bpe' model, made from open_clip's vocabulary for the
    ``tokenizers`` library and tested token for token against open_clip), preprocess_cfg.json as
    Immich writes it, and config.json: the open_clip model config given as
    ``export.extra['model_config']`` (as Immich writes it), else the few facts a reader of
    Immich's layout takes from it. Returns ``dest``.

    The towers are clipdex's as they are (the image tower takes 8-bit (N, H, W, 3) pixels, which
    clipdex.json's ``pixel_input`` says), so Immich's server cannot run them; clipdex reads either
    layout. The folder is written beside ``dest`` and renamed into place: a reader never sees half
    an export. ``dest`` must be missing, empty, or an earlier export by clipdex holding nothing
    else (replaced; :func:`check_dest`).
    """
    meta = export.meta
    name = str(export.extra.get("name") or meta.get("name") or meta.get("key") or export.root.name)
    kind = meta.get("tokenizer")
    if kind is None or export.text is None:
        raise ModelError(f"{name} cannot be written as an ONNX export: its texts are tokenized only by its own "
                         "torch library (no tokenizer.json form), so the export would have no text tower. "
                         "Use it with clipdex[torch] instead.")
    if kind not in ("clip-bpe", "tokenizers") or (kind == "tokenizers" and export.tokenizer is None):
        raise ModelError(f"{name} cannot be written as an ONNX export: its tokenizer {kind!r} has no "
                         f"tokenizer.json in {export.root}. Delete {export.root} and run again to export it anew.")
    dest = Path(dest).expanduser().absolute()
    check_dest(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # a folder to share, as a plain mkdir would make it (mkdtemp's is 0700)
    try:
        (work / "visual").mkdir()
        (work / "textual").mkdir()
        _copy_tower(export.visual["fp32"], work / VISUAL)
        _copy_tower(export.text, work / TEXTUAL)
        length = int(meta.get("context_length") or 77)
        facts = {k: v for k, v in meta.items() if k not in ("key", "family", "name", "pixel_input")}
        if kind == "clip-bpe":
            from clipdex.models import clip_bpe

            if export.tokenizer is not None and export.tokenizer.is_file():
                # The cache's own, written by clip_bpe.write at the same length: no open_clip needed to copy it.
                shutil.copyfile(export.tokenizer, work / TOKENIZER)
            else:
                clip_bpe.write(work / TOKENIZER, length)
            tokenizer_config: dict[str, Any] = clip_bpe.config(length)
            # The cache trims positions after the longest text (causal mask): padding to the longest is enough.
            facts.update(tokenizer="tokenizers", pad_id=clip_bpe.PAD_ID, pad_token=tokenizer_config["pad_token"],
                         text_padding="longest" if meta.get("trim_tokens") else "max_length",
                         text_inputs=["input_ids"], text_clean="whitespace")
        else:
            assert export.tokenizer is not None
            shutil.copyfile(export.tokenizer, work / TOKENIZER)
            tokenizer_config = {"model_max_length": length, "pad_token": meta.get("pad_token"),
                                "padding_side": meta.get("padding_side", "right"),
                                "truncation_side": meta.get("truncation_side", "right")}
        _write_json(work / TOKENIZER_CONFIG, tokenizer_config)
        size = int(meta["image_size"])
        _write_json(work / PREPROCESS, {
            "size": [size, size], "mode": "RGB", "mean": list(meta["mean"]), "std": list(meta["std"]),
            "interpolation": meta.get("interpolation", "bicubic"), "resize_mode": meta.get("resize_mode", "shortest"),
            "fill_color": 0})
        _write_json(work / CONFIG, _model_config(export, size, length, facts.get("text_clean")))
        _write_json(work / MANIFEST, {
            "format": MANIFEST_FORMAT, "key": meta.get("key") or name, "name": name,
            "family": meta.get("family", "open_clip"), "clipdex": _clipdex_version(), **facts,
            "pixel_input": PIXELS_UINT8_NHWC})
        _swap_into_place(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest


def damaged(export: Export, path: Path, error: BaseException) -> ModelError:
    """The error for a file of ``export`` that a runtime cannot load (a download cut short, a
    disk that filled): which folder and file, and how to get them again."""
    from clipdex.errors import first_line

    try:
        rel = str(Path(path).relative_to(export.root))
    except ValueError:
        rel = str(path)
    manifest = {"name": export.extra.get("name") or export.meta.get("name")} if export.origin == "clipdex" else None
    if export.origin == "cache":
        todo = f"Delete {export.root} and it is exported again on the next run."
    else:
        todo = _advice(export.root, export.source, manifest)
    return ModelError(f"the ONNX export in {export.root} ({export.source}) is damaged: {rel} cannot be read "
                      f"({first_line(error)}). {todo}")


# -- helpers --------------------------------------------------------------------------------------

ASSUMED_LOGIT_SCALE = 100.0  # open_clip's clamp, where trained CLIP models' learned scale sits
# Immich's repository names: <open_clip arch>__<pretrained tag> (its clean_name: ':' '/' -> '_', '.' dropped).
IMMICH_NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9._+-]*)__([A-Za-z0-9][A-Za-z0-9._-]*)")
# What clipdex.json must hold to run the export (the rest has defaults).
MANIFEST_FACTS = ("key", "dim", "image_size", "mean", "std", "interpolation", "resize_mode", "logit_scale",
                  "tokenizer", "context_length", "text_padding", "pad_id", "pad_token")
# What a folder written by write_export may hold besides (README.md: a model card added for the hub).
_LAYOUT_FILES = {MANIFEST, CONFIG, "README.md"}
_LAYOUT_FOLDERS = {"visual", "textual"}
# A graph bigger than this keeps its weights inside; one that keeps them in files beside it is small.
EMBEDDED_WEIGHTS_BYTES = 64 << 20
# How protobuf encodes an external-data entry's key (field 1, 8 bytes, "location"): a graph
# without these bytes has no external data, known without importing onnx.
_LOCATION_ENTRY = b"\x0a\x08location"
_EXTERNAL_DATA: dict[tuple[str, int, int], tuple[str, ...]] = {}


def hub_download_command(repo: str, revision: str | None = None, local_dir: Path | str | None = None) -> str:
    """The ``hf download`` command that fetches an export's ONNX files from ``repo`` (not Immich's
    other formats), into ``local_dir`` where given (else the Hugging Face cache)."""
    import shlex

    words = ["hf", "download", repo]
    if revision:
        words += ["--revision", revision]
    for pattern in HUB_PATTERNS:
        words += ["--include", pattern]
    for pattern in HUB_IGNORE:
        words += ["--exclude", pattern]
    if local_dir is not None:
        words += ["--local-dir", str(local_dir)]
    return shlex.join(words)


def _advice(root: Path, source: str, manifest: dict[str, Any] | None) -> str:
    """What to do about a missing or damaged file: fetch the export again, or write it again."""
    if source.startswith("hub "):
        repo = source.split()[1].split("@", 1)[0]
        return (f"Download it again: {hub_download_command(repo)} (or delete it from the Hugging Face cache and "
                "run again).")
    if manifest is not None or (root / MANIFEST).exists():
        name = (manifest or {}).get("name") or "MODEL"
        return (f"Write it again: clipdex models export {name} {root} (needs clipdex[torch]), "
                "or copy it again from where it came.")
    if IMMICH_NAME.fullmatch(root.name):
        return f"Download it again: {hub_download_command(f'immich-app/{root.name}', local_dir=root)}."
    return (f"Copy it again from where it came (an Immich model: "
            f"{hub_download_command('immich-app/ARCH__TAG', local_dir=root)}), or write one with: clipdex models "
            f"export MODEL {root}.")


def _damaged(root: Path, rel: str, what: str, source: str, manifest: dict[str, Any] | None) -> ModelError:
    return ModelError(f"the ONNX export in {root} ({source}) is damaged: {rel} cannot be used ({what}). "
                      f"{_advice(root, source, manifest)}")


def _missing(root: Path, rel: str, source: str, manifest: dict[str, Any] | None) -> ModelError:
    return ModelError(f"the ONNX export in {root} ({source}) is incomplete: it has no {rel}. "
                      f"{_advice(root, source, manifest)}")


def _read_json(root: Path, rel: str, source: str, *, required: bool = True) -> dict[str, Any] | None:
    path = root / rel
    if not path.exists():
        if required:
            raise _missing(root, rel, source, None)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _damaged(root, rel, f"not readable JSON: {e}", source, None) from None
    if not isinstance(data, dict):
        raise _damaged(root, rel, "not a JSON object", source, None)
    return data


def _file(root: Path, rel: str, source: str, manifest: dict[str, Any] | None) -> Path:
    path = root / rel
    if not path.is_file():
        raise _missing(root, rel, source, manifest)
    if path.stat().st_size == 0:
        raise _damaged(root, rel, "the file is empty", source, manifest)
    return path


def _tower(root: Path, rel: str, source: str, manifest: dict[str, Any] | None) -> Path:
    """A tower's graph, checked as far as is cheap (present, not empty); ONNX Runtime reads the rest."""
    return _file(root, rel, source, manifest)


def _token_id(root: Path, tokenizer: Path, token: str, source: str) -> int:
    from tokenizers import Tokenizer

    try:
        loaded = Tokenizer.from_file(str(tokenizer))
    except Exception as e:  # the tokenizers library raises plain Exception for a bad file
        raise _damaged(root, TOKENIZER, f"the tokenizers library cannot load it: {e}", source, None) from e
    token_id = loaded.token_to_id(token)
    if token_id is None:
        raise _damaged(root, TOKENIZER_CONFIG, f"its pad_token {token!r} is not in {TOKENIZER}", source, None)
    return int(token_id)


def _triple(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)


def _export_name(root: Path, source: str) -> str:
    """The name an export goes by: its hub repository's (``hub owner/NAME@revision``: the snapshot
    folder is a hash) or its folder's. Only the last part: the folders above it say nothing of
    the model (a CLIP export kept under ``siglip-tests/`` is still CLIP)."""
    if source.startswith("hub "):
        words = source.split()
        if len(words) > 1:
            return words[1].split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return root.name


def _sigmoid(config: dict[str, Any], name: str) -> bool:
    """Whether the model was trained with a sigmoid loss (SigLIP): open_clip's config gives every
    such model an ``init_logit_bias`` and a SigLIP tokenizer (``hf_tokenizer_name``
    'timm/ViT-B-16-SigLIP…'); the repository or folder ``name`` may say SigLIP too. Not the text
    tower's shape (last-token pooling without a causal mask): CLIPA has it, and is a softmax CLIP."""
    text_cfg = config.get("text_cfg")
    tokenizer = text_cfg.get("hf_tokenizer_name") if isinstance(text_cfg, dict) else None
    return ("init_logit_bias" in config or (isinstance(tokenizer, str) and "siglip" in tokenizer.lower())
            or "siglip" in name.lower())


def _is_open_clip_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(config, dict) and {"embed_dim", "vision_cfg", "text_cfg"} <= set(config)


def _fingerprint(root: Path) -> str:
    """The first hex digits of a sha256 over both towers' files (graphs and external weights),
    each file hashed once (:func:`~clipdex.models.spec.fingerprint_weights` remembers it)."""
    digest = hashlib.sha256()
    for rel in (VISUAL, TEXTUAL):
        model = _tower(root, rel, f"folder {root}", None)
        for path in tower_files(model):
            name = path.relative_to(model.parent).as_posix()
            digest.update(f"{rel}:{name}:{fingerprint_weights(str(path))}\n".encode())
    return digest.hexdigest()[:FINGERPRINT_BYTES]


def tower_files(model: Path) -> list[Path]:
    """``model`` (an .onnx file) and the external-data files its tensors live in, which ONNX
    Runtime reads relative to it (:func:`external_data`)."""
    return [model, *(model.parent / location for location in external_data(model))]


def external_data(model: Path) -> tuple[str, ...]:
    """The paths, relative to ``model`` (an .onnx file), of the files its tensors keep their data
    in (ONNX external data: graph initialisers, Constant nodes' tensors, subgraphs'), sorted;
    () for a graph that keeps its own, or one that cannot be read (the runtime that loads it
    then says which file is damaged).

    Asked on every cold process (is a cached hub snapshot complete?), so it costs as little as
    it can: a graph over :data:`EMBEDDED_WEIGHTS_BYTES` keeps its own weights (an exporter puts
    weights outside only to get under protobuf's 2 GB, leaving a graph of a few MB), and is not
    read; a smaller one is read as bytes, and only one that holds an external-data entry
    (``location``, as protobuf encodes it) is parsed, with onnx. The answer is remembered per
    (path, size, mtime) for the process."""
    try:
        stat = model.stat()
    except OSError:
        return ()
    key = (str(model), stat.st_size, stat.st_mtime_ns)
    known = _EXTERNAL_DATA.get(key)
    if known is None:
        known = _EXTERNAL_DATA[key] = _read_external_data(model, stat.st_size)
    return known


def _read_external_data(model: Path, size: int) -> tuple[str, ...]:
    if size > EMBEDDED_WEIGHTS_BYTES:
        return ()
    try:
        data = model.read_bytes()
    except OSError:
        return ()
    if _LOCATION_ENTRY not in data:
        return ()
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        return ()
    locations: set[str] = set()

    def tensors(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield attribute.sparse_tensor.values
                    yield attribute.sparse_tensor.indices
                if attribute.HasField("g"):
                    yield from tensors(attribute.g)
                for sub in attribute.graphs:
                    yield from tensors(sub)

    for tensor in tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return tuple(sorted(locations))


def _copy_tower(src: Path, dst: Path) -> None:
    """Copy a tower's graph to ``dst`` with its external-data files beside it (same relative paths)."""
    shutil.copyfile(src, dst)
    for path in tower_files(src)[1:]:
        target = dst.parent / path.relative_to(src.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _model_config(export: Export, size: int, length: int, clean: Any) -> dict[str, Any]:
    """config.json as Immich writes it (open_clip's model config) where the export carries it
    (``extra['model_config']``), else only the facts a reader of Immich's layout takes from it
    (embed_dim, image size, context length, text cleaning): enough for clipdex, not Immich's."""
    given = export.extra.get("model_config")
    if isinstance(given, dict):
        return given
    text_cfg: dict[str, Any] = {"context_length": length}
    if clean == "canonicalize":
        text_cfg["tokenizer_kwargs"] = {"clean": "canonicalize"}
    return {"embed_dim": int(export.meta["dim"]), "vision_cfg": {"image_size": size}, "text_cfg": text_cfg}


def _clipdex_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clipdex")
    except PackageNotFoundError:
        return "unknown"


def check_dest(dest: Path) -> None:
    """Refuse, before anything is written, a ``dest`` that :func:`write_export` must not replace.

    A folder is replaced only when it is an earlier ONNX export by clipdex: its clipdex.json an
    export manifest (a format number and the facts :func:`write_export` writes; ``clipdex
    export``'s embeddings have a clipdex.json too, of another shape) and nothing in it but the
    layout's own files. Anything else is the user's, and stays as it is."""
    dest = Path(dest)
    if dest.is_file() or (dest.exists() and not dest.is_dir()):
        raise ModelError(f"{dest} is a file; pass a folder to write the export into (a new or empty one). "
                         "Nothing was written.")
    if not dest.is_dir():
        return
    entries = sorted(dest.iterdir())
    if not entries:
        return
    why = _not_an_export(dest, entries)
    if why:
        raise ModelError(f"{dest} is not empty and is not an earlier ONNX export by clipdex: {why}. "
                         "Nothing in it was touched. Pass a new or empty folder to write the export into.")


def _not_an_export(dest: Path, entries: list[Path]) -> str:
    """Why the non-empty folder ``dest`` is not an earlier export by clipdex ('' where it is one)."""
    try:
        manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        manifest = None
        what = f"it has no {MANIFEST}"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        manifest = None
        what = f"its {MANIFEST} cannot be read ({e})"
    else:
        what = ""
    if manifest is not None:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if fmt == "clipdex-export":  # clipdex.interchange.EXPORT_FORMAT (not imported: it pulls in the index)
            what = f"its {MANIFEST} is that of embeddings written by `clipdex export`"
        elif not isinstance(fmt, int) or isinstance(fmt, bool) or not all(
                name in manifest for name in (*MANIFEST_FACTS, "pixel_input")):
            what = f"its {MANIFEST} is not an ONNX export's (a format number, key, dim, pixel_input…)"
    others = [p for p in entries if not ((p.name in _LAYOUT_FILES and p.is_file())
                                         or (p.name in _LAYOUT_FOLDERS and p.is_dir()))]
    if others:
        shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        held = f"it holds {shown}{more}, which an export does not"
        what = f"{what}; {held}" if what else held
    return what


def _lost_race(dest: Path) -> ModelError:
    return ModelError(f"another export into {dest} finished while this one was being written; its export "
                      "stands, and nothing of this run was kept. Run the command again to replace it.")


def _swap_into_place(work: Path, dest: Path) -> None:
    """Rename the finished ``work`` folder to ``dest``, replacing an earlier export there (its
    README.md, a model card, is kept). Another export into the same folder that finishes first
    wins: this one then says so (:func:`_lost_race`)."""
    if not dest.exists():
        try:
            os.replace(work, dest)
        except OSError as e:
            if dest.is_dir() and not isinstance(e, FileNotFoundError):  # ENOTEMPTY, EEXIST, or Windows' EACCES
                raise _lost_race(dest) from None
            raise
        return
    check_dest(dest)  # again: what is there may have changed while the export was written
    card = dest / "README.md"
    if card.is_file() and not (work / card.name).exists():
        shutil.copyfile(card, work / card.name)  # a model card written for the hub: the user's, kept
    old = dest.parent / f".{dest.name}.old-{os.getpid()}-{work.name.rsplit('-', 1)[-1]}"
    try:
        os.replace(dest, old)
    except FileNotFoundError:  # another export took it away meanwhile: start over
        _swap_into_place(work, dest)
        return
    try:
        os.replace(work, dest)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and dest.is_dir():
            # Another export landed between the two renames: it stands; the replaced one goes.
            shutil.rmtree(old, ignore_errors=True)
            raise _lost_race(dest) from None
        os.replace(old, dest)
        raise
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
