"""The WebSocket opening handshake's checks (RFC 6455 section 4.2.1), without I/O.

The checks are those of websockets' ``ServerProtocol.process_request``: the ``Connection`` header has the
token ``upgrade``, ``Upgrade`` is exactly ``websocket`` (any case), there is one ``Sec-WebSocket-Key`` and it
decodes (strict base64) to 16 bytes, there is one ``Sec-WebSocket-Version`` and it is ``13``. Headers are
``(lower-case name, value)`` pairs, repeated names kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence

from ..errors import HttpError

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Headers = Sequence[tuple[str, str]]


class UpgradeError(HttpError):
    """An upgrade request refused before the upgrade: 426 (not an upgrade), 400 (a malformed one),
    403 (an Origin not allowed)."""


def _values(headers: Headers, name: str) -> list[str]:
    return [v for k, v in headers if k == name]


def _tokens(values: Sequence[str]) -> list[str]:
    """The comma-separated tokens of every value of a header, lower-cased."""
    return [t.strip().lower() for v in values for t in v.split(",") if t.strip()]


def accept_key(key: str) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest())


def check_upgrade(headers: Headers) -> bytes:
    """Check an upgrade request's headers; return its ``Sec-WebSocket-Accept``. Raises :class:`UpgradeError`."""
    if "upgrade" not in _tokens(_values(headers, "connection")):
        raise UpgradeError(426, "upgrade_required", "Connection header must contain 'upgrade'")
    if _tokens(_values(headers, "upgrade")) != ["websocket"]:
        raise UpgradeError(426, "upgrade_required", "Upgrade header must be 'websocket'")
    keys = _values(headers, "sec-websocket-key")
    if len(keys) != 1:
        raise UpgradeError(400, "bad_upgrade", "one Sec-WebSocket-Key header is required")
    try:
        raw_key = base64.b64decode(keys[0].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw_key = b""
    if len(raw_key) != 16:
        raise UpgradeError(400, "bad_upgrade", "Sec-WebSocket-Key must be 16 bytes in base64")
    if _values(headers, "sec-websocket-version") != ["13"]:
        raise UpgradeError(400, "bad_upgrade", "Sec-WebSocket-Version must be 13")
    return accept_key(keys[0])


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None]:
    """``(host, port)`` of ``host[:port]`` (an IPv6 host in brackets), lower-cased, the scheme's default port
    filled in (``http``/``ws`` 80, ``https``/``wss`` 443) when none is given."""
    netloc = netloc.strip().lower()
    host, port = netloc, ""
    if netloc.startswith("["):
        end = netloc.find("]")
        host, port = netloc[:end + 1], netloc[end + 2:] if netloc[end + 1:end + 2] == ":" else ""
    elif netloc.count(":") == 1:
        host, port = netloc.split(":")
    default = {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(scheme)
    return host, int(port) if port.isdigit() else default


def same_origin(origin: str, host: str) -> bool:
    """True when ``origin`` (``scheme://host[:port]``) names the host and port of the ``Host`` header the
    request came with (the page was served by this server)."""
    scheme, sep, netloc = origin.partition("://")
    if not sep or not host:
        return False
    scheme = scheme.lower()
    return _host_port(netloc, scheme) == _host_port(host, "https" if scheme in ("https", "wss") else "http")


def check_origin(headers: Headers, allowed: Sequence[str]) -> None:
    """Refuse (403) an upgrade whose ``Origin`` is another site's: one that is not this server's own (the
    ``Host`` of the request) nor listed in ``allowed`` (``"*"`` there lets every origin in).

    A request without ``Origin`` passes: browsers always send one, and the check exists to stop pages of
    other sites from opening a WebSocket with a visitor's browser; other clients (the original listener)
    send none, and could send any.
    """
    origin = _values(headers, "origin")
    if len(origin) > 1:
        raise UpgradeError(400, "bad_upgrade", "more than one Origin header")
    if not origin or "*" in allowed or origin[0] in allowed:
        return
    host = _values(headers, "host")
    if len(host) == 1 and same_origin(origin[0], host[0]):
        return
    raise UpgradeError(403, "forbidden_origin", f"origin {origin[0]!r} is not allowed (origin_allowlist)")


#: host names a server listening on a loopback address answers to (``allowed_hosts`` empty)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def served_hosts(listen_host: str, allowed: Sequence[str]) -> frozenset[str] | None:
    """The host names requests may carry in ``Host`` (lower-case, no port), or None for any.

    ``allowed`` (the ``allowed_hosts`` setting) is the list; ``"*"`` in it, or an empty list on a server not
    listening on loopback only, lets any name in. An empty list on a loopback server: the loopback names,
    so that a page of another site cannot reach it through a name it made resolve to 127.0.0.1 (DNS
    rebinding).
    """
    if "*" in allowed:
        return None
    if allowed:
        return frozenset(h.lower() for h in allowed)
    if listen_host.lower() in ("127.0.0.1", "localhost", "::1", "[::1]"):
        return LOOPBACK_NAMES | {listen_host.lower()}
    return None


def check_host(headers: Headers, hosts: frozenset[str] | None) -> None:
    """Refuse (403) a request whose ``Host`` names none of ``hosts`` (None: every name is served)."""
    if hosts is None:
        return
    values = _values(headers, "host")
    name = _host_port(values[0], "http")[0] if len(values) == 1 else ""
    if name not in hosts:
        shown = values[0][:60] if values else "missing"
        raise UpgradeError(403, "forbidden_host", f"Host {shown!r} is not a name this server serves (allowed_hosts)")
