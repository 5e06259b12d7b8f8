"""Where a model's ONNX export comes from: clipdex's cache (exported here with torch), a ready
export on the hub (Immich's repositories, or one published with ``clipdex models export``), or
a local export folder (``--model onnx:/path``).

:func:`find_export` is what the ONNX and OpenVINO runtimes ask. It prefers what is already on
this machine, and among downloads the small one: a ready export (a few hundred MB of ONNX) over
torch's weights plus an export made here, which also needs ``clipdex[torch]``. Nothing here
imports torch; a download fails within seconds on an offline machine, naming what to fetch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shlex
from pathlib import Path
from typing import Any

from clipdex.errors import ModelError, ModelUnavailable, first_line
from clipdex.models.bundle import HUB_IGNORE, HUB_PATTERNS, TEXTUAL, VISUAL, Export, read_export
from clipdex.models.spec import ONNX_PREFIX, ModelSpec

log = logging.getLogger(__name__)
# A hub repository, optionally pinned to a revision: owner/name or owner/name@revision.
REPO_REF = re.compile(r"([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?")
# A graph whose weights lie in files beside it is small; one bigger than this holds its own weights.
EMBEDDED_WEIGHTS_BYTES = 64 << 20
INT8_FILE = "visual-int8-r2.onnx"  # = onnx_export.VISUAL_FILES['int8'] (same recipe, same name)


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
    words = ["hf", "download", repo]
    if revision:
        words += ["--revision", revision]
    for pattern in HUB_PATTERNS:
        words += ["--include", pattern]
    for pattern in HUB_IGNORE:
        words += ["--exclude", pattern]
    return shlex.join(words)


def work_dir(key: str, root: Path) -> Path:
    """Where clipdex keeps what it derives from the export in ``root`` (its int8 image tower):
    clipdex's cache, named by the model's key and the folder (a hub snapshot's folder names its
    revision), never the user's folder or the Hugging Face cache."""
    from clipdex.settings import cache_dir

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "onnx" / f"{slug}~{digest}"


# -- the hub cache --------------------------------------------------------------

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
    holds its own weights). A download cut short leaves some of a big model's many files out."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        if graph.stat().st_size > EMBEDDED_WEIGHTS_BYTES:
            return []
        model = onnx.load(str(graph), load_external_data=False)
    except (OSError, ValueError, DecodeError):  # unreadable: the runtime says which file is damaged, what to do
        return []
    names: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return sorted(n for n in names if not (graph.parent / n).is_file())


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
           "here (set HF_HOME to it), or pass a folder holding the export as --model onnx:/path/to/export.")
    require_hub(model, looked, fix)
    try:
        found = Path(snapshot_download(repo, revision=revision, allow_patterns=[MANIFEST, CONFIG]))
    except Exception as e:  # the hub's errors are many (not found, gated, network): all mean the same here
        raise ModelUnavailable(model, looked, f"cannot read the repository: {first_line(e)}", fix) from e
    if not ((found / MANIFEST).is_file() or (found / CONFIG).is_file()):
        raise ModelUnavailable(model, looked, "the repository has neither clipdex.json nor config.json, so it "
                               "is not an ONNX export in the hub layout", fix)
    return found


# -- finding an export ------------------------------------------------------------

