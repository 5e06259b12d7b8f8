"""The model registry: short names for open_clip and Hugging Face Transformers models, kept as data.

``registry.toml`` beside this file maps names and aliases to an open_clip
architecture and pretrained tag, or to a Transformers checkpoint on the hub.
:func:`resolve_model` turns what a user typed (a registry name, ``ARCH/TAG``,
``hf:REPO`` or ``hf:/local/folder``, a local weights file, a custom
architecture JSON, ``onnx:REPO`` or ``onnx:/export/folder``) into a
:class:`ModelSpec`; nothing here imports torch. An entry's ``onnx`` names a hub
repository with a ready ONNX export of its weights (:mod:`clipdex.models.sources`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from clipdex.errors import ModelError, UnknownModel
from clipdex.models.spec import HF_PREFIX, ONNX_PREFIX, ModelSpec, fingerprint_weights

__all__ = ["ModelSpec", "RegistryEntry", "default_model_name", "fingerprint_weights", "get_registry_entry",
           "list_models", "resolve_model"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REGISTRY_FILE = Path(__file__).with_name("registry.toml")


@dataclass(frozen=True)
class RegistryEntry:
    """One named model of the registry."""

    name: str
    arch: str = ""
    pretrained: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    hf: str | None = None  # a Transformers checkpoint on the hub, in place of arch/pretrained
    onnx: str | None = None  # a hub repository with a ready ONNX export of the same weights (Immich's)

    @property
    def source(self) -> str:
        """'ViT-B-32/openai' or 'hf:google/siglip-base-patch16-224'."""
        return f"{HF_PREFIX}{self.hf}" if self.hf else f"{self.arch}/{self.pretrained}"

    @property
    def sources(self) -> str:
        """Where the model comes from, in words: 'ONNX: immich-app/ViT-B-32__openai · torch: open_clip
        ViT-B-32/openai' (the ready export first: what an install without torch uses)."""
        torch = f"Transformers {self.hf}" if self.hf else f"open_clip {self.arch}/{self.pretrained}"
        return f"ONNX: {self.onnx} · torch: {torch}" if self.onnx else f"torch: {torch}"


@lru_cache(maxsize=1)
def _load_registry() -> tuple[str, dict[str, RegistryEntry]]:
    data = tomllib.loads(REGISTRY_FILE.read_text(encoding="utf-8"))
    entries = {
        name: RegistryEntry(
            name=name,
            arch=table.get("arch", ""),
            pretrained=table.get("pretrained", ""),
            aliases=tuple(table.get("aliases", ())),
            description=table.get("description", ""),
            hf=table.get("hf"),
            onnx=table.get("onnx"),
        )
        for name, table in data["models"].items()
    }
    return data["default"], entries


def ready_export(arch: str, pretrained: str | None) -> str | None:
    """The ready ONNX export the registry names for open_clip's ``arch``/``pretrained`` (whatever
    name it was asked by: 'ViT-B-32', 'ViT-B-32/openai', or an index's stored spec), or None."""
    for entry in list_models():
        if entry.onnx and not entry.hf and entry.arch == arch and entry.pretrained == pretrained:
            return entry.onnx
    return None


def with_ready_export(spec: ModelSpec) -> ModelSpec:
    """``spec`` with the registry's ready export filled in where it has none: a spec stored by an index
    made before exports came from the hub, or named ``ARCH/TAG``. A local checkpoint has none."""
    if spec.onnx or spec.family != "open_clip" or spec.weights or spec.config:
        return spec
    found = ready_export(spec.arch, spec.pretrained)
    return spec if found is None else dataclasses.replace(spec, onnx=found)


def list_models() -> list[RegistryEntry]:
    """The registry's entries, in file order."""
    return list(_load_registry()[1].values())


def default_model_name() -> str:
    return _load_registry()[0]


def get_registry_entry(name: str) -> RegistryEntry | None:
    """Entry for a name or alias (case-insensitive), or None."""
    entries = _load_registry()[1]
    if name in entries:
        return entries[name]
    folded = name.casefold()
    for entry in entries.values():
        if entry.name.casefold() == folded or any(a.casefold() == folded for a in entry.aliases):
            return entry
    return None


