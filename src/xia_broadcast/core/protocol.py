"""The wire protocol's pure parts: close codes, the handshake parser, control messages.

The handshake is the original listener's first message: a JSON object
``{class_name: {data_scope, catalog, show_hidden, start_seq}, ..., "_header": {...}}``. Keys starting with
``_`` are never class names: ``_header`` carries credentials, ``_options`` opts in to extra messages
(``{"control": true}``). Every refusal is a :class:`Refusal` with its close code (``docs/protocol.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .acl import act_grants

# Close codes. 4400, 4401 and 4404 are the original's; 1001, 1007 and 1009 are RFC 6455's.
CLOSE_GOING_AWAY = 1001  #: server shutting down (after flushing what was queued)
CLOSE_INVALID_DATA = 1007  #: a text message that is not valid UTF-8
CLOSE_MESSAGE_TOO_BIG = 1009  #: an inbound message exceeded max_message_size
CLOSE_BAD_HANDSHAKE = 4400  #: bad, missing or late first message
CLOSE_AUTH_FAILED = 4401  #: authentication missing or failed (also: token expired while connected)
CLOSE_CLASS_FORBIDDEN = 4403  #: a requested class is not readable with this user's ACL
CLOSE_NO_CLASS = 4404  #: no requested class is known
CLOSE_TOO_SLOW = 4409  #: the outbound queue overflowed
CLOSE_INVALID_SCOPE = 4420  #: a data scope is invalid
CLOSE_INVALID_CATALOG = 4421  #: a catalog is invalid or names an unknown field
CLOSE_TOO_MANY_SUBSCRIPTIONS = 4429  #: more classes in one handshake than max_subscriptions
CLOSE_TOO_MANY_CONNECTIONS = 4503  #: the server holds max_connections already

#: The options a client may set in ``_options``.
OPTIONS = frozenset({"control"})


class Refusal(Exception):
    """A connection is refused or closed: ``code`` and ``reason`` go into the close frame."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason.encode()[:120].decode(errors="ignore")


@dataclass
class Handshake:
    """A parsed first message."""

    header: dict[str, Any]
    requests: dict[str, dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def control(self) -> bool:
        """True when the client asked for control messages."""
        return bool(self.options.get("control"))


_SUB_KEYS = frozenset({"data_scope", "catalog", "show_hidden", "start_seq", "after_seq"})


def parse_handshake(message: str | bytes, max_subscriptions: int) -> Handshake:
    """Parse and check the shape of a first message; raises :class:`Refusal` (4400 or 4429)."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise Refusal(CLOSE_BAD_HANDSHAKE, "Connection information should be a Json string") from exc
    if not isinstance(obj, dict):
        raise Refusal(CLOSE_BAD_HANDSHAKE, "Connection information should be a Json object")
    header = obj.pop("_header", {})
    if not isinstance(header, dict):
        raise Refusal(CLOSE_BAD_HANDSHAKE, "_header should be an object")
    options = obj.pop("_options", {})
    if not isinstance(options, dict) or set(options) - OPTIONS:
        raise Refusal(CLOSE_BAD_HANDSHAKE, f"_options should be an object with keys among {sorted(OPTIONS)}")
    requests: dict[str, dict[str, Any]] = {}
    for name, sub in obj.items():
        if name.startswith("_"):
            raise Refusal(CLOSE_BAD_HANDSHAKE, f"unknown handshake entry {name!r}")
        if sub is None:
            sub = {}
        if not isinstance(sub, Mapping):
            raise Refusal(CLOSE_BAD_HANDSHAKE, f"{name}: subscription should be an object")
        extra = set(sub) - _SUB_KEYS
        if extra:
            raise Refusal(CLOSE_BAD_HANDSHAKE, f"{name}: unknown subscription keys {sorted(extra)}")
        requests[name] = dict(sub)
    if not requests:
        raise Refusal(CLOSE_NO_CLASS, "Class requested Not Found")
    if len(requests) > max_subscriptions:
        raise Refusal(CLOSE_TOO_MANY_SUBSCRIPTIONS,
                      f"too many subscriptions: {len(requests)} > {max_subscriptions}")
    return Handshake(header, requests, options)


def acl_may_read_class(acl_items: Any, class_name: str) -> bool:
    """True when some item of an ACL could grant ``read`` on some document of ``class_name``.

    ``acl_items`` is an iterable of objects with ``obj`` and ``act``. A pattern can match a subject of the
    class when its literal part before the first ``*`` and ``Class/`` agree on their common length.
    """
    prefix = class_name + "/"
    for item in acl_items:
        if not act_grants(item.act, "read"):
            continue
        obj = item.obj
        if "*" in obj:
            lit = obj.split("*", 1)[0]
            if lit.startswith(prefix) or prefix.startswith(lit):
                return True
        elif obj.startswith(prefix):
            return True
    return False