def find_export(spec: ModelSpec, precision: str, exporter: Any, *, download: bool = True) -> Export:
    """The export to run ``spec`` from, in ``precision`` ('fp32' or 'int8', quantised once where
    missing). ``exporter`` is the family's torch exporter, asked only where clipdex exports the
    model itself (``None`` where torch is not installed).

    In order: (a) clipdex's own cache export; (b) for ``--model onnx:…`` its folder or hub
    repository; (c) the model's ready export (``spec.onnx``) already in the Hugging Face cache
    or on disk; (d) an export made here from weights already on disk (needs torch); (e) the ready
    export downloaded; (f) the weights downloaded and exported here (needs torch); else an error
    saying what to download or install.
    """
    from clipdex.models import onnx_export
    from clipdex.models.network import require_hub

    if onnx_export.cached(spec):  # (a)
        return onnx_export.cache_export(spec, precision, exporter)
    if spec.family == "onnx":  # (b)
        return _in_precision(_onnx_family_export(spec, download=download), precision, spec)
    if spec.onnx:  # (c)
        ready = _ready_here(spec, spec.onnx)
        if ready is not None:
            return _in_precision(ready, precision, spec)
    if exporter is not None and _weights_here(spec):  # (d)
        return onnx_export.cache_export(spec, precision, exporter)
    if spec.onnx and not is_folder_reference(spec.onnx):  # (e)
        looked, reason, fix = _unavailable(spec, exporter)
        require_hub(spec.name, looked, fix, download=download)  # offline: at once, naming every way
        try:
            snapshot = download_export(spec.onnx, spec.name)
        except ModelUnavailable:
            if exporter is None:
                raise
            log.info("no ready ONNX export of %s from %s; exporting it here with torch", spec.name, spec.onnx)
        else:
            return _in_precision(_read(spec, snapshot, f"hub {spec.onnx}@{snapshot.name}"), precision, spec)
    if exporter is not None and download:  # (f)
        return onnx_export.cache_export(spec, precision, exporter)
    looked, reason, fix = _unavailable(spec, exporter)
    raise ModelUnavailable(spec.name, looked, reason if download else "not downloaded yet", fix)


def check_available(spec: ModelSpec, exporter: Any, *, download: bool = True) -> None:
    """Raise what :func:`find_export` would raise for a model it cannot get, before a command
    creates anything (a first ``clipdex index``), without downloading an export or exporting:
    fine where an export is on this machine, where the hub can be reached for a ready one, or
    where torch can export weights that are here or that open_clip then downloads (as before)."""
    from clipdex.models import onnx_export
    from clipdex.models.network import require_hub

    if onnx_export.cached(spec):
        return
    if spec.family == "onnx":
        if spec.weights:
            if not Path(spec.weights).is_dir():
                raise ModelError(f"the ONNX export of {spec.name} is gone: no folder {spec.weights}. If it moved, "
                                 f"pass --model {ONNX_PREFIX}/new/path.")
            return
        reference = spec.pretrained or ""
        if cached_snapshot(reference) is None:
            from huggingface_hub import constants

            require_hub(spec.name, f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {reference})",
                        f"On a machine with internet, run `{download_command(reference)}` and copy its Hugging "
                        "Face cache here (set HF_HOME to it).", download=download)
        return
    if spec.onnx:
        folder = is_folder_reference(spec.onnx)
        if (export_complete(Path(spec.onnx).expanduser()) if folder else cached_snapshot(spec.onnx) is not None):
            return
    if exporter is not None and _weights_here(spec):
        return
    looked, reason, fix = _unavailable(spec, exporter)
    if spec.onnx and not is_folder_reference(spec.onnx):
        require_hub(spec.name, looked, fix, download=download)
        return
    if exporter is not None:
        from clipdex.models.weights import locate_weights

        locate_weights(spec, download=download)
        return
    raise ModelUnavailable(spec.name, looked, reason if download else "not downloaded yet", fix)


def int8_tower(export: Export) -> Path:
    """The int8 image tower of ``export``: its own, or its fp32 tower quantised once (onnx_export's
    recipe) into :attr:`Export.work`, clipdex's cache, never the export's folder."""
    if "int8" in export.visual:
        return export.visual["int8"]
    from clipdex.models.onnx_export import VISUAL_FILES, quantise

    target = export.work / VISUAL_FILES["int8"]
    if not target.exists():
        name = str(export.meta.get("key") or export.root.name)
        quantise(name, export.visual["fp32"], target)
    return target


def _in_precision(export: Export, precision: str, spec: ModelSpec) -> Export:
    """``export`` with its int8 image tower made where ``precision`` asks for it."""
    if precision != "int8" or "int8" in export.visual:
        return export
    try:
        tower = int8_tower(export)
    except OSError as e:
        raise ModelError(f"cannot quantise the image tower of {spec.name} ({export.source}) into {export.work}: "
                         f"{first_line(e)}. Free some space there or use --precision fp32.") from e
    return dataclasses.replace(export, visual={**export.visual, "int8": tower})


