"""Models: the registry (data), model specs, and encoders built on first use by
:func:`clipdex.models.factory.make_encoder` from one runtime module each
(:mod:`clipdex.models.runtimes`)."""

from clipdex.models.registry import (
    ModelSpec,
    RegistryEntry,
    default_model_name,
    get_registry_entry,
    list_models,
    resolve_model,
)

__all__ = [
    "ModelSpec",
    "RegistryEntry",
    "default_model_name",
    "get_registry_entry",
    "list_models",
    "resolve_model",
]
