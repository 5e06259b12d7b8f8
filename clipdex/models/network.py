"""One short look at whether a host can be reached, before a download that would retry for long.

The Hugging Face hub's client retries an unreachable host for tens of seconds per
file; one connection attempt with a short timeout tells an offline machine at once,
so a missing model fails in seconds with what to do (:mod:`clipdex.models.weights`,
:mod:`clipdex.models.hf`).
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from clipdex.errors import ModelUnavailable

CONNECT_TIMEOUT_S = 3.0


def require_hub(model: str, looked: str, fix: str, *, download: bool = True) -> None:
    """:class:`ModelUnavailable` for ``model`` (not found where ``looked`` says; ``fix`` says how to
    bring it) unless a download from the Hugging Face hub may go ahead: allowed, not turned off
    with HF_HUB_OFFLINE, and the hub answers one short connection attempt."""
    from huggingface_hub import constants

    if not download:
        raise ModelUnavailable(model, looked, "not downloaded yet", fix)
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(model, looked, "not in the cache and HF_HUB_OFFLINE is set", fix)
    reason = unreachable(constants.ENDPOINT)
    if reason:
        raise ModelUnavailable(model, looked, f"not in the cache and the hub is unreachable ({reason})", fix)


def unreachable(url: str) -> str | None:
    """Why ``url``'s host cannot be reached, or None if one connection succeeds."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as e:
        return f"{host}: {e.strerror or e}"
