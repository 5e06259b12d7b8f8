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
from pathlib import Path
from typing import Any

from clipdex.errors import ModelError, ModelUnavailable, first_line
from clipdex.models.bundle import Export, read_export
from clipdex.models.hub_exports import (
    cached_snapshot,
    describe,
    download_command,
    download_export,
    export_complete,
    is_folder_reference,
    missing_external_data,
    small_files,
    split_repo,
)
from clipdex.models.spec import ONNX_PREFIX, ModelSpec

__all__ = ["cached_snapshot", "check_available", "describe", "download_command", "download_export",
           "export_complete", "find_export", "int8_tower", "is_folder_reference", "missing_external_data",
           "small_files", "split_repo", "work_dir"]

log = logging.getLogger(__name__)


def work_dir(key: str, root: Path) -> Path:
    """Where clipdex keeps what it derives from the export in ``root`` (its int8 image tower):
    clipdex's cache, named by the model's key and the folder (a hub snapshot's folder names its
    revision), never the user's folder or the Hugging Face cache."""
    from clipdex.models.onnx_export import cache_slug
    from clipdex.settings import cache_dir

    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "onnx" / f"{cache_slug(key)}~{digest}"


# -- the hub cache --------------------------------------------------------------

# -- finding an export ------------------------------------------------------------

def find_export(spec: ModelSpec, precision: str, exporter: Any, *, download: bool = True) -> Export:
    """The export to run ``spec`` from, in ``precision`` ('fp32' or 'int8', quantised once where
    missing). ``exporter`` is the family's torch exporter, asked only where clipdex exports the
    model itself (``None`` where torch is not installed).

    In order: (a) for ``--model onnx:…`` its folder or hub repository, always (the export the
    user named is the one that runs); (b) clipdex's own cache export; (c) the model's ready
    export (``spec.onnx``) already in the Hugging Face cache or on disk; (d) an export made
    here from weights already on disk (needs torch); (e) the ready export downloaded; (f) the
    weights downloaded and exported here (needs torch); else an error saying what to download
    or install.
    """
    from clipdex.models import onnx_export
    from clipdex.models.network import require_hub

    if spec.family == "onnx":  # (a)
        return _in_precision(_onnx_family_export(spec, download=download), precision, spec)
    if onnx_export.cached(spec):  # (b)
        return onnx_export.cache_export(spec, precision, exporter)
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
    if onnx_export.cached(spec):
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
    if found != key and spec.family == "onnx":
        raise ModelError(f"the ONNX export in {source} is now of model {found}, but {spec.name} was {key} when "
                         "this index took it: the export was replaced since. Its vectors would not match the "
                         f"index's. Index it as a model of its own (--model {spec.name} --add-model, or a new "
                         "--index), or put the export the index was built with back.")
    if found != key:
        raise ModelError(f"the ONNX export of {spec.name} in {source} is of another model ({found}, not {key}); "
                         f"its vectors would not match this model's. Fix the model's onnx source, or use "
                         f"--model {ONNX_PREFIX}{spec.onnx} to index with that export as a model of its own.")
    return export


def folder_stamp(folder: Path) -> str:
    """A short digest of an export folder's files (names, sizes, modification times): its source
    string changes when the folder is rewritten, so the index checks the new files' vectors again."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


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
        return _read(spec, folder, f"folder {folder} ({folder_stamp(folder)})")
    reference = spec.pretrained or ""
    snapshot = cached_snapshot(reference) or download_export(reference, spec.name, download=download)
    return _read(spec, snapshot, f"hub {reference}@{snapshot.name}")


def _ready_here(spec: ModelSpec, reference: str) -> Export | None:
    """The model's ready export from ``reference`` if it is on this machine: a folder, or a
    hub repository complete in the Hugging Face cache."""
    if is_folder_reference(reference):
        folder = Path(reference).expanduser()
        return _read(spec, folder, f"folder {folder} ({folder_stamp(folder)})") if export_complete(folder) else None
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
    if exporter is None and spec.family == "open_clip" and spec.weights:
        from clipdex.models import optional

        return (looked[0], f"{spec.weights} is a torch checkpoint, and torch is not installed here to run or "
                f"export it", f"Install it: `{optional.TORCH_INSTALL}`; or, on a machine with torch, run `clipdex "
                f"models export {spec.name} DIR --weights {spec.weights}` and index here with --model "
                f"{ONNX_PREFIX}DIR.")
    fixes = []
    if spec.onnx and not is_folder_reference(spec.onnx):
        looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {spec.onnx})")
        fixes.append(f"on a machine with internet, run `{download_command(spec.onnx)}` and copy its Hugging Face "
                     "cache here (set HF_HOME to it)")
    elif spec.onnx:
        looked.append(describe(spec.onnx))
    if exporter is None:
        from clipdex.models import optional

        fixes.append(f"install torch to export it here: `{optional.family_install(spec.family)}`")
        reason = "it has no ready ONNX export here" + (" and torch is not installed" if not spec.onnx else "")
    else:
        fixes.append("run any clipdex command with this model on a machine with internet (its weights are "
                     "downloaded and exported once)")
        if spec.family == "open_clip":
            fixes.append(f"bring its open_clip weights: copy a Hugging Face cache that holds them (`hf download` "
                         f"of its weights repository on a machine with internet), or pass the checkpoint with "
                         f"--weights FILE --model {spec.name}")
        reason = "neither its ONNX export nor its weights are here"
    fixes.append(f"or pass a folder written by `clipdex models export` as --model {ONNX_PREFIX}/path/to/export")
    fix = "; ".join(fixes)
    return ", ".join(looked), reason, fix[0].upper() + fix[1:] + "."
