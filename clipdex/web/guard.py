"""Who may talk to the web app: the hosts it answers to, where writes may come from, body sizes.

Three checks run before any route, as one ASGI middleware:

* **Host.** A request whose ``Host`` header names a host the server was not
  started for is refused (400). This stops DNS rebinding: a page on
  ``evil.example`` whose name is re-pointed at 127.0.0.1 still sends
  ``Host: evil.example``. Any port is accepted; IPv6 addresses come in brackets.
  Served on ``0.0.0.0`` or ``::``, the machine's own names and addresses are
  accepted too (found once, at start).
* **Cross-site writes.** A state-changing request (anything but GET, HEAD and
  OPTIONS) whose ``Origin`` (or, without one, ``Referer``) is not the server's
  own origin, or that a browser marks ``Sec-Fetch-Site: cross-site``, is
  refused (403): another site's form cannot upload or correct labels. A
  request with neither header (curl, scripts) passes; browsers always send one.
* **Body size.** A request body larger than the limit is refused (413) before
  it is stored, whether it declares its length or streams it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::")
ANY_HOST = "*"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_HOST_SHOWN = 100

ErrorPage = Callable[[Scope, int, str], Awaitable[Response]]


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header or ``--allow-host`` value, normalised; None if malformed.

    ``[::1]:8000`` -> ``::1``, ``Example.COM.:80`` -> ``example.com``,
    ``127.000.0.1`` stays as written (only canonical addresses are compared).
    """
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return _canonical(name) if _is_ip(name) else None
    if value.count(":") > 1:  # a bare IPv6 address (no port can follow it)
        return _canonical(value) if _is_ip(value) else None
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    if not name or any(c in name for c in "/\\@?#% \t"):
        return None
    return _canonical(name)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False
    return True


def _canonical(name: str) -> str:
    name = name.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def own_names() -> set[str]:
    """This machine's host names and addresses (for a server on 0.0.0.0 or ::)."""
    names: set[str] = set()
    for name in {socket.gethostname(), socket.getfqdn()}:
        if not name:
            continue
        names.add(_canonical(name))
        try:
            for *_, address in socket.getaddrinfo(name, None):
                names.add(_canonical(str(address[0]).split("%")[0]))
        except OSError:
            pass
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:  # the address the default route leaves from (connect on UDP sends nothing)
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                names.add(_canonical(s.getsockname()[0].split("%")[0]))
        except OSError:
            pass
    names.update(_linux_addresses())
    return names


def _linux_addresses() -> set[str]:
    """Every local address of every interface, from /proc (empty elsewhere)."""
    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
        for previous, line in zip(lines, lines[1:]):
            if "/32 host LOCAL" in line:
                found.add(_canonical(previous.strip().lstrip("|-+ ")))
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                hexed = line.split()[0]
                found.add(_canonical(":".join(hexed[i:i + 4] for i in range(0, 32, 4))))
    except (OSError, IndexError):
        pass
    return {name for name in found if _is_ip(name)}


class HostPolicy:
    """The hosts a server answers to."""

    def __init__(self, allowed: Iterable[str]) -> None:
        given = [h for h in allowed if h and h.strip()]
        self.any = ANY_HOST in given
        names = {n for n in (host_name(h) for h in given if h != ANY_HOST) if n}
        self.shown = tuple(dict.fromkeys(h for h in given if h not in WILDCARD_ADDRESSES))
        if names & set(WILDCARD_ADDRESSES):
            names |= own_names()
        self.names = frozenset(names - set(WILDCARD_ADDRESSES))

    def allows(self, header: str | None) -> bool:
        if self.any:
            return True
        name = host_name(header or "")
        return name is not None and name in self.names

    def refusal(self, header: str | None) -> str:
        shown = (header or "").strip()[:MAX_HOST_SHOWN]
        if not shown:
            return ("the request names no host (Host header); this server answers to "
                    f"{', '.join(self.shown)}. Send the Host header (every HTTP/1.1 client does).")
        name = host_name(shown) or shown
        return (f"host {shown!r} is not allowed: this server answers to {', '.join(self.shown)}. "
                f"If you reach it by that name on purpose, restart it with "
                f"`clipdex serve --allow-host {name}`.")


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin or Referer value; None if it has no http(s) origin."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, _canonical(parts.hostname), port or DEFAULT_PORTS[parts.scheme]


def own_origin(scope: Scope, host: str) -> tuple[str, str, int] | None:
    """The origin this request was sent to: its scheme and its Host header."""
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return _origin(f"{scheme}://{host}")


def cross_site(scope: Scope, headers: dict[str, str]) -> str | None:
    """Why a state-changing request is refused as cross-site, or None when it may pass."""
    method = scope.get("method", "GET")
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return (f"cross-site request refused: the browser says this {method} came from another "
                "site. Use this server's own pages to change anything.")
    source_header = "Origin" if "origin" in headers else "Referer" if "referer" in headers else None
    if source_header is None:
        return None  # not sent by a browser (curl, scripts): nothing to forge
    value = headers[source_header.lower()]
    source = _origin(value) if value.strip() != "null" else None
    own = own_origin(scope, headers.get("host", ""))
    if source is not None and source == own:
        return None
    shown = value.strip()[:MAX_HOST_SHOWN] or "(empty)"
    own_shown = f"{own[0]}://{headers.get('host', '')}" if own else "this server"
    return (f"cross-site request refused: this {method} came from {shown} ({source_header} "
            f"header), not from {own_shown}. Use this server's own pages to change anything; "
            "scripts may send requests without Origin and Referer headers.")


class Guard:
    """ASGI middleware: the host, cross-site and body-size checks of the module docstring."""

    def __init__(self, app: ASGIApp, *, hosts: HostPolicy, max_body: int, error_page: ErrorPage) -> None:
        self.app = app
        self.hosts = hosts
        self.max_body = max_body
        self.error_page = error_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refused: tuple[int, str] | None = None
        if not self.hosts.allows(headers.get("host")):
            refused = 400, self.hosts.refusal(headers.get("host"))
        elif scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS:
            reason = cross_site(scope, headers)
            if reason is not None:
                refused = 403, reason
            elif _declared_length(headers) > self.max_body:
                refused = 413, self._too_large()
        if refused is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            response = await self.error_page(scope, *refused)
            await response(scope, receive, send)
            return
        if scope.get("method", "GET") in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive), send)

    def _too_large(self) -> str:
        return (f"the request body is larger than {self.max_body // (1024 * 1024)} MB, the most "
                "this server accepts. Send a smaller file.")

    def _bounded(self, receive: Receive) -> Receive:
        """``receive`` that refuses a streamed body once it passes the limit."""
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise HTTPException(413, self._too_large())
            return message

        return bounded


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name (the first of repeated ones), decoded as Latin-1."""
    out: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        out.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def _declared_length(headers: dict[str, str]) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0

