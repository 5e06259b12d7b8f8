"""Which optional packages are installed, asked without importing them, and the one
message for what needs them.

``pip install clipdex`` is the light install: ONNX Runtime on the CPU, no torch.
torch and open_clip (GPU encoding, exporting a model, custom configs) come with
``clipdex[torch]``, Transformers checkpoints with ``clipdex[hf]``, Parquet with
``clipdex[parquet]``. Code that needs one asks here first, so a light install
answers with the extra to install instead of a bare ``ModuleNotFoundError``,
and asking costs no import (torch's is ~2 s).
"""

from __future__ import annotations

import importlib.util

from clipdex.errors import ModelError

TORCH_INSTALL = "pip install 'clipdex[torch]'"
HF_INSTALL = "pip install 'clipdex[hf]'"
PARQUET_INSTALL = "pip install 'clipdex[parquet]'"

# What each extra brings that clipdex imports itself (the rest comes with these).
TORCH_PACKAGES = ("torch", "open_clip")
HF_PACKAGES = ("torch", "transformers")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, found by its spec without importing it.

    A finder that refuses the name (a test's stand-in for a missing package, or a
    broken install) counts as not installed."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def has_torch() -> bool:
    """torch is installed (the ``[torch]`` extra, or the user's own build)."""
    return installed("torch")


def has_open_clip() -> bool:
    """torch and open_clip are installed: open_clip models can be built, run on a GPU and exported."""
    return all(installed(name) for name in TORCH_PACKAGES)


def has_transformers() -> bool:
    """torch and Transformers are installed: Transformers checkpoints can be built and exported."""
    return all(installed(name) for name in HF_PACKAGES)


def missing(packages: tuple[str, ...]) -> list[str]:
    """The names in ``packages`` that are not installed."""
    return [name for name in packages if not installed(name)]


def torch_message(what: str) -> str:
    """'<what> needs torch and open_clip: pip install 'clipdex[torch]'', the one wording."""
    return f"{what} needs torch and open_clip: {TORCH_INSTALL}"


def hf_message(what: str) -> str:
    """The same for Transformers checkpoints."""
    return f"{what} needs torch and Transformers: {HF_INSTALL}"


def require_open_clip(what: str) -> None:
    """Raise :class:`~clipdex.errors.ModelError` saying what to install when torch or
    open_clip is missing; ``what`` is the thing asked for ('--device cuda', 'exporting ViT-B-32')."""
    if not has_open_clip():
        raise ModelError(f"{torch_message(what)} (not installed here: {', '.join(missing(TORCH_PACKAGES))})")


def require_transformers(what: str) -> None:
    """Raise :class:`~clipdex.errors.ModelError` saying what to install when torch or Transformers is missing."""
    if not has_transformers():
        raise ModelError(f"{hf_message(what)} (not installed here: {', '.join(missing(HF_PACKAGES))})")
