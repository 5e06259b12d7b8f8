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


# Each model family's torch runtime: the packages it needs, in words, and the extra that brings them.
FAMILY_NEEDS = {"open_clip": (TORCH_PACKAGES, "torch and open_clip", TORCH_INSTALL),
                "hf": (HF_PACKAGES, "torch and Transformers", HF_INSTALL)}


def family_runs(family: str) -> bool:
    """Whether the torch runtime of model ``family`` can run here (False for a family that has none)."""
    needs = FAMILY_NEEDS.get(family)
    return needs is not None and all(installed(name) for name in needs[0])


def family_needs(family: str) -> tuple[str, str]:
    """What model ``family``'s torch runtime needs, in words, and the pip command that brings it
    (open_clip's for a family without one of its own)."""
    _, words, install = FAMILY_NEEDS.get(family, FAMILY_NEEDS["open_clip"])
    return words, install


def family_install(family: str) -> str:
    """The pip command that brings model ``family``'s torch runtime."""
    return family_needs(family)[1]


def family_message(family: str, what: str) -> str:
    """'<what> needs torch and open_clip: pip install 'clipdex[torch]'' (Transformers and
    'clipdex[hf]' for family 'hf'), the one wording."""
    words, install = family_needs(family)
    return f"{what} needs {words}: {install}"


def torch_message(what: str) -> str:
    """:func:`family_message` for open_clip models (torch and open_clip)."""
    return family_message("open_clip", what)