def _read(spec: ModelSpec, root: Path, source: str) -> Export:
    """The export in ``root`` for ``spec``: read, and checked to be of the model ``spec`` names
    (a registry source that holds another model's export would mix vectors in an index)."""
    from clipdex.models.bundle import identity_of

    key = spec.key
    export = read_export(root, source=source, work=work_dir(key, root))
    found = export.meta.get("key") or identity_of(root, _source_name(spec, root))
    if spec.family != "onnx" and found != key:
        raise ModelError(f"the ONNX export of {spec.name} in {source} is of another model ({found}, not {key}); "
                         f"its vectors would not match this model's. Fix the model's onnx source, or use "
                         f"--model {ONNX_PREFIX}{spec.onnx} to index with that export as a model of its own.")
    return export


def _source_name(spec: ModelSpec, root: Path) -> str:
    """The name that spells an export's model where it has no clipdex.json: its repository's
    name (Immich's ``ARCH__TAG``) or its folder's."""
    reference = spec.onnx or spec.pretrained or ""
    if reference and not is_folder_reference(reference):
        return split_repo(reference)[0].rsplit("/", 1)[-1]
    return root.name


def _onnx_family_export(spec: ModelSpec, *, download: bool) -> Export:
    """The export ``--model onnx:…`` names: its folder, or its hub repository (cached, or downloaded)."""
    if spec.weights:
        folder = Path(spec.weights)
        if not folder.is_dir():
            raise ModelError(f"the ONNX export of {spec.name} is gone: no folder {folder}. If it moved, pass "
                             f"--model {ONNX_PREFIX}/new/path (a folder written by `clipdex models export`).")
        return _read(spec, folder, f"folder {folder}")
    reference = spec.pretrained or ""
    snapshot = cached_snapshot(reference) or download_export(reference, spec.name, download=download)
    return _read(spec, snapshot, f"hub {reference}@{snapshot.name}")


def _ready_here(spec: ModelSpec, reference: str) -> Export | None:
    """The model's ready export from ``reference`` if it is on this machine: a folder, or a
    hub repository complete in the Hugging Face cache."""
    if is_folder_reference(reference):
        folder = Path(reference).expanduser()
        return _read(spec, folder, f"folder {folder}") if export_complete(folder) else None
    snapshot = cached_snapshot(reference)
    return None if snapshot is None else _read(spec, snapshot, f"hub {reference}@{snapshot.name}")


def _weights_here(spec: ModelSpec) -> bool:
    """Whether the model's weights are on this machine already (exporting them needs no download)."""
    from clipdex.models.weights import locate_weights

    try:
        locate_weights(spec, download=False)
    except (ModelError, ImportError):
        return False
    return True


def _unavailable(spec: ModelSpec, exporter: Any) -> tuple[str, str, str]:
    """(where clipdex looked, why it found nothing, what to do) when nothing on this machine runs
    ``spec``: download its ready export, install torch to export it, or point at an export folder."""
    from huggingface_hub import constants

    from clipdex.models.onnx_export import export_dir

    looked = [f"clipdex's cache {export_dir(spec)}"]
    fixes = []
    if spec.onnx and not is_folder_reference(spec.onnx):
        looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {spec.onnx})")
        fixes.append(f"on a machine with internet, run `{download_command(spec.onnx)}` and copy its Hugging Face "
                     "cache here (set HF_HOME to it)")
    elif spec.onnx:
        looked.append(describe(spec.onnx))
    if exporter is None:
        from clipdex.models import optional

        install = optional.HF_INSTALL if spec.family == "hf" else optional.TORCH_INSTALL
        fixes.append(f"install torch to export it here: `{install}`")
        reason = "it has no ready ONNX export here" + (" and torch is not installed" if not spec.onnx else "")
    else:
        fixes.append("run any clipdex command with this model on a machine with internet (its weights are "
                     "downloaded and exported once)")
        reason = "neither its ONNX export nor its weights are here"
    fixes.append(f"or pass a folder written by `clipdex models export` as --model {ONNX_PREFIX}/path/to/export")
    fix = "; ".join(fixes)
    return ", ".join(looked), reason, fix[0].upper() + fix[1:] + "."
