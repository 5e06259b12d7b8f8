"""A model's towers exported once to ONNX, for the runtimes that read ONNX files.

On the first use of a model on the CPU, its image and text towers are exported
by the model family's torch runtime (its ``export``, which
:mod:`clipdex.models.runtimes.onnx` passes in; this module imports no runtime) into
``$CLIPDEX_HOME/cache/onnx/<model>/``, with ``meta.json`` (dimension,
preprocessing, scoring, tokenizer). ``int8`` is ONNX Runtime's dynamic
quantisation of the image tower. Every later process loads the exported files
without torch: a cold ``clipdex search`` answers in about a second.

The image tower takes 8-bit (N, H, W, 3) pixels, resized and cropped, and
normalises them inside the graph; both towers return L2-normalised vectors.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipdex.errors import ModelError
from clipdex.models.spec import ModelSpec
from clipdex.settings import cache_dir

if TYPE_CHECKING:
    from clipdex.models.bundle import Export

log = logging.getLogger(__name__)
OPSET = 17
EXPORT_VERSION = 5  # bump to re-export every cached model (4: scoring and tokenizer facts; 5: fp32 always)
# The file each precision's image tower lives in. int8 recipe 2: every MatMul,
# per-channel 7-bit weights (recipe 1's 8-bit weights saturated AVX2's
# multiply-add without VNNI: cosine to fp32 fell to 0.989; now 0.9997).
VISUAL_FILES = {"fp32": "visual-fp32.onnx", "int8": "visual-int8-r2.onnx"}
TEXT_FILE = "text-fp32.onnx"
STALE_TEMP_S = 3600  # a temporary export older than this is abandoned, whoever made it
# Temporary exports and quantisations carry the pid of the process writing them, so
# that a later export can tell the leftovers of a killed run (pid gone) from work
# in progress: "<model>-vN.tmp-<pid>-<random>/" and "visual-int8-r2.<pid>.tmp".
TEMP_EXPORT = re.compile(r".+\.tmp-(\d+)-[A-Za-z0-9_]+")
TEMP_QUANTISED = re.compile(r".+\.(\d+)\.tmp")
LEGACY_TEMP_EXPORT = re.compile(r".+-v\d+\.[a-z0-9_]{8}")  # mkdtemp's names before the pid was in them
TOKENIZER_FILE = "tokenizer.json"
# A family's exporter: writes the towers into a folder, returns the facts for meta.json.
Exporter = Callable[[ModelSpec, Path], dict[str, Any]]


def cache_slug(key: str) -> str:
    """A model key as a folder name in clipdex's ONNX cache."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def export_dir(spec: ModelSpec) -> Path:
    """Where the export of ``spec`` lives: named by its key and, for a Transformers checkpoint,
    by what else its export depends on (:func:`clipdex.models.hf.export_stamp`: its tokenizer files
    and hub revision), so that checkpoints sharing weights never share or fight over one export."""
    slug = cache_slug(spec.key)
    if spec.family == "hf":
        from clipdex.models.hf import export_stamp

        stamp = export_stamp(spec)
        slug += f"~{stamp}" if stamp else ""
    return cache_dir() / "onnx" / f"{slug}-v{EXPORT_VERSION}"


