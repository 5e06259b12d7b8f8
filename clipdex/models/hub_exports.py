"""Ready ONNX exports named by reference: ``onnx:/path`` (a folder) or ``onnx:owner/name[@revision]``
(a hub repository), what is cached of them and how to fetch them.

A leaf below the registry (which resolves ``--model onnx:…`` here) and
:mod:`clipdex.models.sources` (which finds a model's export); it imports neither, nor torch.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from clipdex.errors import ModelError, ModelUnavailable, first_line
from clipdex.models.bundle import (
    HUB_IGNORE,
    HUB_PATTERNS,
    TEXTUAL,
    VISUAL,
    external_data,
    hub_download_command,
    identity_of,
)
from clipdex.models.spec import ONNX_PREFIX, ModelSpec

log = logging.getLogger(__name__)
# A hub repository, optionally pinned to a revision: owner/name or owner/name@revision.
REPO_REF = re.compile(r"([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?")


# -- references ---------------------------------------------------------------

def is_folder_reference(reference: str) -> bool:
    """Whether ``onnx:REFERENCE`` names a folder rather than a hub repository: a path that is
    absolute, relative (./, ../, ~), Windows-style (C:\\, a backslash), or an existing folder;
    ``owner/name`` that does not exist here is a repository."""
    return (reference.startswith(("/", "./", "../", "~", ".\\", "..\\", "."))
            or os.path.isabs(reference) or "\\" in reference
            or re.match(r"[A-Za-z]:[\\/]", reference) is not None
            or os.path.isdir(os.path.expanduser(reference)))


def split_repo(reference: str) -> tuple[str, str | None]:
    """('owner/name', revision or None) of a hub reference ``owner/name[@revision]``; a
    :class:`ModelError` for what is neither a repository nor a folder."""
    match = REPO_REF.fullmatch(reference.strip())
    if match is None:
        raise ModelError(f"{ONNX_PREFIX}{reference} is neither a hub repository (owner/name, e.g. "
                         f"{ONNX_PREFIX}immich-app/ViT-B-32__openai) nor an existing folder. Check the spelling, "
                         f"or give a folder as {ONNX_PREFIX}/path/to/export or {ONNX_PREFIX}./export.")
    return match.group(1), match.group(2)


def describe(reference: str) -> str:
    """A source in words, for listings and errors: 'hub repository X' or 'folder X'."""
    if is_folder_reference(reference):
        return f"folder {Path(reference).expanduser()}"
    return f"hub repository {reference}"


def download_command(reference: str) -> str:
    """The ``hf download`` command that fetches an export's ONNX files (not Immich's other formats)."""
    repo, revision = split_repo(reference)
    return hub_download_command(repo, revision)


def cached_snapshot(reference: str, *, complete: bool = True) -> Path | None:
    """The Hugging Face cache's snapshot of the hub export ``reference`` (owner/name[@revision]),
    or None. ``complete``: only one holding both towers, the config and the tokenizer, and every
    weights file its towers' graphs name (a big model's lie beside its model.onnx); otherwise
    one holding at least its clipdex.json or config.json (enough to name the model)."""
    from huggingface_hub import snapshot_download

    repo, revision = split_repo(reference)
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=list(HUB_PATTERNS),
                                        ignore_patterns=list(HUB_IGNORE), local_files_only=True))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError is both), or a damaged cache
        return None
    if complete:
        return folder if export_complete(folder) else None
    from clipdex.models.bundle import CONFIG, MANIFEST

    return folder if (folder / MANIFEST).is_file() or (folder / CONFIG).is_file() else None


def export_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole export in the hub layout: both towers, config.json,
    preprocess_cfg.json, tokenizer.json, and every external weights file the towers' graphs
    name (looked for only where a graph is small enough to keep its weights outside)."""
    from clipdex.models.bundle import CONFIG, PREPROCESS, TOKENIZER

    if not all((folder / name).is_file() for name in (CONFIG, VISUAL, TEXTUAL, PREPROCESS, TOKENIZER)):
        return False
    return all(not missing_external_data(folder / tower) for tower in (VISUAL, TEXTUAL))


def missing_external_data(graph: Path) -> list[str]:
    """The files holding ``graph``'s external weights that are not beside it ([] for a graph that
    holds its own weights). A download cut short leaves some of a big model's many files out.
    Cheap enough for every cold process (:func:`~clipdex.models.bundle.external_data`: no onnx
    import for a graph without external data, each graph read once a process)."""
    return [name for name in external_data(graph) if not (graph.parent / name).is_file()]


