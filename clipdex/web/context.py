"""What a page module needs from the app: the shared index access, the template renderer and
the thread helpers (:func:`clipdex.web.app.create_app` builds one and hands it to each
module's ``add_routes(app, ctx)``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi.responses import HTMLResponse

from clipdex.web.access import IndexAccess


@dataclass(frozen=True)
class WebContext:
    """The app's shared parts, for the page modules (duplicates, topics, learning).

    - ``access``: the index, shared between threads (``access.locked()`` to write or to use
      the model, ``access.reader()`` for catalog reads);
    - ``render(template, http_status=200, **context)``: a page from ``web/templates``;
    - ``off_loop(limiter, fn, *args)``: run blocking ``fn`` in a worker thread (``limiter``
      None: the default pool; ``search_threads`` for work as heavy as a search);
    - ``metadata``: the user's table rows by photo path (``serve --metadata``), maybe empty.
    """

    access: IndexAccess
    render: Callable[..., HTMLResponse]
    off_loop: Callable[..., Awaitable[Any]]
    search_threads: anyio.CapacityLimiter
    metadata: dict[str, dict[str, str]]
