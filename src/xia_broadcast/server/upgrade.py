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


def check_origin(headers: Headers, allowed: Sequence[str]) -> None:
    """Refuse (403) an ``Origin`` that is not in ``allowed``; an empty ``allowed`` lets every origin in.

    A request without ``Origin`` passes: browsers always send one, and the check exists to stop pages of
    other sites from opening a WebSocket with a visitor's browser; other clients can send any Origin.
    """
    if not allowed:
        return
    origin = _values(headers, "origin")
    if len(origin) > 1:
        raise UpgradeError(400, "bad_upgrade", "more than one Origin header")
    if origin and origin[0] not in allowed:
        raise UpgradeError(403, "forbidden_origin", f"origin {origin[0]!r} is not allowed")