def resolve_model(
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    model_config: str | os.PathLike[str] | None = None,
) -> ModelSpec:
    """Turn a model name, weights file and/or architecture JSON into a spec.

    - ``model`` alone: a registry name or alias, or ``ARCH/TAG`` for any open_clip
      pretrained model; weights come from open_clip's download.
    - ``hf:REPO`` (a Transformers checkpoint on the hub, through the Hugging Face
      cache) or ``hf:/path/to/folder`` (a local ``save_pretrained`` folder).
    - ``onnx:REPO`` or ``onnx:/path/to/folder``: a ready ONNX export in the hub layout
      (Immich's, or one written by ``clipdex models export``), known by the model it was
      exported from (:func:`clipdex.models.bundle.identity_of`).
    - ``weights``: a checkpoint file for that architecture (fine-tuned, offline).
    - ``model_config``: an open_clip model-config JSON for a custom architecture;
      needs ``weights``. Its name is ``model`` if given, else the file's stem.
    """
    weights_path = _check_weights(weights) if weights is not None else None
    sha = fingerprint_weights(weights_path) if weights_path else None

    if model_config is not None:
        config_path = Path(model_config)
        config = _read_model_config(config_path)
        if weights_path is None:
            raise ModelError(
                f"custom architecture {config_path} needs its weights: add --weights FILE "
                "(a checkpoint saved from open_clip for this architecture)."
            )
        name = model or config_path.stem
        return ModelSpec(name=name, arch=name, weights=weights_path, weights_sha256=sha,
                         config=config)

    name = model or default_model_name()
    entry = get_registry_entry(name)
    if entry is not None and entry.hf:
        return _hf_spec(f"{HF_PREFIX}{entry.hf}", entry.name, weights_path, model_config)
    if name.startswith(HF_PREFIX):
        return _hf_spec(name, None, weights_path, model_config)
    if name.startswith(ONNX_PREFIX):
        from clipdex.models.hub_exports import resolve

        return resolve(name[len(ONNX_PREFIX):], weights_path, model_config)
    if entry is None and not weights_path and _export_folder(name):
        raise ModelError(f"{name} is a folder holding a ready ONNX export: write --model {ONNX_PREFIX}{name} "
                         "(a bare path names a model only after onnx: or hf:).")
    if entry is not None:
        # A local checkpoint replaces the weights the ready export was made from: not the same model.
        return ModelSpec(name=entry.name, arch=entry.arch, pretrained=entry.pretrained,
                         weights=weights_path, weights_sha256=sha, onnx=None if weights_path else entry.onnx)
    if "/" in name:
        arch, _, tag = name.partition("/")
        if not arch or not tag:
            raise UnknownModel(name, [e.name for e in list_models()],
                               maybe_hf=os.path.isdir(os.path.expanduser(name)))
        return ModelSpec(name=name, arch=arch, pretrained=tag, weights=weights_path,
                         weights_sha256=sha, onnx=None if weights_path else ready_export(arch, tag))
    if weights_path is not None:
        # A bare open_clip architecture with a local checkpoint; checked when built.
        return ModelSpec(name=name, arch=name, weights=weights_path, weights_sha256=sha)
    raise UnknownModel(name, [e.name for e in list_models()], maybe_hf=os.path.isdir(os.path.expanduser(name)))


def _hf_spec(reference: str, name: str | None, weights: str | None,
             model_config: str | os.PathLike[str] | None) -> ModelSpec:
    if weights is not None or model_config is not None:
        raise ModelError(f"{reference} is a Transformers checkpoint: its weights and configuration are "
                         "its folder's. Drop --weights/--model-config; for local files use "
                         "--model hf:/path/to/folder (a save_pretrained folder).")
    from clipdex.models.hf import resolve

    return resolve(reference[len(HF_PREFIX):], name)


def _export_folder(name: str) -> bool:
    """Whether ``name`` is a folder holding an ONNX export (visual/ or textual/ model.onnx)."""
    from clipdex.models.bundle import looks_like_export

    folder = Path(name).expanduser()
    return folder.is_dir() and looks_like_export(folder)


def _check_weights(weights: str | os.PathLike[str]) -> str:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(
            f"weights file {path} does not exist. Pass the path of a checkpoint saved "
            "from open_clip (a .pt, .bin or .safetensors file)."
        )
    return str(path.resolve())


def _read_model_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model config {path} does not exist. Pass an open_clip "
                         "model-config JSON file.") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"model config {path} is not valid JSON (line {e.lineno}: {e.msg}). "
                         "Fix the file; it must be an open_clip model config.") from None
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise ModelError(f"model config {path} is not an open_clip model config: it needs "
                         "embed_dim, vision_cfg and text_cfg (see open_clip's model_configs/).")
    return config