def read_meta(spec: ModelSpec) -> dict[str, Any] | None:
    try:
        return json.loads((export_dir(spec) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def no_exporter(spec: ModelSpec, what: str) -> str:
    """What to install (or use) where ``what`` needs the family's torch runtime and it is missing."""
    from clipdex.models import optional

    return (f"{optional.family_message(spec.family, what)}; or run a ready export: --model onnx:DIR (a folder "
            "written by `clipdex models export` on a machine with torch) or onnx:OWNER/REPO on the Hugging Face hub.")


def cached(spec: ModelSpec) -> bool:
    """Whether clipdex's cache holds an export of ``spec`` (its meta.json and fp32 image tower)."""
    return read_meta(spec) is not None and (export_dir(spec) / VISUAL_FILES["fp32"]).exists()


def cache_export(spec: ModelSpec, precision: str, exporter: Exporter | None) -> Export:
    """The cache's export of ``spec`` as an :class:`~clipdex.models.bundle.Export`, exported (with
    ``exporter``: the family's torch exporter, None where torch is not installed) and quantised
    where missing."""
    from clipdex.models.bundle import PIXELS_UINT8_NHWC, Export

    meta = ensure_exported(spec, precision, exporter)
    folder = export_dir(spec)
    if meta.get("tokenizer") == "clip-bpe":
        _write_clip_bpe_tokenizer(folder, meta)
    visual = {p: folder / name for p, name in VISUAL_FILES.items() if (folder / name).exists()}
    text = folder / TEXT_FILE
    tokenizer = folder / TOKENIZER_FILE
    return Export(root=folder, meta={**meta, "pixel_input": PIXELS_UINT8_NHWC}, origin="cache",
                  source=f"exported here ({folder})", visual=visual, text=text if text.exists() else None,
                  tokenizer=tokenizer if tokenizer.exists() else None, work=folder,
                  extra={"name": spec.name, **({"model_config": spec.config} if spec.config else {})})


def _write_clip_bpe_tokenizer(folder: Path, meta: dict[str, Any]) -> None:
    """CLIP's BPE as a tokenizer.json beside an export made with open_clip, where open_clip's
    vocabulary is at hand: a torch-free install sharing this cache then tokenises its texts
    with the ``tokenizers`` library."""
    target = folder / TOKENIZER_FILE
    if target.exists():
        return
    from clipdex.models import clip_bpe

    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        clip_bpe.write(tmp, int(meta.get("context_length", 77)))
        os.replace(tmp, target)
    except (OSError, RuntimeError, ModelError) as e:  # a read-only cache, or no open_clip here (its vocabulary)
        tmp.unlink(missing_ok=True)
        log.debug("could not write %s: %s", target, e)


def ensure_exported(spec: ModelSpec, precision: str, exporter: Exporter | None) -> dict[str, Any]:
    """The export of ``spec`` (its meta.json), exporting (with ``exporter``) and quantising what
    is missing."""
    folder = export_dir(spec)
    meta = read_meta(spec)
    if meta is None or not (folder / VISUAL_FILES["fp32"]).exists():
        if exporter is None:
            raise ModelError(no_exporter(spec, f"exporting {spec.name} to ONNX (there is no ready export of it here)"))
        remove_stale_exports(folder.parent)
        log.info("preparing %s for ONNX Runtime: exporting it once (about 20 s for a ViT-B model) "
                 "into %s", spec.name, folder)
        _export(spec, folder, exporter)
        meta = read_meta(spec)
        if meta is None:
            raise ModelError(f"exporting {spec.name} left no readable {folder / 'meta.json'}; "
                             f"delete {folder} and run again.")
    target = folder / VISUAL_FILES[precision]
    if precision == "int8" and not target.exists():
        quantise(spec.name, folder / VISUAL_FILES["fp32"], target)
    return meta


def quantise(name: str, source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation of the image tower ``source`` into ``target``
    (written atomically; the model is ``name`` in messages)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.info("quantising %s to int8 (once per model)", name)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_exports(folder)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs advice meant for its developers
    try:
        # reduce_range: 7-bit weights, so that u8 x s8 products summed in pairs
        # cannot overflow int16 on CPUs without VNNI (AVX2's vpmaddubsw).
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        root.setLevel(level)
    (folder / "visual-int8.onnx").unlink(missing_ok=True)  # recipe 1's, if any


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


def _export(spec: ModelSpec, folder: Path, exporter: Exporter) -> None:
    """Export both towers through the family's torch runtime (needs torch, once per model).

    ``exporter(spec, work)`` writes :data:`VISUAL_FILES` ['fp32'] (and
    :data:`TEXT_FILE` where its texts can run without torch) into ``work`` and returns
    the facts for meta.json: key, dim, logit_scale, logit_bias, image_size, mean, std,
    interpolation, resize_mode, crop_rounding, and ``tokenizer`` (None: texts through
    torch; 'clip-bpe': :class:`~clipdex.models.tokenizer.ClipTokenizer`; 'tokenizers':
    :class:`~clipdex.models.hf_tokenizer.HfTokenizer` over the folder's tokenizer.json)
    with what that tokenizer needs.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-{os.getpid()}-", dir=folder.parent))
    try:
        meta = exporter(spec, work)
        meta = {"key": spec.key, "family": spec.family, **meta}
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work, folder)
        stem = folder.name[:-len(f"-v{EXPORT_VERSION}")]  # older formats of this export (same key and stamp)
        for old in folder.parent.iterdir():  # older export formats of this model
            match = re.fullmatch(re.escape(stem) + r"-v(\d+)", old.name)
            if match and int(match.group(1)) < EXPORT_VERSION:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
