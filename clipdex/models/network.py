"""One short look at whether a host can be reached, before a download that would retry for long.

The Hugging Face hub's client retries an unreachable host for tens of seconds per
file; one connection attempt with a short timeout tells an offline machine at once,
so a missing model fails in seconds with what to do (:mod:`clipdex.models.weights`,
:mod:`clipdex.models.hf`).
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0


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
