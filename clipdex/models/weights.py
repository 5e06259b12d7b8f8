"""Find a model's weights on disk, or download them through open_clip, failing fast.

open_clip downloads through the Hugging Face hub, which retries an unreachable
host for tens of seconds per file. Before any download, clipdex looks in the
cache and makes one short connection attempt, so an offline machine gets a clear
:class:`~clipdex.errors.ModelUnavailable` within seconds.
"""

from __future__ import annotations

import os
from typing import Any

from clipdex.errors import ModelUnavailable, UnknownModel
from clipdex.models.network import require_hub, unreachable
from clipdex.models.registry import ModelSpec, list_models

HF_DEFAULT_FILE = "open_clip_pytorch_model.bin"
HF_SAFE_FILE = "open_clip_model.safetensors"


def pretrained_config(spec: ModelSpec) -> dict[str, Any]:
    """open_clip's pretrained config for the spec's tag ({} for none)."""
    if not spec.pretrained:
        return {}
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg:
        known_arch = spec.arch in open_clip.list_models()
        if not known_arch:  # 'openai/clip-vit-base-patch32': a hub repository without its hf:
            raise UnknownModel(spec.name, [e.name for e in list_models()], maybe_hf=True)
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        raise UnknownModel(
            f"{spec.arch}/{spec.pretrained} (known tags for {spec.arch}: {', '.join(tags) or 'none'})",
            [e.name for e in list_models()],
        )
    return dict(cfg)


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """Repo id and the file names open_clip would try, safetensors first."""
    repo_id, filename = os.path.split(hf_hub)
    if not filename:
        return repo_id, [HF_SAFE_FILE, HF_DEFAULT_FILE]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [filename[:-4] + ".safetensors", filename]
    return repo_id, [filename]


def locate_weights(spec: ModelSpec, *, download: bool = True) -> str:
    """Path of the checkpoint for ``spec``: its local file, the HF cache, or a download
    (a Transformers checkpoint: its folder, :func:`clipdex.models.hf.locate`)."""
    if spec.family == "hf":
        from clipdex.models.hf import locate

        return str(locate(spec, download=download))
    if spec.weights:
        return spec.weights
    cfg = pretrained_config(spec)
    if cfg.get("file"):
        return str(cfg["file"])
    hf_hub = cfg.get("hf_hub", "")
    if not hf_hub:
        return _locate_url_weights(spec, cfg, download=download)

    from huggingface_hub import constants, try_to_load_from_cache

    repo_id, files = _hf_candidates(hf_hub)
    for filename in files:
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str) and os.path.isfile(cached):
            return cached

    looked = f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {repo_id}, files {', '.join(files)})"
    fix = (
        f"On a machine with internet, run `hf download {repo_id} {files[0]}` (or any clipdex "
        "command with this model) and copy its Hugging Face cache here (set HF_HOME to it), "
        f"or pass the checkpoint file directly with --weights FILE --model {spec.name}."
    )
    require_hub(spec.name, looked, fix, download=download)

    import open_clip

    # open_clip's own download: the Hugging Face cache, with its progress bar.
    try:
        return str(open_clip.download_pretrained(cfg))
    except Exception as e:  # the hub's errors are many; all mean the same here
        raise ModelUnavailable(spec.name, looked, f"download failed: {e}", fix) from e


def _locate_url_weights(spec: ModelSpec, cfg: dict[str, Any], *, download: bool) -> str:
    import open_clip

    url = cfg.get("url", "")
    cache = os.path.expanduser("~/.cache/clip")
    target = os.path.join(cache, os.path.basename(url))
    if os.path.isfile(target):
        return target
    fix = f"Download {url} on a machine with internet into {cache}, or pass it with --weights FILE."
    reason = unreachable(url) if download else "not downloaded yet"
    if reason:
        raise ModelUnavailable(spec.name, cache, f"not in the cache ({reason})", fix)
    return str(open_clip.download_pretrained(cfg, prefer_hf_hub=False))
