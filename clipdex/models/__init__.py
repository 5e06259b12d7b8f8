"""Models: the registry (data) and the lazily built open_clip encoder."""

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