def download_export(reference: str, model: str, *, download: bool = True) -> Path:
    """The hub export ``reference``'s snapshot, downloaded into the Hugging Face cache (its ONNX
    files only, with the hub's progress bar); offline, a :class:`ModelUnavailable` within seconds
    that names the repository and the command to fetch it."""
    from huggingface_hub import constants, snapshot_download

    from clipdex.models.network import require_hub

    repo, revision = split_repo(reference)
    looked = f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {reference})"
    fix = (f"On a machine with internet, run `{download_command(reference)}` and copy its Hugging Face cache "
           "here (set HF_HOME to it).")
    require_hub(model, looked, fix, download=download)
    log.info("downloading the ONNX export of %s from %s", model, reference)
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=list(HUB_PATTERNS),
                                        ignore_patterns=list(HUB_IGNORE)))
    except Exception as e:  # the hub's errors are many (not found, gated, network): all mean the same here
        raise ModelUnavailable(model, looked, f"download failed: {first_line(e)}", fix) from e
    if not export_complete(folder):
        raise ModelUnavailable(model, looked, "the repository holds no complete ONNX export (both towers' "
                               "model.onnx, config.json, visual/preprocess_cfg.json, textual/tokenizer.json)", fix)
    return folder


def small_files(reference: str, model: str) -> Path:
    """A snapshot of the hub export ``reference`` holding at least its clipdex.json or config.json
    (what names its model): the cached one, else those small files downloaded."""
    folder = cached_snapshot(reference, complete=False)
    if folder is not None:
        return folder
    from huggingface_hub import constants, snapshot_download

    from clipdex.models.bundle import CONFIG, MANIFEST
    from clipdex.models.network import require_hub

    repo, revision = split_repo(reference)
    looked = f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {reference})"
    fix = (f"On a machine with internet, run `{download_command(reference)}` and copy its Hugging Face cache "
           "here (set HF_HOME to it), or pass a folder holding the export as --model onnx:/path/to/export."
           f" ({reference} was read as a hub repository because no folder {Path(reference).resolve()} exists; "
           f"if you meant a folder, check the path, or write it as {ONNX_PREFIX}./{reference}.)")
    require_hub(model, looked, fix)
    try:
        found = Path(snapshot_download(repo, revision=revision, allow_patterns=[MANIFEST, CONFIG]))
    except Exception as e:  # the hub's errors are many (not found, gated, network): all mean the same here
        raise ModelUnavailable(model, looked, f"cannot read the repository: {first_line(e)}", fix) from e
    if not ((found / MANIFEST).is_file() or (found / CONFIG).is_file()):
        raise ModelUnavailable(model, looked, "the repository has neither clipdex.json nor config.json, so it "
                               "is not an ONNX export in the hub layout", fix)
    return found


def resolve(reference: str, weights: str | None, model_config: str | os.PathLike[str] | None) -> ModelSpec:
    """The spec of ``onnx:REFERENCE``: an export folder (``onnx:/path``, ``onnx:./x``, or ``a/b`` that
    exists here) or a hub repository ``owner/name[@revision]``, known by the model it was exported
    from (its clipdex.json, or Immich's ``ARCH__TAG`` name), read from the folder or the hub
    snapshot (only its small files are fetched when the repository is not cached)."""
    reference = reference.strip()
    if weights is not None or model_config is not None:
        raise ModelError(f"{ONNX_PREFIX}{reference} is a ready ONNX export: its weights and configuration are in "
                         "its files. Drop --weights/--model-config.")
    if not reference:
        raise ModelError(f"an empty ONNX reference: use --model {ONNX_PREFIX}owner/name (an export on the hub) or "
                         f"--model {ONNX_PREFIX}/path/to/folder (a folder written by `clipdex models export`).")
    if is_folder_reference(reference):
        folder = Path(reference).expanduser().resolve()
        if not folder.is_dir():
            what = "is a file; an export is the folder that holds it" if folder.is_file() else "does not exist"
            raise ModelError(f"{ONNX_PREFIX}{reference}: the folder {folder} {what}. Pass a folder written by "
                             f"`clipdex models export` (or an Immich export: visual/, textual/, config.json), or "
                             f"{ONNX_PREFIX}owner/name for one on the hub.")
        return ModelSpec(name=f"{ONNX_PREFIX}{folder}", arch="onnx", weights=str(folder), family="onnx",
                         identity=identity_of(folder, folder.name), onnx=str(folder))
    repo, _ = split_repo(reference)
    name = f"{ONNX_PREFIX}{reference}"
    snapshot = small_files(reference, name)
    identity = identity_of(snapshot, repo.rsplit("/", 1)[-1])
    if identity.startswith("onnx@") and not export_complete(snapshot):
        # Known by its towers' fingerprint (no clipdex.json, no ARCH__TAG name): those are needed first.
        snapshot = cached_snapshot(reference) or download_export(reference, name)
        identity = identity_of(snapshot, repo.rsplit("/", 1)[-1])
    return ModelSpec(name=name, arch="onnx", pretrained=reference, family="onnx", identity=identity,
                     onnx=reference)
